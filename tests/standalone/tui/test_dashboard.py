"""
Tests for L{portunus.standalone.tui.dashboard}: the keys of Portunus §10,
sorting, selection and pause, without a terminal.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portunus.standalone.tui.dashboard import Dashboard, Tab
from tests.standalone.tui._data import counters, hello, snapshot


def loaded() -> Dashboard:
    """web: most bytes overall, Alpha: fastest now, dns: most flows."""
    d = Dashboard(hello())
    d.add_snapshot(
        snapshot(
            1,
            1000,
            counters("1", **{"in": 5000, "conns_active": 1}),
            counters("2", **{"in": 0}),
            counters("3", **{"in": 10, "flows_active": 9}),
        )
    )
    d.add_snapshot(
        snapshot(
            2,
            2000,
            counters("1", **{"in": 5000, "conns_active": 1}),
            counters("2", **{"in": 3000}),
            counters("3", **{"in": 20, "flows_active": 9}),
        )
    )
    return d


def names(d: Dashboard) -> list[str]:
    return [r.name for r in d.ordered()]


class KeyTests(SynchronousTestCase):
    def test_quit_keys(self) -> None:
        """q and Ctrl-C quit, even with help open."""
        d = Dashboard(hello())
        self.assertTrue(d.press("q"))
        d.press("?")
        self.assertTrue(d.press("ctrl c"))
        self.assertFalse(Dashboard(hello()).press("x"))

    def test_tabs(self) -> None:
        """Tab/→/l go forward, Shift-Tab/←/h back, wrapping; Enter opens Detail."""
        d = Dashboard(hello())
        seen = []
        for key in ("tab", "right", "l", "shift tab", "left", "h"):
            d.press(key)
            seen.append(d.tab)
        self.assertEqual(
            seen,
            [Tab.DETAIL, Tab.ERRORS, Tab.OVERVIEW, Tab.ERRORS, Tab.DETAIL, Tab.OVERVIEW],
        )
        d.press("enter")
        self.assertIs(d.tab, Tab.DETAIL)

    def test_help_swallows_keys(self) -> None:
        """? opens help; other keys do nothing until Esc (or ?) closes it."""
        d = Dashboard(hello())
        d.press("?")
        d.press("tab")
        d.press("s")
        self.assertEqual((d.help, d.tab, d.sort), (True, Tab.OVERVIEW, "rate"))
        d.press("esc")
        self.assertFalse(d.help)

    def test_sort_cycle_and_reverse(self) -> None:
        """s cycles rate -> total -> name -> conns; r reverses."""
        d = loaded()
        orders = [names(d)]
        for _ in range(4):
            d.press("s")
            orders.append(names(d))
        self.assertEqual(d.sort, "rate")
        self.assertEqual(
            orders,
            [
                ["Alpha", "dns", "web"],  # rate: Alpha 3000/s, dns 10/s, web 0
                ["web", "Alpha", "dns"],  # total: 5000, 3000, 20
                ["Alpha", "dns", "web"],  # name, case-insensitive
                ["dns", "web", "Alpha"],  # conns: 9 flows, 1 conn, 0
                ["Alpha", "dns", "web"],
            ],
        )
        d.press("r")
        self.assertEqual(names(d), ["web", "dns", "Alpha"])

    def test_selection_follows_the_order(self) -> None:
        """↓/j and ↑/k move through the shown order and stop at the ends."""
        d = loaded()
        self.assertEqual(d.selected, "1")  # the first rule of the config
        d.press("up")
        self.assertEqual(d.selected, "3")  # web is last by rate: up goes to dns
        d.press("k")
        d.press("k")
        self.assertEqual(d.selected, "2")
        for _ in range(5):
            d.press("j")
        self.assertEqual(d.selected, "1")
        self.assertEqual(d.selected_rule().name, "web")  # type: ignore[union-attr]

    def test_pause_freezes_what_is_shown(self) -> None:
        """p freezes the shown data (new snapshots still recorded); p again resumes."""
        d = loaded()
        d.press("p")
        d.add_snapshot(snapshot(3, 3000, counters("1", **{"in": 9000})))
        self.assertEqual(d.shown.latest.seq, 2)  # type: ignore[union-attr]
        self.assertEqual(d.history.latest.seq, 3)  # type: ignore[union-attr]
        d.press("p")
        self.assertEqual(d.shown.latest.seq, 3)  # type: ignore[union-attr]

    def test_reset_baseline(self) -> None:
        """c makes totals count from now."""
        d = loaded()
        d.press("c")
        d.add_snapshot(snapshot(3, 3000, counters("1", **{"in": 5100})))
        self.assertEqual(d.shown.totals("1").bytes_in, 100)  # type: ignore[union-attr]
