"""Tests for L{portunus.standalone.tui.chart}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portunus.standalone.tui.chart import braille_chart


def dots(lines: list[str]) -> list[str]:
    """Each cell's 2x4 dots as text rows of '#' and '.', for reading."""
    bits = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
    out = []
    for line in lines:
        for row in bits:
            out.append("".join("#" if (ord(c) - 0x2800) & b else "." for c in line for b in row))
    return out


class BrailleChartTests(SynchronousTestCase):
    def test_shape(self) -> None:
        """height lines of width Braille characters, whatever the data."""
        lines = braille_chart([1.0] * 100, 7, 3, 1.0)
        self.assertEqual([len(line) for line in lines], [7, 7, 7])
        self.assertTrue(all(0x2800 <= ord(c) <= 0x28FF for c in "".join(lines)))
        self.assertEqual(braille_chart([1.0], 0, 3, 1.0), [])

    def test_points_scale_and_join(self) -> None:
        """Values scale to the top; a step draws the vertical to the new point, in its column."""
        self.assertEqual(
            dots(braille_chart([0, 3, 1, 1], 2, 1, 3)),
            [
                ".##.",
                ".##.",
                ".###",
                "##..",
            ],
        )

    def test_newest_on_the_right(self) -> None:
        """Fewer values than dots start part way; more keep only the newest."""
        self.assertEqual(dots(braille_chart([2], 2, 1, 2))[0], "...#")
        self.assertEqual(dots(braille_chart([9, 9, 0, 0, 0, 0], 2, 1, 9))[3], "####")

    def test_zero_top(self) -> None:
        """All zero (or no top): a flat line on the bottom row."""
        self.assertEqual(dots(braille_chart([0, 0], 1, 1, 0)), ["..", "..", "..", "##"])
