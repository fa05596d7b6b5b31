"""Read the demo's records back from the SQLite sink and summarise them per rank."""

from __future__ import annotations

import os
import sqlite3
import sys


def main(root: str) -> int:
    db = os.path.join(root, "collected.db")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT rank, COUNT(*), MIN(seq), MAX(seq), COUNT(DISTINCT writer) FROM records GROUP BY rank ORDER BY rank"
    ).fetchall()
    print(f"read back from {db}:")
    print(f"  {'rank':>4}  {'records':>7}  {'seq range':>11}  writers")
    for rank, count, low, high, writers in rows:
        gaps = "" if high - low + 1 == count else f"  ({high - low + 1 - count} missing!)"
        print(f"  {rank:>4}  {count:>7}  {low:>5}..{high:<5}  {writers}{gaps}")
    total = sum(r[1] for r in rows)
    duplicates = con.execute("SELECT COUNT(*) - COUNT(DISTINCT writer || ':' || seq) FROM records").fetchone()[0]
    print(f"  total {total} records, {duplicates} duplicates")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".distwal-demo"))
