#!/usr/bin/env python3
"""Reads Delta tables with two readers that share no code with xmbridge (nor with each other):
the Python `deltalake` package (delta-rs's Python binding, through PyArrow) and DuckDB with its
`delta` extension (Delta Kernel). Both must return the same rows; the rows are printed as JSON
so that a test compares them with another destination.

Usage: read_delta.py TABLE_DIR [TABLE_DIR ...]
Prints {"<dir>": {"columns": [...], "rows": [[...], ...]}} with rows sorted, timestamps as epoch
milliseconds (UTC). Exits 1 naming the table when the two readers disagree, 2 on a read error.
"""
import datetime
import glob
import json
import os
import sys

import deltalake
import duckdb
import duckdb_extension_delta

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def canon(v):
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return (v - EPOCH) // datetime.timedelta(milliseconds=1)
    return v


def rows_of(columns, records):
    rows = [[canon(r[c]) for c in columns] for r in records]
    rows.sort(key=lambda r: json.dumps(r, default=str))
    return rows


def by_deltalake(path):
    table = deltalake.DeltaTable(path).to_pyarrow_table()
    return table.column_names, table.to_pylist()


def by_duckdb(con, path):
    literal = "'" + path.replace("'", "''") + "'"
    cur = con.execute(f"SELECT * FROM delta_scan({literal})")
    columns = [d[0] for d in cur.description]
    return columns, [dict(zip(columns, r)) for r in cur.fetchall()]


def main():
    con = duckdb.connect()
    ext = glob.glob(
        os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions", "*", "delta.duckdb_extension")
    )
    if not ext:
        print("the duckdb_extension_delta package holds no delta.duckdb_extension", file=sys.stderr)
        return 2
    con.execute("LOAD '" + ext[0].replace("'", "''") + "'")
    out = {}
    for path in sys.argv[1:]:
        try:
            columns, a = by_deltalake(path)
            d_columns, b = by_duckdb(con, path)
        except Exception as e:  # noqa: BLE001 - any reader failure is reported the same way
            print(f"cannot read {path}: {e}", file=sys.stderr)
            return 2
        if sorted(columns) != sorted(d_columns):
            print(f"{path}: deltalake reads columns {columns}, duckdb {d_columns}", file=sys.stderr)
            return 1
        rows_a, rows_b = rows_of(columns, a), rows_of(columns, b)
        if rows_a != rows_b:
            diff = next((i for i, (x, y) in enumerate(zip(rows_a, rows_b)) if x != y), min(len(rows_a), len(rows_b)))
            print(
                f"{path}: the readers disagree ({len(rows_a)} rows by deltalake, {len(rows_b)} by duckdb); "
                f"first difference at sorted row {diff}",
                file=sys.stderr,
            )
            return 1
        out[path] = {"columns": columns, "rows": rows_a}
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
