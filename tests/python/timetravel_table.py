"""Independent side of the time travel and restore tests: reads Delta tables with delta-rs
(Python) and DuckDB, and exported files with pyarrow and DuckDB, sharing no code with Tidemark.
Prints one JSON line.

Usage:
  timetravel_table.py snapshot <table> <version|latest>   rows of the table at that version
                                                          (delta-rs time travel), sorted, each
                                                          row as a list of strings; DuckDB's count
                                                          over the same files
  timetravel_table.py file <path>                         rows of an exported .parquet (pyarrow)
                                                          or .csv (DuckDB), same form
"""
import json
import sys

import duckdb
import pyarrow.parquet as pq
from deltalake import DeltaTable


def as_rows(table):
    columns = sorted(table.column_names)
    data = [table.column(c).to_pylist() for c in columns]
    rows = sorted([["" if v is None else str(v) for v in row] for row in zip(*data)])
    return columns, rows


def snapshot(path, version):
    t = DeltaTable(path) if version == "latest" else DeltaTable(path, version=int(version))
    columns, rows = as_rows(t.to_pyarrow_table())
    uris = t.file_uris()
    duck = duckdb.connect().execute(
        f"select count(*) from read_parquet({uris!r})").fetchone()[0] if uris else 0
    print(json.dumps({"version": t.version(), "columns": columns, "rows": rows,
                      "duckdb_rows": duck}))


def file(path):
    if path.endswith(".parquet"):
        columns, rows = as_rows(pq.read_table(path))
    else:
        rel = duckdb.connect().execute(f"select * from read_csv({path!r}, all_varchar=true)")
        columns = [d[0] for d in rel.description]
        order = sorted(range(len(columns)), key=lambda i: columns[i])
        rows = sorted([["" if r[i] is None else r[i] for i in order] for r in rel.fetchall()])
        columns = sorted(columns)
    print(json.dumps({"columns": columns, "rows": rows}))


if __name__ == "__main__":
    if sys.argv[1] == "snapshot":
        snapshot(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "file":
        file(sys.argv[2])
    else:
        raise SystemExit(__doc__)
