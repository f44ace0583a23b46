"""Compares a replica with its source version by version, with delta-rs (Python) and pyarrow,
which share no code with Tidemark, and prints one JSON line.

Usage: python3 compare_versions.py <source-dir> <replica-dir> [first-version]

For every version from first-version (default 0) to the replica's newest: both tables are opened
at that version; their live file lists must be equal and their rows (sorted by Kafka partition and
offset) identical. Prints {"replica_version", "source_version", "versions_compared", "rows",
"mismatches": [...]}.
"""
import json
import os
import sys

from deltalake import DeltaTable

source, replica = sys.argv[1], sys.argv[2]
first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
newest = DeltaTable(replica).version()
mismatches = []
rows = 0
keys = [("_kafka_partition", "ascending"), ("_kafka_offset", "ascending")]
for v in range(first, newest + 1):
    a = DeltaTable(source, version=v)
    b = DeltaTable(replica, version=v)
    # Tidemark tables are not partitioned: a file's name says which file it is.
    if sorted(map(os.path.basename, a.file_uris())) != sorted(map(os.path.basename, b.file_uris())):
        mismatches.append({"version": v, "what": "files"})
        continue
    ta = a.to_pyarrow_table().sort_by(keys)
    tb = b.to_pyarrow_table().sort_by(keys)
    if not ta.equals(tb):
        mismatches.append({"version": v, "what": "rows", "source_rows": ta.num_rows, "replica_rows": tb.num_rows})
    rows = tb.num_rows
print(json.dumps({
    "replica_version": newest,
    "source_version": DeltaTable(source).version(),
    "versions_compared": newest + 1 - first,
    "rows": rows,
    "mismatches": mismatches,
}))
