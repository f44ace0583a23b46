"""Reads a Tidemark table with engines that share no code with Tidemark and prints one JSON line.

Usage: python3 read_table.py <table-dir>
delta-rs (Python) resolves the live files from the log; DuckDB reads exactly those Parquet files.
"""
import json
import sys

import duckdb
from deltalake import DeltaTable

table = DeltaTable(sys.argv[1])
files = table.file_uris()
arrow = table.to_pyarrow_table()
rows, distinct = duckdb.connect().execute(
    f"select count(*), count(distinct (_kafka_topic, _kafka_partition, _kafka_offset)) from read_parquet({files!r})"
).fetchone()
newest = table.history(1)[0]
print(json.dumps({
    "version": table.version(),
    "delta_rs_rows": arrow.num_rows,
    "duckdb_rows": rows,
    "duckdb_distinct_offsets": distinct,
    "newest_epoch": newest.get("tidemark", {}).get("epoch"),
}))
