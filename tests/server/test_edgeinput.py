"""
The checks on what edges send (portunus.server.edgeinput): what a real edge
reports passes unchanged, so the checker and the edge's reporting keep
agreeing; bounds are enforced at their edges.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.control.commands import FEATURES, PROTOCOL_VERSION
from portunus.dataplane.failover import TargetSelector
from portunus.dataplane.stats import RuleStats
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.server.edgeinput import (
    MAX_COUNTER,
    EdgeInputError,
    check_enroll_code,
    check_hello,
    check_hello_addresses,
    check_stats,
)


class StatsTests(SynchronousTestCase):
    def test_what_a_real_edge_reports_passes_unchanged(self) -> None:
        """
        A RuleStats snapshot with per-port rows and a TargetSelector's
        per-target rows (every counter touched) comes back exactly as sent.
        """
        stats = RuleStats(bytes_in=10, throttle_seconds_in=0.25, rate_limit_rejects=3)
        stats.for_port(8000).bytes_out = 7
        stats.for_port(8001)
        targets = (
            Target("10.0.0.5", PortRange.single(80)),
            Target("backend.internal", PortRange.single(81), priority=1, weight=3),
        )
        rule = Rule(
            name="web",
            protocol=Protocol.TCP,
            listen=PortRange.single(9000),
            targets=targets,
        )
        clock = Clock()
        clock.advance(1_700_000_000.5)
        selector = TargetSelector(rule, clock)
        selector.record_success(targets[0])
        selector.record_failure(targets[1])
        selector.add_bytes(targets[0], 100, 200)
        entry = {"rule_id": 4, **stats.snapshot(per_port=True), "per_target": selector.snapshot()}
        self.assertEqual(check_stats(1000, [entry]), [entry])

    def test_bounds(self) -> None:
        """Counters 0..2**63-1, seconds finite and >= 0, ports 1..65535."""
        self.assertEqual(
            check_stats(0, [{"rule_id": 1, "bytes_in": MAX_COUNTER}])[0]["bytes_in"], MAX_COUNTER
        )
        refused = [
            (0, [{"rule_id": 1, "bytes_in": MAX_COUNTER + 1}]),
            (0, [{"rule_id": 1, "bytes_in": True}]),
            (0, [{"rule_id": 1, "throttle_seconds_out": float("inf")}]),
            (0, [{"rule_id": 1, "throttle_seconds_out": -0.5}]),
            (0, [{"rule_id": 1, "ports": {"65536": {}}}]),
            (0, [{"rule_id": 1, "ports": {"+80": {}}}]),
            (0, [{"rule_id": 0}]),
            (-1, []),
            (0, [{"rule_id": 1, "per_target": [{"last_success_at": "yesterday"}]}]),
            (0, [{"rule_id": 1, "per_target": [{"target": ""}]}]),
            (0, [{"rule_id": 1, "per_target": [{"host": "a\nb"}]}]),
        ]
        for sent_at_ms, stats in refused:
            with self.assertRaises(EdgeInputError, msg=repr(stats)):
                check_stats(sent_at_ms, stats)

    def test_the_error_names_the_field(self) -> None:
        """The first problem is named by its path, for the log line."""
        with self.assertRaises(EdgeInputError) as caught:
            check_stats(0, [{"rule_id": 1}, {"rule_id": 2, "ports": {"80": {"bytes_in": -3}}}])
        self.assertIn("stats[1].ports.80.bytes_in", str(caught.exception))


class HelloTests(SynchronousTestCase):
    def test_this_codes_hello_passes(self) -> None:
        """What portunus-client sends is within bounds; an empty token is left to the plane."""
        declared = check_hello("t" * 43, PROTOCOL_VERSION, "0.1.0.dev3+gabc", list(FEATURES))
        self.assertEqual(declared, frozenset(FEATURES))
        self.assertEqual(check_hello("", PROTOCOL_VERSION, "1", []), frozenset())

    def test_addresses(self) -> None:
        """
        Hello's addresses are kept in one written form; none from an older
        edge; too many, or one that is not an IP address, is refused.
        """
        self.assertEqual(check_hello_addresses(None), frozenset())
        self.assertEqual(
            check_hello_addresses(["192.0.2.7", "fe80::1%eth0", "::ffff:10.0.0.1", "2001:DB8::1"]),
            frozenset({"192.0.2.7", "fe80::1", "10.0.0.1", "2001:db8::1"}),
        )
        for bad in (["edge.example"], ["0.0.0.0"], ["1" * 100], ["10.0.0.1"] * 257):
            self.assertRaises(EdgeInputError, check_hello_addresses, bad)

    def test_enroll_codes(self) -> None:
        """A code is 1 to 256 printable ASCII characters without spaces."""
        check_enroll_code("A" * 43)
        for code in ("", "a b", "é", "x" * 257):
            with self.assertRaises(EdgeInputError):
                check_enroll_code(code)
