"""
The control port against strangers and broken edges, in memory (iosim, TLS
included, one Clock), through the real listener factory, sessions, gate,
control plane and store:

- stalled peers are closed at the deadlines: bare TCP, half a ClientHello,
  TLS with no Hello, half an AMP box; a welcomed edge is never;
- AMP junk closes the connection and is counted, never logged as a
  traceback; a bare connect and close logs nothing at info;
- Hello fields are bounded; enrollment codes are throttled per source and
  their refusals aggregated;
- malformed StatsReports are dropped, counted, and leave every API route
  that reads stats answering 200.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from portunus.client.enroll import EnrollingProtocol
from portunus.control.commands import (
    PROTOCOL_VERSION,
    AuthFailed,
    EnrollmentRefused,
    Hello,
    ReplayDone,
    StatsReport,
)
from portunus.control.enrollment import parse_enroll_uri
from portunus.control.tls import PinnedClientTLS, server_tls_options
from portunus.server.gate import REPORT_INTERVAL_SECS, Ticket
from portunus.server.metrics import ServerMetrics
from portunus.server.sessions import ServerSession, control_factory
from tests._net import free_port
from tests.server._apiharness import ApiHarness
from tests.server.test_control_session import CERT_PEM, KEY_PEM, PIN, Harness, tcp_rule
from tests.server.test_gate import Recorder

SOURCE = IPv4Address("TCP", "198.51.100.7", 50000)


class Peer(Protocol):
    """A stranger on the control port: sends what it is told, records the rest."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        if self.greeting:
            assert self.transport is not None
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = reason


def client_hello() -> bytes:
    """The first flight of a real TLS client."""
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    connection.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


def box(**values: bytes) -> bytes:
    return amp.AmpBox({k.encode(): v for k, v in values.items()}).serialize()


class _PortCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.recorder = Recorder()
        self.h.gate.observer = self.recorder
        self.sessions: list[ServerSession] = []

    def open(self, peer: Protocol, tls: bool = False) -> IOPump:
        """Connect C{peer} (over TLS when asked) to the real control listener factory."""

        def build_session(ticket: Ticket) -> ServerSession:
            self.sessions.append(ServerSession(self.h.plane, self.h.clock, ticket))
            return self.sessions[-1]

        server = control_factory(
            server_tls_options(CERT_PEM, KEY_PEM), self.h.gate, build_session, self.h.clock
        )
        client: Any = Factory.forProtocol(lambda: peer)
        if tls:
            client = TLSMemoryBIOFactory(PinnedClientTLS(PIN), True, client, clock=self.h.clock)
        _, _, pump = connectedServerAndClient(
            lambda: server.buildProtocol(SOURCE),
            lambda: client.buildProtocol(None),
            greet=False,
            clock=self.h.clock,
        )
        self.h.settle(pump)
        return pump

    def wait(self, pump: IOPump, seconds: float) -> None:
        self.h.clock.advance(seconds)
        self.h.settle(pump)

    def assertNoErrorsLogged(self, logged: list[dict[str, Any]]) -> None:
        bad = [e for e in logged if e["log_level"] in (LogLevel.error, LogLevel.critical)]
        self.assertEqual(bad, [])


class DeadlineTests(_PortCase):
    def test_bare_tcp_is_closed_at_the_handshake_deadline(self) -> None:
        """A peer that connects and sends nothing is closed 10 s after the accept."""
        peer = Peer()
        pump = self.open(peer)
        self.wait(pump, 9.5)
        self.assertIsNone(peer.lost)
        self.assertEqual(len(self.h.gate), 1)
        self.wait(pump, 1)
        self.assertIsNotNone(peer.lost)
        self.assertEqual(self.recorder.refused, ["handshake_timeout"])
        self.assertEqual(len(self.h.gate), 0)

    def test_half_a_client_hello_is_closed_at_the_handshake_deadline(self) -> None:
        """Half of a real ClientHello, then silence: closed at the handshake deadline."""
        hello = client_hello()
        peer = Peer(hello[: len(hello) // 2])
        pump = self.open(peer)
        self.wait(pump, 10.1)
        self.assertIsNotNone(peer.lost)
        self.assertEqual(self.recorder.refused, ["handshake_timeout"])

    def test_tls_without_hello_is_closed_at_the_hello_deadline(self) -> None:
        """A finished handshake then no Hello: closed 10 s after the handshake."""
        peer = Peer()
        pump = self.open(peer, tls=True)
        self.wait(pump, 9.5)
        self.assertIsNone(peer.lost)
        self.wait(pump, 1)
        self.assertIsNotNone(peer.lost)
        self.assertEqual(self.recorder.refused, ["hello_timeout"])

    def test_half_an_amp_box_is_closed_at_the_hello_deadline(self) -> None:
        """Half a Hello box over TLS, then silence: closed at the Hello deadline."""
        whole = box(_command=b"Hello", _ask=b"1", token=b"x" * 40)
        peer = Peer(whole[: len(whole) // 2])
        pump = self.open(peer, tls=True)
        self.wait(pump, 10.1)
        self.assertIsNotNone(peer.lost)
        self.assertEqual(self.recorder.refused, ["hello_timeout"])

    def test_a_welcomed_edge_outlives_every_deadline(self) -> None:
        """An edge whose Hello was welcomed stays connected, with no gate timer running."""
        bundle = self.h.enroll()["bundle"]
        _, events, session, pump = self.h.edge(bundle.token)
        self.wait(pump, 120)
        self.assertEqual(events.lost, [])
        self.assertFalse(session.lost)
        self.assertEqual(len(self.h.gate), 0)
        self.assertEqual(self.recorder.refused, [])


class JunkTests(_PortCase):
    def test_box_without_a_command_is_a_counted_protocol_error(self) -> None:
        """
        A box AMP cannot dispatch closes the connection and counts
        protocol_error; nothing is logged at error or critical.
        """
        peer = Peer(box(junk=b"value"))
        with capturedLogs() as logged:
            pump = self.open(peer, tls=True)
        self.assertIsNotNone(peer.lost)
        self.assertEqual(self.recorder.refused, ["protocol_error"])
        self.assertNoErrorsLogged(logged)
        self.h.settle(pump)

    def test_an_answer_to_nothing_is_a_counted_protocol_error(self) -> None:
        """An answer box for a question never asked: closed, counted, no traceback."""
        peer = Peer(box(_answer=b"77", outcome=b"activated"))
        with capturedLogs() as logged:
            self.open(peer, tls=True)
        self.assertIsNotNone(peer.lost)
        self.assertEqual(self.recorder.refused, ["protocol_error"])
        self.assertNoErrorsLogged(logged)

    def test_hello_with_missing_arguments_is_answered_and_closed(self) -> None:
        """
        A Hello whose arguments do not parse is answered BAD_ARGUMENTS and
        closed, counted as protocol_error, with no traceback.
        """
        peer = Peer(box(_command=b"Hello", _ask=b"1", token=b"abc"))
        with capturedLogs() as logged:
            self.open(peer, tls=True)
        self.assertIn(b"BAD_ARGUMENTS", peer.received)
        self.assertIsNotNone(peer.lost)
        self.assertEqual(self.recorder.refused, ["protocol_error"])
        self.assertNoErrorsLogged(logged)

    def test_commands_that_want_no_answer_before_hello(self) -> None:
        """
        A StatsReport before Hello, or an unknown command, sent without
        _ask: closed and counted, no traceback.
        """
        for command in (b"StatsReport", b"NoSuchCommand"):
            peer = Peer(box(_command=command, sent_at_ms=b"1", stats=b"[]"))
            with capturedLogs() as logged:
                self.open(peer, tls=True)
            self.assertIsNotNone(peer.lost, command)
            self.assertNoErrorsLogged(logged)
        self.assertEqual(self.recorder.refused, ["protocol_error", "protocol_error"])

    def test_unknown_command_with_ask_is_answered(self) -> None:
        """An unknown command that asks for an answer gets UNHANDLED, as AMP says."""
        peer = Peer(box(_command=b"NoSuchCommand", _ask=b"5"))
        with capturedLogs() as logged:
            self.open(peer, tls=True)
        self.assertIn(b"UNHANDLED", peer.received)
        self.assertNoErrorsLogged(logged)

    def test_too_much_before_hello_is_closed(self) -> None:
        """More than 16 KiB before being welcomed: closed at once (oversized_hello)."""
        peer = Peer(box(_command=b"Hello", _ask=b"1", token=b"t" * 60000))
        self.open(peer, tls=True)
        self.assertIsNotNone(peer.lost)
        self.assertEqual(self.recorder.refused, ["oversized_hello"])

    def test_bare_connect_and_close_logs_nothing_at_info(self) -> None:
        """A stranger connecting and leaving is not worth a line at info or above."""
        peer = Peer()
        with capturedLogs() as logged:
            pump = self.open(peer)
            assert peer.transport is not None
            peer.transport.loseConnection()
            self.h.settle(pump)
        self.assertTrue(self.sessions[0].lost)
        self.assertEqual([e for e in logged if e["log_level"] != LogLevel.debug], [])


class NewerEdge(amp.AMP):
    """Says Hello itself; answers the replay that follows a Welcome."""

    @ReplayDone.responder
    def replay_done(self, count: int) -> dict[str, Any]:
        return {"removed": []}


class HelloTests(_PortCase):
    def test_malformed_fields_are_refused(self) -> None:
        """
        A Hello with an out-of-bounds field is refused as malformed_hello
        before any token lookup, counted, and the connection closed.
        """
        cases = [
            {"client_version": "1.0\x1b[2J"},
            {"client_version": "v" * 129},
            {"protocol_version": "1 .0"},
            {"features": ["tcp"] * 65},
            {"features": ["Not A Feature"]},
            {"token": "t" * 257},
        ]
        for fields in cases:
            client = amp.AMP()
            pump = self.open(client, tls=True)
            arguments = {
                "token": "x" * 43,
                "protocol_version": PROTOCOL_VERSION,
                "client_version": "1.0",
                "features": ["tcp"],
                **fields,
            }
            answers: list[Any] = []
            client.callRemote(Hello, **arguments).addBoth(answers.append)
            self.h.settle(pump)
            [failure] = answers
            self.assertIsInstance(failure, Failure, fields)
            self.assertEqual(str(failure.check(AuthFailed) and failure.value), "malformed_hello")
            self.assertTrue(self.sessions[-1].lost, fields)
        self.assertEqual(self.recorder.refused, ["malformed_hello"] * len(cases))

    def test_unknown_well_formed_features_are_kept(self) -> None:
        """A newer edge declaring features this server does not know is welcomed."""
        bundle = self.h.enroll()["bundle"]
        client = NewerEdge()
        pump = self.open(client, tls=True)
        d = client.callRemote(
            Hello,
            token=bundle.token,
            protocol_version=PROTOCOL_VERSION,
            client_version="9.9.9",
            features=["tcp", "teleport"],
        )
        self.h.settle(pump)
        self.assertEqual(self.successResultOf(d)["client_name"], "edge-01")
        view = self.h.successful(self.h.plane.get_client(bundle.client_id))
        self.assertEqual(view.features, ("tcp", "teleport"))


class EnrollmentThrottleTests(_PortCase):
    def enroll(self, code: str) -> Any:
        protocol = EnrollingProtocol(code)
        self.open(protocol, tls=True)
        return protocol.result

    def test_failed_codes_lock_the_source_and_are_logged_aggregated(self) -> None:
        """
        Five wrong codes from one source lock it out: a sixth attempt, even
        with a valid code, is refused (enrollment_rate_limited) without a
        store lookup; a minute later the valid code works.  Refusals are
        one control.refusals line per interval, not one line per attempt.
        """
        view = self.h.successful(self.h.plane.enroll_client("edge-01", None, 600))
        code = parse_enroll_uri(view.uri).code
        with capturedLogs() as logged:
            for n in range(5):
                failure = self.failureResultOf(self.enroll(f"wrong-{n}"), EnrollmentRefused)
                self.assertEqual(str(failure.value), "enrollment_invalid")
            failure = self.failureResultOf(self.enroll(code), EnrollmentRefused)
            self.assertEqual(str(failure.value), "enrollment_rate_limited")
            self.h.clock.advance(REPORT_INTERVAL_SECS)
        lines = [e for e in logged if e.get("event") == "control.refusals"]
        self.assertEqual(
            [line["counts"] for line in lines],
            [{"enrollment_invalid": 5, "enrollment_rate_limited": 1}],
        )
        self.assertFalse([e for e in logged if e.get("event") == "client.enrollment_refused"])
        self.h.clock.advance(60)
        self.assertEqual(self.successResultOf(self.enroll(code))["client_name"], "edge-01")


class StatsReportTests(_PortCase):
    """Malformed reports from an authenticated edge, over a real AMP connection."""

    def setUp(self) -> None:
        super().setUp()
        bundle = self.h.enroll()["bundle"]
        self.client_id = bundle.client_id
        self.edge, _, self.session, self.pump = self.h.edge(bundle.token)
        self.rule_id = self.h.successful(self.h.push(self.client_id, tcp_rule(free_port()))).rule.id
        self.api = ApiHarness(self, self.h.plane)

    def report(self, stats: Any, sent_at_ms: int = 1000) -> None:
        self.edge.callRemote(StatsReport, sent_at_ms=sent_at_ms, stats=stats)
        self.h.settle(self.pump)

    def stats(self) -> dict[str, Any]:
        status, body, _ = self.api.request("GET", f"/v1/rules/{self.rule_id}/stats?per_port=1")
        self.assertEqual(status, 200, body)
        assert isinstance(body, dict)
        return body

    def test_malformed_reports_are_ignored_and_every_route_answers(self) -> None:
        """
        Each malformed report is dropped whole (the last good one stands),
        counted, logged once per interval; the rule stats route and the client
        list still answer 200, the metrics show the last good report, and the
        edge stays connected.
        """
        good = {"rule_id": self.rule_id, "bytes_in": 5, "ports": {"443": {"bytes_in": 5}}}
        self.report([good])
        malformed: list[Any] = [
            {"not": "a list"},
            [{"rule_id": self.rule_id, "bytes_in": -1}],
            [{"rule_id": self.rule_id, "bytes_in": "5"}],
            [{"rule_id": self.rule_id, "bytes_in": 2**70}],
            [{"rule_id": self.rule_id, "throttle_seconds_in": float("nan")}],
            [{"rule_id": self.rule_id, "ports": {"http": {"bytes_in": 1}}}],
            [{"rule_id": self.rule_id, "ports": {"0": {"bytes_in": 1}}}],
            [{"rule_id": self.rule_id, "ports": {"443": [1, 2]}}],
            [{"rule_id": self.rule_id, "per_target": [{"port": 70000}]}],
            [{"rule_id": self.rule_id, "per_target": [{"health": "sideways"}]}],
            [{"rule_id": self.rule_id, "per_target": [{}] * 9}],
            [{"rule_id": "1"}],
            ["entry"],
            [{"rule_id": self.rule_id}] * 4097,
        ]
        with capturedLogs() as logged:
            for stats in malformed:
                self.report(stats)
            self.report([good], sent_at_ms=-5)
            self.h.clock.advance(REPORT_INTERVAL_SECS)
        body = self.stats()
        self.assertEqual((body["bytes_in"], body["sent_at_ms"]), (5, 1000))
        self.assertEqual(body["per_port"], [{"port": 443, "bytes_in": 5}])
        self.assertEqual(self.recorder.ignored, len(malformed) + 1)
        [line] = [e for e in logged if e.get("event") == "client.stats_report_invalid"]
        self.assertEqual(line["total"], len(malformed) + 1)
        self.assertNoErrorsLogged(logged)
        status, clients, _ = self.api.request("GET", "/v1/clients")
        self.assertEqual((status, clients[0]["state"]), (200, "connected"))
        scrape = ServerMetrics(self.h.plane).render().decode()
        self.assertIn(
            f'portunus_rule_bytes_in_total{{client="edge-01",owner="",rule="{self.rule_id}"}} 5.0',
            scrape,
        )
        self.assertFalse(self.session.lost)

    def test_unknown_keys_are_dropped_known_ones_kept(self) -> None:
        """A newer edge's extra keys are not stored; the counters this server knows are."""
        self.report(
            [
                {
                    "rule_id": self.rule_id,
                    "bytes_out": 9,
                    "quantum_flux": {"deep": ["x"] * 10},
                    "per_target": [{"host": "a", "port": 80, "health": "healthy", "extra": 1}],
                }
            ]
        )
        body = self.stats()
        self.assertEqual(body["bytes_out"], 9)
        self.assertNotIn("quantum_flux", body)
        self.assertEqual(body["per_target"], [{"host": "a", "port": 80, "health": "healthy"}])
        json.dumps(body)
