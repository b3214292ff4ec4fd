"""Merge re-checked rows into the posteriordb table, row by row.

    python -m benchmarks.experiments.diagnose.merge_rows TABLE.json ROWS.json [ROWS.json ...]

Every row of each ``ROWS.json`` (a list of the table's rows, e.g. a refit's results after
``reverdict``) replaces the table's row with the same (posterior, engine), or is added; later
files win. The table (``benchmarks/experiments/posteriordb/results.json``) is rewritten in place,
in its own row order; ``python -m benchmarks.posteriordb --render-only`` then redraws the docs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def merge(table: list[dict], *updates: list[dict]) -> list[dict]:
    rows = {(r["posterior"], r["engine"]): r for r in table}
    for update in updates:
        for r in update:
            rows[(r["posterior"], r["engine"])] = r
    return list(rows.values())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("table")
    ap.add_argument("rows", nargs="+")
    args = ap.parse_args(argv)
    path = Path(args.table)
    table = json.loads(path.read_text())
    merged = merge(table, *(json.loads(Path(p).read_text()) for p in args.rows))
    path.write_text(json.dumps(merged, indent=1))
    print(f"{len(table)} rows -> {len(merged)}")


if __name__ == "__main__":
    main()
