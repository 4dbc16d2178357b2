"""
Tests for L{portunus.standalone.tui.screen}: what each tab draws, rendered
to text at a fixed terminal size.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portunus.standalone.tui.dashboard import Dashboard
from portunus.standalone.tui.probe import ProbeResult
from portunus.standalone.tui.screen import DashboardView
from tests.standalone.tui._data import counters, hello, snapshot


def screen(view: DashboardView, cols: int = 160, rows: int = 40) -> list[str]:
    canvas = view.top.render((cols, rows), focus=True)
    return [line.decode("utf-8").rstrip() for line in canvas.text]


def find(lines: list[str], text: str) -> str:
    for line in lines:
        if text in line:
            return line
    raise AssertionError(f"{text!r} not on screen:\n" + "\n".join(lines))


class ScreenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.keys: list[str] = []
        self.dashboard = Dashboard(hello())
        self.dashboard.add_snapshot(
            snapshot(
                1,
                61_000,
                counters("1", **{"in": 0, "out": 0, "conns_total": 1}),
                counters("3", flows_active=80, dns_failures=4),
            )
        )
        self.dashboard.add_snapshot(
            snapshot(
                2,
                62_000,
                counters(
                    "1",
                    **{"in": 2048, "out": 1024, "conns_active": 2, "conns_total": 7},
                    upstream_connect_failed=3,
                ),
                counters("3", flows_active=95, dns_failures=4),
            )
        )
        self.dashboard.add_probe("1", ProbeResult("ok", 3.2))
        self.dashboard.add_probe("2", ProbeResult("timeout"))
        self.view = DashboardView(self.dashboard, self.keys.append)

    def test_overview(self) -> None:
        """A row per rule: rates, totals, conns or flows, upstream and RTT; the title facts."""
        lines = screen(self.view)
        self.assertIn("portunus-standalone 9.9.9", lines[0])
        self.assertIn("up 1m02s", lines[0])
        self.assertIn("fds 17/1024", lines[0])
        self.assertIn("LIVE", lines[0])
        web = find(lines, "web ")
        for text in ("8080", "2.00 KiB/s", "1.00 KiB", "2/7", "10.0.0.5:80", "3.2ms"):
            self.assertIn(text, web)
        self.assertIn("timeout", find(lines, "Alpha"))
        dns = find(lines, "dns ")
        self.assertIn("95/100", dns)
        self.assertIn("IN/s ▼", find(lines, "RULE"))

    def test_detail(self) -> None:
        """Detail: charts, targets with the active one and its RTT, counters, capabilities."""
        self.view.top.keypress((160, 40), "enter")
        self.assertEqual(self.keys, ["enter"])
        self.dashboard.press("enter")
        self.view.update()
        lines = screen(self.view, rows=50)
        self.assertIn("IN  client → target", find(lines, "now 2.00 KiB/s"))
        active = find(lines, "▶ 10.0.0.5:80")
        self.assertIn("prio 0", active)
        self.assertIn("PROXY v2", active)
        self.assertIn("3.2ms", active)
        self.assertIn("10.0.0.9:80", find(lines, "prio 1"))
        self.assertIn("2 active, 7 total", find(lines, "conns"))
        self.assertIn("yes", find(lines, "splice"))
        self.assertTrue(find(lines, "upstream_connect_failed 3").startswith(" Errors"))

    def test_detail_of_a_udp_rule(self) -> None:
        """A UDP rule's Detail shows its flow saturation against udp_max_flows."""
        self.dashboard.selected = "3"
        self.dashboard.press("enter")
        self.view.update()
        lines = screen(self.view, rows=50)
        self.assertIn("95/100 (95%)", find(lines, "UDP flows"))

    def test_errors_tab(self) -> None:
        """Errors: each rule's non-zero error counters."""
        self.dashboard.press("tab")
        self.dashboard.press("tab")
        self.view.update()
        lines = screen(self.view)
        self.assertIn("3", find(lines, "upstream_connect_failed"))
        self.assertIn("dns", find(lines, "dns_failures"))

    def test_help_and_pause(self) -> None:
        """? draws the keys over the screen; p shows PAUSED; s shows the sort."""
        self.dashboard.press("p")
        self.dashboard.press("s")
        self.dashboard.press("?")
        self.view.update()
        lines = screen(self.view)
        self.assertIn("PAUSED", lines[0])
        self.assertIn("sort: total ▼", lines[1])
        self.assertIn("│s ", find(lines, "sort: rate → total → name → conns"))
        self.assertIn("Keys (Esc closes)", "\n".join(lines))
