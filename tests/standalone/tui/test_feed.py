"""
Tests for L{portunus.standalone.tui.feed}: reading the protocol, and the
ring, rates and totals the screen shows.
"""

from __future__ import annotations

import copy

from twisted.trial.unittest import SynchronousTestCase

from portunus.standalone.tui.feed import (
    FeedError,
    History,
    TargetInfo,
    parse_hello,
    parse_snapshot,
    ring_size,
)
from tests.standalone.tui._data import counters, hello_message, snapshot, snapshot_message


class ParseTests(SynchronousTestCase):
    def test_hello(self) -> None:
        """A Hello becomes rules with targets; the active target is the lowest priority."""
        hello = parse_hello(hello_message(500))
        self.assertEqual((hello.v, hello.daemon_version, hello.refresh_ms), (1, "9.9.9", 500))
        web, alpha, dns = hello.rules
        self.assertEqual(web.active_target, TargetInfo("10.0.0.5", 80, 0, "v2"))
        self.assertEqual(alpha.active_target.display(), "[::1]:7000")  # type: ignore[union-attr]
        self.assertEqual((web.splice_capable, web.udp_max_flows), (True, None))
        self.assertEqual((dns.splice_capable, dns.udp_max_flows), (None, 100))

    def test_hello_refused(self) -> None:
        """Not a Hello, another version, or a wrong field: FeedError naming it."""
        bad_version = dict(hello_message(), v=2)
        bad_rule = hello_message()
        bad_rule["rules"][1]["listen"] = 9000
        bool_port = copy.deepcopy(hello_message())
        bool_port["rules"][0]["targets"][0]["port"] = True
        for message, phrase in (
            ({"seq": 1}, "not a Hello"),
            ([1], "not a Hello"),
            (bad_version, "protocol v2; this client reads v1"),
            (bad_rule, "hello.rules[1].listen is missing or not a string"),
            (bool_port, "hello.rules[0].targets[0].port is missing or not a number"),
        ):
            error = self.assertRaises(FeedError, parse_hello, message)
            self.assertIn(phrase, str(error))

    def test_snapshot(self) -> None:
        """A Snapshot keeps each rule's counters by id and the process figures."""
        message = snapshot_message(
            7, 2500, counters("1", **{"in": 10, "upstream_connect_failed": 2})
        )
        message["process"]["rss_bytes"] = None
        parsed = parse_snapshot(message)
        self.assertEqual((parsed.seq, parsed.uptime_ms, parsed.rss_bytes), (7, 2500, None))
        self.assertEqual(parsed.rules["1"].bytes_in, 10)
        self.assertEqual(parsed.rules["1"].err["upstream_connect_failed"], 2)

    def test_snapshot_refused(self) -> None:
        """Negative counters or a missing process are refused, naming the field."""
        negative = snapshot_message(1, 0, counters("1", out=-1))
        error = self.assertRaises(FeedError, parse_snapshot, negative)
        self.assertIn("snapshot.r[0].out is negative", str(error))
        error = self.assertRaises(FeedError, parse_snapshot, {"seq": 1, "r": []})
        self.assertIn("snapshot.process", str(error))

    def test_ring_size(self) -> None:
        """60 s of snapshots plus one; refresh below 50 ms counts as 50."""
        self.assertEqual(
            [ring_size(ms) for ms in (1000, 250, 5000, 50, 1)], [61, 241, 13, 1201, 1201]
        )


class HistoryTests(SynchronousTestCase):
    def test_ring_keeps_the_window(self) -> None:
        """Only the last ring_size snapshots are kept."""
        history = History(5000)
        for seq in range(1, 21):
            history.add(snapshot(seq, seq * 5000))
        self.assertEqual(len(history.snapshots), 13)
        self.assertEqual(history.snapshots[0].seq, 8)

    def test_rates_from_the_last_two(self) -> None:
        """rate = delta * 1000 / delta uptime_ms, from the last two snapshots only."""
        history = History(1000)
        self.assertIsNone(history.rates("1"))
        history.add(snapshot(1, 1000, counters("1", **{"in": 0, "out": 0})))
        history.add(snapshot(2, 2000, counters("1", **{"in": 5000, "out": 100})))
        history.add(snapshot(3, 2500, counters("1", **{"in": 6000, "out": 100, "conns_total": 4})))
        rates = history.rates("1")
        assert rates is not None
        self.assertEqual((rates.bytes_in, rates.bytes_out, rates.conns_total), (2000.0, 0.0, 8.0))
        self.assertIsNone(history.rates("missing"))

    def test_counter_going_back_has_no_negative_rate(self) -> None:
        """A counter that drops (a worker restarted) reads as zero, never negative."""
        history = History(1000)
        history.add(snapshot(1, 1000, counters("1", **{"in": 900})))
        history.add(snapshot(2, 2000, counters("1", **{"in": 100})))
        self.assertEqual(history.rates("1").bytes_in, 0.0)  # type: ignore[union-attr]

    def test_baseline(self) -> None:
        """After a reset, totals and errors count from then; gauges stay absolute."""
        history = History(1000)
        history.add(
            snapshot(1, 1000, counters("1", **{"in": 100, "conns_active": 3, "dns_failures": 2}))
        )
        history.reset_baseline()
        history.add(
            snapshot(
                2,
                2000,
                counters(
                    "1", **{"in": 150, "conns_active": 4, "dns_failures": 2, "send_dropped": 1}
                ),
            )
        )
        totals = history.totals("1")
        assert totals is not None
        self.assertEqual((totals.bytes_in, totals.conns_active), (50, 4))
        self.assertEqual(history.errors("1"), {"send_dropped": 1})

    def test_series_per_interval(self) -> None:
        """series gives one rate per interval, oldest first."""
        history = History(1000)
        for seq, total in enumerate((0, 1000, 3000, 3000), start=1):
            history.add(snapshot(seq, seq * 1000, counters("1", **{"in": total})))
        self.assertEqual(history.series("1", "bytes_in"), [1000.0, 2000.0, 0.0])

    def test_copy_is_frozen(self) -> None:
        """A copy does not see later snapshots (what pause shows)."""
        history = History(1000)
        history.add(snapshot(1, 1000))
        frozen = history.copy()
        history.add(snapshot(2, 2000))
        self.assertEqual(frozen.latest.seq, 1)  # type: ignore[union-attr]
