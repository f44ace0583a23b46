"""Independent side of the backup tests: writes Delta tables with delta-rs (Python) and reads
tables back with delta-rs and DuckDB, sharing no code with Tidemark. Prints one JSON line.

Usage:
  backup_table.py step <table> <op> <i>          one change to the table (op: append, append_many, append_wide,
                                                 overwrite, delete, checkpoint); prints the new
                                                 version and the data files it added
  backup_table.py compare <src> <N>:<restored> ...  for each pair: rows of <src> at version N
                                                 (time travel) against the newest version of
                                                 <restored> (delta-rs and DuckDB), sorted
"""
import json
import sys

import duckdb
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake


def rows(i, n=50, parts=1):
    return pa.table({
        "id": pa.array(range(i * 1000, i * 1000 + n), pa.int64()),
        "note": pa.array([f"step {i} row {j}" for j in range(n)]),
        "part": pa.array([j % parts for j in range(n)], pa.int64()),
    })


def files(path):
    if not DeltaTable.is_deltatable(path):
        return set()
    return {a for a in DeltaTable(path).get_add_actions(flatten=True).column("path").to_pylist()}


def step(path, op, i):
    before = files(path)
    if op == "append":
        write_deltalake(path, rows(i), mode="append", partition_by=["part"])
    elif op == "append_many":
        # Eight files in one commit, one per partition directory (part=0/ ... part=7/).
        write_deltalake(path, rows(i, 400, 8), mode="append", partition_by=["part"])
    elif op == "append_wide":
        # A thousand files in one commit.
        write_deltalake(path, rows(i, 1000, 1000), mode="append", partition_by=["part"])
    elif op == "overwrite":
        write_deltalake(path, rows(i), mode="overwrite", partition_by=["part"])
    elif op == "delete":
        DeltaTable(path).delete("id % 3 = 0")
    elif op == "checkpoint":
        DeltaTable(path).create_checkpoint()
        write_deltalake(path, rows(i), mode="append", partition_by=["part"])
    else:
        raise SystemExit(f"unknown op {op}")
    after = files(path)
    print(json.dumps({"version": DeltaTable(path).version(), "added": sorted(after - before)}))


def sorted_rows(table):
    return sorted(zip(table.column("id").to_pylist(), table.column("note").to_pylist()))


def compare(src, pairs):
    out = []
    for pair in pairs:
        n, restored = pair.split(":", 1)
        n = int(n)
        want = sorted_rows(DeltaTable(src, version=n).to_pyarrow_table())
        got_table = DeltaTable(restored)
        got = sorted_rows(got_table.to_pyarrow_table())
        uris = got_table.file_uris()
        duck = duckdb.connect().execute(
            f"select count(*) from read_parquet({uris!r})").fetchone()[0] if uris else 0
        out.append({"version": n, "restored_version": got_table.version(),
                    "rows": len(want), "equal": want == got, "duckdb_rows": duck})
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "step":
        step(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(__doc__)
