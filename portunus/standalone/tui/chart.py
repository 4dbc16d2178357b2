"""
A line chart in Braille characters: each terminal cell holds a 2 x 4 grid
of dots, so a chart C{width} cells wide plots C{2 * width} points with
C{4 * height} steps of resolution.  Pure text, so any terminal (and tmux)
shows it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["braille_chart"]

_BLANK = 0x2800
# Dot bits by (column, row from the top) inside one cell.
_DOTS = (
    (0x01, 0x02, 0x04, 0x40),
    (0x08, 0x10, 0x20, 0x80),
)


def braille_chart(values: Sequence[float], width: int, height: int, top: float) -> list[str]:
    """
    C{height} lines of C{width} characters plotting C{values} (oldest
    first) scaled so C{top} reaches the top row; the newest value is at the
    right edge, and with fewer values than dots the chart starts part way
    across.  Consecutive points are joined, so steps read as a line.
    """
    if width <= 0 or height <= 0:
        return []
    dots_x, dots_y = 2 * width, 4 * height
    points = list(values)[-dots_x:]
    cells = [[0] * width for _ in range(height)]
    offset = dots_x - len(points)
    previous: int | None = None
    for index, value in enumerate(points):
        level = _level(value, top, dots_y)
        x = offset + index
        low, high = (level, level) if previous is None else sorted((previous, level))
        for y in range(low, high + 1):
            row = dots_y - 1 - y  # dot rows counted from the top
            cells[row // 4][x // 2] |= _DOTS[x % 2][row % 4]
        previous = level
    return ["".join(chr(_BLANK + bits) for bits in line) for line in cells]


def _level(value: float, top: float, dots_y: int) -> int:
    if top <= 0 or value <= 0:
        return 0
    return min(dots_y - 1, round(value / top * (dots_y - 1)))
