"""
The control port's gate on a Clock: per-source and total caps, the
handshake and Hello deadlines, the enrollment throttle, and refusals
reported as one aggregated line per interval.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from portunus.server.gate import (
    MAX_BYTES_BEFORE_WELCOME,
    REFUSAL_REASONS,
    REPORT_INTERVAL_SECS,
    Gate,
    GateLimits,
    Tally,
    Ticket,
    fit_to_descriptors,
    source_of,
)
from portunus.server.metrics import ServerMetrics
from portunus.server.settings import CONTROL_LIMIT_KEYS


def v4(host: str, port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


class Recorder:
    """A GateObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.refused: list[str] = []
        self.counts: list[int] = []
        self.ignored = 0

    def control_refused(self, reason: str) -> None:
        self.refused.append(reason)

    def unauthenticated_connections(self, count: int) -> None:
        self.counts.append(count)

    def edge_report_ignored(self) -> None:
        self.ignored += 1


class Connection:
    """What a session does with its ticket: starts it, and can be aborted."""

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.aborted = 0
        ticket.started(self.abort)

    def abort(self) -> None:
        self.aborted += 1


class _GateCase(SynchronousTestCase):
    limits = GateLimits(
        handshake_timeout_secs=10.0,
        hello_timeout_secs=10.0,
        max_unauthenticated=6,
        max_unauthenticated_per_source=3,
    )

    def setUp(self) -> None:
        self.clock = Clock()
        self.observer = Recorder()
        self.gate = Gate(self.limits, self.clock, self.observer)

    def connect(self, host: str = "198.51.100.1") -> Connection:
        ticket = self.gate.admit(v4(host))
        assert ticket is not None
        return Connection(ticket)


class CapTests(_GateCase):
    def test_per_source_cap_refuses_at_accept(self) -> None:
        """
        A source at its cap gets None (the listener closes the socket before
        any TLS work); other sources are still admitted, and the source gets
        room again when one of its connections ends.
        """
        held = [self.connect() for _ in range(3)]
        self.assertIsNone(self.gate.admit(v4("198.51.100.1")))
        self.assertEqual(self.observer.refused, ["per_source_cap"])
        self.assertIsNotNone(self.gate.admit(v4("198.51.100.2")))
        held[0].ticket.ended()
        self.assertIsNotNone(self.gate.admit(v4("198.51.100.1")))
        self.assertEqual([c.aborted for c in held], [0, 0, 0])

    def test_total_cap_evicts_the_oldest(self) -> None:
        """
        At the total cap a new connection is admitted and the oldest
        unauthenticated one is aborted, so strangers holding the port cannot
        keep a newcomer (an edge) out.
        """
        held = [self.connect(f"198.51.100.{n}") for n in range(6)]
        newcomer = self.connect("203.0.113.9")
        self.assertEqual([c.aborted for c in held], [1, 0, 0, 0, 0, 0])
        self.assertEqual(self.observer.refused, ["total_cap"])
        self.assertEqual(len(self.gate), 6)
        self.assertTrue(newcomer.ticket.open)
        # The evicted connection's own end later changes nothing.
        held[0].ticket.ended()
        self.assertEqual(len(self.gate), 6)

    def test_welcomed_sessions_leave_the_counts(self) -> None:
        """
        A welcomed session no longer counts against either cap: authenticated
        edges never compete with strangers, and strangers never evict them.
        """
        edges = [self.connect() for _ in range(3)]
        for edge in edges:
            edge.ticket.tls_ready()
            edge.ticket.welcomed()
        self.assertEqual((len(self.gate), self.gate.from_source("198.51.100.1")), (0, 0))
        strangers = [self.connect(f"203.0.113.{n}") for n in range(7)]
        self.assertEqual([e.aborted for e in edges], [0, 0, 0])
        self.assertEqual([s.aborted for s in strangers], [1, 0, 0, 0, 0, 0, 0])
        self.assertEqual(self.observer.counts[-1], 6)

    def test_ipv6_sources_count_by_64(self) -> None:
        """One host's /64 is one source; an IPv4-mapped address counts as IPv4."""
        self.assertEqual(source_of(IPv6Address("TCP", "2001:db8:1:2::5", 1)), "2001:db8:1:2::/64")
        self.assertEqual(
            source_of(IPv6Address("TCP", "2001:db8:1:2:aaaa::9", 1)), "2001:db8:1:2::/64"
        )
        self.assertEqual(source_of(IPv6Address("TCP", "::ffff:192.0.2.7", 1)), "192.0.2.7")
        self.assertEqual(source_of(None), "unknown")
        for n in range(3):
            self.assertIsNotNone(self.gate.admit(IPv6Address("TCP", f"2001:db8::{n + 1}", 1)))
        self.assertIsNone(self.gate.admit(IPv6Address("TCP", "2001:db8::ff", 1)))

    def test_total_cap_fits_half_the_open_file_limit(self) -> None:
        """
        The total cap is lowered to half the open-file limit, with a warning;
        a cap already below it is kept as configured.
        """
        with capturedLogs() as logged:
            fitted = fit_to_descriptors(GateLimits(max_unauthenticated=1024), 1024)
            kept = fit_to_descriptors(GateLimits(max_unauthenticated=100), 1024)
        self.assertEqual(fitted.max_unauthenticated, 512)
        self.assertEqual(kept.max_unauthenticated, 100)
        [warning] = [e for e in logged if e.get("event") == "control.unauthenticated_cap_lowered"]
        self.assertEqual((warning["effective"], warning["nofile"]), (512, 1024))


class DeadlineTests(_GateCase):
    def test_handshake_deadline(self) -> None:
        """No TLS handshake within handshake_timeout_secs of the accept: aborted."""
        conn = self.connect()
        self.clock.advance(9.9)
        self.assertEqual(conn.aborted, 0)
        self.clock.advance(0.1)
        self.assertEqual(conn.aborted, 1)
        self.assertEqual(self.observer.refused, ["handshake_timeout"])
        self.assertEqual(len(self.gate), 0)

    def test_hello_deadline_runs_from_the_handshake(self) -> None:
        """
        After the handshake the connection has hello_timeout_secs, counted
        from the handshake, to be welcomed.
        """
        conn = self.connect()
        self.clock.advance(8)
        conn.ticket.tls_ready()
        self.clock.advance(9.9)
        self.assertEqual(conn.aborted, 0)
        self.clock.advance(0.1)
        self.assertEqual(conn.aborted, 1)
        self.assertEqual(self.observer.refused, ["hello_timeout"])

    def test_welcomed_sessions_have_no_deadline(self) -> None:
        """A welcomed session is never aborted by the gate, however long it lives."""
        conn = self.connect()
        conn.ticket.tls_ready()
        conn.ticket.welcomed()
        self.clock.advance(3600)
        self.assertEqual((conn.aborted, self.observer.refused), (0, []))

    def test_a_closed_connection_leaves_no_timer(self) -> None:
        """A connection that goes away cancels its deadline."""
        conn = self.connect()
        conn.ticket.ended()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(conn.aborted, 0)


class EnrollmentThrottleTests(_GateCase):
    def test_failed_codes_lock_the_source_out(self) -> None:
        """
        Five refused codes from one source lock it out of enrolling for a
        minute; other sources are not affected; a success clears the count.
        """
        source = "198.51.100.1"
        for _ in range(5):
            attempt = self.gate.enrollment_attempt(source)
            assert attempt is not None
            attempt.failed()
        self.assertIsNone(self.gate.enrollment_attempt(source))
        self.assertIsNotNone(self.gate.enrollment_attempt("198.51.100.2"))
        self.clock.advance(60)
        attempt = self.gate.enrollment_attempt(source)
        assert attempt is not None
        attempt.succeeded()
        failing = self.gate.enrollment_attempt(source)
        assert failing is not None
        failing.failed()
        self.assertIsNotNone(self.gate.enrollment_attempt(source))

    def test_simultaneous_codes_are_reserved(self) -> None:
        """
        Codes sent at once on a connection, before any is decided, stop at
        the lock's count; a connection that ends frees its undecided guesses.
        """
        source = "198.51.100.1"
        ticket = self.gate.admit(v4(source))
        assert ticket is not None
        allowed = [ticket.enrollment_allowed() for _ in range(8)]
        self.assertEqual(allowed.count(True), 5)
        ticket.ended()
        self.assertIsNotNone(self.gate.enrollment_attempt(source))


class ReportTests(_GateCase):
    def test_one_aggregated_line_per_interval(self) -> None:
        """
        Refusals are logged as control.refusals warnings, at most one per
        interval and none before the first interval has passed, with a count
        per reason (adding up to every refusal) and a first example of each;
        nothing is logged while nothing is refused.
        """
        logged: list[tuple[float, dict[str, Any]]] = []
        with capturedLogs() as events:
            for _ in range(3):
                self.connect("198.51.100.1")
            self.assertIsNone(self.gate.admit(v4("198.51.100.1")))
            for n in range(2):
                self.connect(f"203.0.113.{n}")
            seen = len(events)
            for _ in range(60):
                self.clock.advance(1)
                logged += [(self.clock.seconds(), e) for e in self.lines(events[seen:])]
                seen = len(events)
        self.assertTrue(logged)
        times = [t for t, _ in logged]
        self.assertGreaterEqual(times[0], REPORT_INTERVAL_SECS)
        for earlier, later in itertools.pairwise(times):
            self.assertGreaterEqual(later - earlier, REPORT_INTERVAL_SECS)
        totals: dict[str, int] = {}
        for _, line in logged:
            self.assertEqual(line["log_level"].name, "warn")
            self.assertEqual(line["total"], sum(line["counts"].values()))
            for reason, n in line["counts"].items():
                totals[reason] = totals.get(reason, 0) + n
        self.assertEqual(totals, {"per_source_cap": 1, "handshake_timeout": 5})
        self.assertEqual(logged[0][1]["examples"]["per_source_cap"], "198.51.100.1")

    def test_stopping_reports_what_is_counted(self) -> None:
        """Stopping the server logs the refusals counted so far."""
        self.gate.startService()
        with capturedLogs() as logged:
            self.gate.refused("enrollment_used", "198.51.100.1")
            self.gate.stopService()
        [line] = self.lines(logged)
        self.assertEqual(line["counts"], {"enrollment_used": 1})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_examples_are_made_printable(self) -> None:
        """A peer's text reaches the log without control characters and bounded."""
        emitted: list[Any] = []
        tally = Tally(self.clock, 1.0, lambda c, e, s: emitted.append(e))
        tally.add("protocol_error", "a\x1b[31mb\n" + "x" * 500)
        tally.flush()
        [examples] = emitted
        text = examples["protocol_error"]
        self.assertTrue(text.startswith("a?[31mb?"))
        self.assertTrue(text.isprintable())
        self.assertLessEqual(len(text), 200)

    @staticmethod
    def lines(logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in logged if e.get("event") == "control.refusals"]


class MetricsTests(SynchronousTestCase):
    def test_refusals_and_unauthenticated_gauge(self) -> None:
        """
        The gate's counts reach portunus_control_refusals_total (every reason
        exported from zero) and portunus_control_unauthenticated_connections.
        """

        class Source:
            def metrics_snapshot(self) -> list[Any]:
                return []

            def connected_clients(self) -> int:
                return 0

        metrics = ServerMetrics(Source())
        clock = Clock()
        gate = Gate(GateLimits(max_unauthenticated_per_source=1), clock, metrics)
        ticket = gate.admit(v4("198.51.100.1"))
        self.assertIsNone(gate.admit(v4("198.51.100.1")))
        text = metrics.render().decode()
        self.assertIn('portunus_control_refusals_total{reason="per_source_cap"} 1.0', text)
        self.assertIn('portunus_control_refusals_total{reason="hello_timeout"} 0.0', text)
        self.assertIn("portunus_control_unauthenticated_connections 1.0", text)
        assert ticket is not None
        ticket.ended()
        self.assertIn("portunus_control_unauthenticated_connections 0.0", metrics.render().decode())


class DocsTests(SynchronousTestCase):
    """docs/ state the gate's keys, defaults, ranges and reasons as the code has them."""

    DOCS = Path(__file__).resolve().parent.parent.parent / "docs"

    def test_server_config_rows(self) -> None:
        """Each control_* key's row in server-config.md has the code's default and range."""
        text = (self.DOCS / "server-config.md").read_text()
        defaults = GateLimits()
        for key, (attribute, bound) in CONTROL_LIMIT_KEYS.items():
            [row] = [line for line in text.splitlines() if line.startswith(f"| `{key}` |")]
            cells = [cell.strip() for cell in row.split("|")[1:-1]]
            self.assertEqual(cells[1], f"`{getattr(defaults, attribute):g}`", key)
            self.assertIn(bound.span(), cells[2], key)

    def test_security_names_every_reason_and_limit(self) -> None:
        """security.md lists every refusal reason and the fixed limits' values."""
        text = (self.DOCS / "security.md").read_text()
        for reason in REFUSAL_REASONS:
            self.assertIn(f"`{reason}`", text)
        self.assertIn(f"{MAX_BYTES_BEFORE_WELCOME // 1024} KiB", text)
        self.assertIn(f"`control.refusals` warning per {REPORT_INTERVAL_SECS:g} seconds", text)
        for key in CONTROL_LIMIT_KEYS:
            self.assertIn(f"`{key}`", text)
