"""Read the demo's records back through distwal.read() and summarise them per rank.

    python examples/readback.py .distwal-demo      # what `make demo` runs last

distwal.read(dir) reads the sink the directory ships to (here its SQLite file), so the
same script works for a JSONL sink; `distwal read DIR` is the same from the shell.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import distwal


def main(root: str) -> int:
    per_rank: dict[object, list[int]] = defaultdict(list)
    writers: dict[object, set[str]] = defaultdict(set)
    first: list[dict[str, object]] = []
    seen: set[tuple[str, int]] = set()
    duplicates = 0
    for record in distwal.read(root):
        key = (str(record["writer"]), int(record["seq"]))
        duplicates += key in seen
        seen.add(key)
        per_rank[record["rank"]].append(key[1])
        writers[record["rank"]].add(key[0])
        if len(first) < 3:
            first.append(record)
    print(f"read back from {root} through distwal.read(); the first records:")
    for record in first:
        print(f"  rank {record['rank']}  seq {record['seq']}  {record['data']}")
    print(f"  {'rank':>4}  {'records':>7}  {'seq range':>11}  writers")
    for rank in sorted(per_rank, key=lambda r: (r is None, r)):
        seqs = per_rank[rank]
        low, high, count = min(seqs), max(seqs), len(seqs)
        gaps = "" if high - low + 1 == count or len(writers[rank]) > 1 else f"  ({high - low + 1 - count} missing!)"
        print(f"  {rank!s:>4}  {count:>7}  {low:>5}..{high:<5}  {len(writers[rank])}{gaps}")
    print(f"  total {len(seen)} records, {duplicates} duplicates")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".distwal-demo"))
