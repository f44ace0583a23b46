"""Reads a Tidemark table on S3 with readers that share no code with Tidemark; prints one JSON line.

Usage: python3 read_s3_table.py s3://bucket/prefix   (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION from the environment: the test's S3-compatible server)

delta-rs (Python) resolves the live files from the log on S3; boto3 downloads exactly those
Parquet files and DuckDB reads them, so a file the log names but S3 lacks fails here.
"""
import json
import os
import sys
import tempfile
from urllib.parse import urlparse

import boto3
import duckdb
from deltalake import DeltaTable

uri = sys.argv[1]
options = {
    "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
    "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
    "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
    "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
    "AWS_ALLOW_HTTP": "true",
}
table = DeltaTable(uri, storage_options=options)
arrow = table.to_pyarrow_table()
s3 = boto3.client(
    "s3",
    endpoint_url=options["AWS_ENDPOINT_URL"],
    aws_access_key_id=options["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=options["AWS_SECRET_ACCESS_KEY"],
    region_name=options["AWS_REGION"],
)
with tempfile.TemporaryDirectory() as tmp:
    local = []
    for i, file_uri in enumerate(table.file_uris()):
        parsed = urlparse(file_uri)
        path = os.path.join(tmp, f"{i}.parquet")
        s3.download_file(parsed.netloc, parsed.path.lstrip("/"), path)
        local.append(path)
    if local:
        rows, distinct_ids, distinct_offsets = duckdb.connect().execute(
            "select count(*), count(distinct id), "
            "count(distinct (_kafka_topic, _kafka_partition, _kafka_offset)) "
            f"from read_parquet({local!r})"
        ).fetchone()
    else:
        rows = distinct_ids = distinct_offsets = 0
newest = table.history(1)[0]
print(json.dumps({
    "version": table.version(),
    "files": len(table.file_uris()),
    "delta_rs_rows": arrow.num_rows,
    "duckdb_rows": rows,
    "duckdb_distinct_ids": distinct_ids,
    "duckdb_distinct_offsets": distinct_offsets,
    "newest_epoch": newest.get("tidemark", {}).get("epoch"),
}))
