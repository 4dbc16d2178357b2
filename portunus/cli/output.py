"""
What commands print: lines, JSON as the API gave it, and aligned tables
with C{-} for an empty cell.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO

__all__ = ["Output", "cell", "table"]


class Output:
    """Where a command's output goes (stdout; a StringIO in tests)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def print(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")

    def print_json(self, value: object) -> None:
        self.print(json.dumps(value, indent=2, sort_keys=True))


def cell(value: object) -> str:
    """A value as a table cell or C{key=value} value: C{-} when empty."""
    return "-" if value is None or value == "" else str(value)


def table(rows: Sequence[Sequence[object]]) -> list[str]:
    """C{rows} (a header first) as lines of left-aligned columns two spaces apart."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
