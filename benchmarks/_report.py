"""What every benchmark reports with: a Report of paragraphs, tables and target lines.

    report = Report()
    report.text(f"{n:,} records per run, {reps} interleaved runs.")
    report.table(["case", "records/s", "notes"], rows, align="lrl")   # printed now, as text
    report.targets([f"throughput >= 300,000/s: **{verdict(rate >= 3e5)}** ({rate:,.0f}/s)"])
    return report.markdown()                                           # what run.py puts in the README

Tables print as padded text columns (the last column free) and go to the README as markdown;
`**` marks a verdict in markdown and is dropped from the printed text. Figures are medians of
interleaved repetitions with their range (`spread`), and ratios against a baseline (`times`).
"""

from __future__ import annotations

import statistics
from typing import Sequence


def spread(values: Sequence[float], fmt: str, style: str = "()") -> str:
    """The median, then the range: "12.3 (11.0-14.1)", or with style "[]": "12.3 [11.0 to 14.1]"."""
    mid = format(statistics.median(values), fmt)
    if len(values) < 2:
        return mid
    low, high = format(min(values), fmt), format(max(values), fmt)
    return f"{mid} ({low}-{high})" if style == "()" else f"{mid} [{low} to {high}]"


def times(value: float | None, base: float | None) -> str:
    """value / base as "1.78x", or "-" when either is missing."""
    return f"{value / base:.2f}x" if value and base else "-"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


class Report:
    def __init__(self) -> None:
        self._md: list[str] = []

    def text(self, paragraph: str, show: bool = False) -> None:
        """A paragraph of the markdown (printed too if `show`)."""
        self._md.append(paragraph)
        if show:
            print(paragraph.replace("**", ""), flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> None:
        """align: one letter per column, "l" or "r" (the last column is printed unpadded)."""
        md = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
        md += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
        self._md.append("\n".join(md))
        last = len(headers) - 1
        widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(last)]
        lines = []
        for row in [headers, *rows]:
            cells = [str(c).rjust(w) if a == "r" else str(c).ljust(w) for c, w, a in zip(row, widths, align)]
            lines.append("  ".join(cells + [str(row[last])]))
        print("\n".join(lines) + "\n", flush=True)

    def targets(self, lines: Sequence[str], title: str = "Targets:") -> None:
        if lines:
            self._md.append(f"{title}\n\n" + "\n".join(f"- {line}" for line in lines))
            print("\n".join("- " + line.replace("**", "") for line in lines) + "\n", flush=True)

    def markdown(self) -> str:
        return "\n\n".join(self._md) + "\n"
