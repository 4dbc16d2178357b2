"""
Server and edge joined in memory over pinned TLS (iosim, one Clock):
enrollment, Hello, pushes and their outcomes, ack timeout, replay on
reconnect, revoke, pin mismatch, the reconnect backoff.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from portunus.client.agent import EdgeAgent
from portunus.client.enroll import EnrollingProtocol, bundle_for
from portunus.client.service import full_jitter_backoff
from portunus.client.session import ClientSession
from portunus.control.commands import EnrollmentRefused
from portunus.control.enrollment import parse_enroll_uri
from portunus.control.tls import (
    PinMismatch,
    PinnedClientTLS,
    fingerprint_sha256,
    generate_self_signed,
    server_tls_options,
)
from portunus.dataplane import Forwarder
from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.server.controlplane import ControlPlane, PlaneSettings
from portunus.server.gate import Gate, GateLimits, Ticket
from portunus.server.sessions import ServerSession, control_factory
from portunus.server.store import open_store, run_synchronously
from tests._net import LOOPBACK, free_port

CERT_PEM, KEY_PEM = generate_self_signed("localhost")
OTHER_CERT_PEM, OTHER_KEY_PEM = generate_self_signed("localhost")


def _fingerprint(pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(pem)
    return fingerprint_sha256(cert.public_bytes(serialization.Encoding.DER))


PIN = _fingerprint(CERT_PEM)


def tcp_rule(port: int, name: str = "web") -> Rule:
    return Rule(
        name=name,
        protocol=Protocol.TCP,
        listen=PortRange.single(port),
        targets=(Target("10.0.0.5", PortRange.single(8080)),),
        listen_addresses=(LOOPBACK,),
    )


class Events:
    """Records what a ClientSession tells its owner."""

    def __init__(self) -> None:
        self.welcomed: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.lost: list[Failure] = []

    def session_welcomed(self, session: ClientSession, welcome: dict[str, Any]) -> None:
        self.welcomed.append(welcome)

    def session_refused(self, session: ClientSession, reason: str) -> None:
        self.refused.append(reason)

    def session_lost(self, session: ClientSession, reason: Failure) -> None:
        self.lost.append(reason)


class Harness:
    """One server (real store, synchronous) and the edges that connect to it."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.clock = Clock()
        self.store = open_store(case.mktemp(), self.clock, runner=run_synchronously)
        case.addCleanup(self.store.close)
        self.plane = ControlPlane(
            self.store,
            PlaneSettings(
                advertised_endpoint="127.0.0.1:7443", cert_fingerprint=PIN, control_port=7443
            ),
            self.clock,
        )
        self.gate = Gate(GateLimits(), self.clock)
        self.edge_reactor = MemoryReactorClock()
        self.agent = EdgeAgent(Forwarder(self.edge_reactor), drain_timeout=1.0)
        case.addCleanup(self.agent.stop)

    def connect(self, client_protocol: Any, pin: str = PIN) -> tuple[ServerSession, IOPump]:
        sessions: list[ServerSession] = []

        def build_session(ticket: Ticket) -> ServerSession:
            sessions.append(ServerSession(self.plane, self.clock, ticket))
            return sessions[-1]

        server_factory = control_factory(
            server_tls_options(CERT_PEM, KEY_PEM), self.gate, build_session, self.clock
        )
        client_factory = TLSMemoryBIOFactory(
            PinnedClientTLS(pin),
            True,
            Factory.forProtocol(lambda: client_protocol),
            clock=self.clock,
        )
        _, _, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 50000)),
            lambda: client_factory.buildProtocol(None),
            greet=False,
            clock=self.clock,
        )
        self.settle(pump)
        self.pump = pump
        return sessions[0], pump

    def settle(self, pump: IOPump) -> None:
        for _ in range(6):
            pump.flush()
            self.clock.advance(0.01)
        pump.flush()

    def push(self, client_id: str, rule: Rule) -> Any:
        """Push, let the edge answer, and return the Deferred."""
        d = ensureDeferred(self.plane.push_rule(client_id, rule, 2.0))
        self.settle(self.pump)
        return d

    def enroll(self, name: str = "edge-01") -> dict[str, Any]:
        view = self.plane.enroll_client(name, None, 600)
        uri = parse_enroll_uri(self.successful(view).uri)
        protocol = EnrollingProtocol(uri.code)
        self.connect(protocol)
        answer = self.successful(protocol.result)
        return {"uri": uri, "answer": answer, "bundle": bundle_for(uri, answer)}

    def edge(
        self, token: str, pin: str = PIN
    ) -> tuple[ClientSession, Events, ServerSession, IOPump]:
        events = Events()
        session = ClientSession(self.agent, token, self.clock, events)
        server_session, pump = self.connect(session, pin)
        return session, events, server_session, pump

    @staticmethod
    def successful(d: Any) -> Any:
        results: list[Any] = []
        ensureDeferred(d).addBoth(results.append)
        assert results, "Deferred has not fired"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]


class EnrollmentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_code_redeemed_for_a_bundle(self) -> None:
        """The bundle names the client, the pinned certificate and a token."""
        enrolled = self.h.enroll()
        bundle = enrolled["bundle"]
        self.assertEqual(bundle.client_name, "edge-01")
        self.assertEqual(bundle.server_cert_sha256, PIN)
        self.assertEqual(bundle.server_endpoint, "127.0.0.1:7443")
        self.assertEqual(len(bundle.token), 43)

    def test_code_works_once(self) -> None:
        enrolled = self.h.enroll()
        protocol = EnrollingProtocol(enrolled["uri"].code)
        self.h.connect(protocol)
        failure = self.failureResultOf(protocol.result, EnrollmentRefused)
        self.assertEqual(str(failure.value), "enrollment_used")

    def test_expired_code_refused(self) -> None:
        view = self.h.successful(self.h.plane.enroll_client("edge-01", None, 60))
        self.h.clock.advance(61)
        protocol = EnrollingProtocol(parse_enroll_uri(view.uri).code)
        self.h.connect(protocol)
        failure = self.failureResultOf(protocol.result, EnrollmentRefused)
        self.assertEqual(str(failure.value), "enrollment_expired")

    def test_superseded_code_refused(self) -> None:
        first = self.h.successful(self.h.plane.enroll_client("edge-01", None, 600))
        self.h.successful(self.h.plane.reenroll_client(first.client_id, None, 600))
        protocol = EnrollingProtocol(parse_enroll_uri(first.uri).code)
        self.h.connect(protocol)
        self.failureResultOf(protocol.result, EnrollmentRefused)

    def test_bad_input_refused(self) -> None:
        for call, code in [
            (lambda: self.h.plane.enroll_client("", None, 600), "invalid_name"),
            (lambda: self.h.plane.enroll_client("e", None, 0), "invalid_enrollment_ttl"),
            (lambda: self.h.plane.enroll_client("e", "h:1", 600), "invalid_client_address"),
        ]:
            failure = self.failureResultOf(ensureDeferred(call()), PortunusError)
            self.assertEqual(failure.value.code, code)


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.bundle = self.h.enroll()["bundle"]

    def test_hello_registers_and_welcome_arrives(self) -> None:
        _, events, server_session, _ = self.h.edge(self.bundle.token)
        self.assertEqual(len(events.welcomed), 1)
        self.assertEqual(events.welcomed[0]["client_name"], "edge-01")
        self.assertIs(self.h.plane.sessions.get(self.bundle.client_id), server_session)
        view = self.h.successful(self.h.plane.get_client(self.bundle.client_id))
        self.assertEqual(view.state, "connected")
        self.assertIn("udp", view.features)

    def test_unknown_token_is_terminal(self) -> None:
        _, events, _, _ = self.h.edge("not-a-token")
        self.assertEqual(events.refused, ["token_not_found"])
        self.assertEqual(len(self.h.plane.sessions), 0)
        self.assertEqual(len(events.lost), 1)

    def test_pin_mismatch_sends_nothing(self) -> None:
        """A wrong certificate fails the handshake before Hello (the token) goes out."""
        _, events, server_session, _ = self.h.edge(
            self.bundle.token, pin=_fingerprint(OTHER_CERT_PEM)
        )
        self.assertEqual(events.welcomed, [])
        self.assertIsNone(server_session.client_id)
        self.assertEqual(len(self.h.plane.sessions), 0)
        self.assertTrue(events.lost[0].check(PinMismatch))

    def test_push_activates_on_the_edge(self) -> None:
        self.h.edge(self.bundle.token)
        rule = tcp_rule(free_port())
        view = self.h.successful(self.h.push(self.bundle.client_id, rule))
        self.assertEqual(view.state, "active")
        self.assertEqual([r.listen for r in self.h.agent.forwarder.rules], [rule.listen])
        self.assertEqual(self.h.agent.forwarder.rules[0].id, view.rule.id)

    def test_bind_failure_is_activation_failed_and_blocks_the_port(self) -> None:
        self.h.edge(self.bundle.token)
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind((LOOPBACK, 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        failure = self.failureResultOf(
            self.h.push(self.bundle.client_id, tcp_rule(port)), PortunusError
        )
        self.assertEqual(failure.value.code, "activation_failed")
        self.assertEqual(failure.value.fields["reason"], "port_in_use")
        [stored] = self.h.successful(self.h.plane.list_rules(None))
        self.assertEqual((stored.state, stored.state_reason), ("failed", "port_in_use"))
        again = self.failureResultOf(
            self.h.push(self.bundle.client_id, tcp_rule(port, "again")),
            PortunusError,
        )
        self.assertEqual(again.value.code, "port_in_use")

    def test_ack_timeout_leaves_pending_and_a_late_ack_lands(self) -> None:
        _, _, _, pump = self.h.edge(self.bundle.token)
        d = ensureDeferred(
            self.h.plane.push_rule(self.bundle.client_id, tcp_rule(free_port()), 2.0)
        )
        self.h.clock.advance(2.0)  # nothing pumped: no answer yet
        self.assertEqual(self.failureResultOf(d, PortunusError).value.code, "ack_timeout")
        [stored] = self.h.successful(self.h.plane.list_rules(None))
        self.assertEqual(stored.state, "pending")
        self.h.settle(pump)
        [stored] = self.h.successful(self.h.plane.list_rules(None))
        self.assertEqual(stored.state, "active")

    def test_not_connected_refused(self) -> None:
        failure = self.failureResultOf(
            ensureDeferred(
                self.h.plane.push_rule(self.bundle.client_id, tcp_rule(free_port()), 2.0)
            ),
            PortunusError,
        )
        self.assertEqual(failure.value.code, "client_not_connected")
        self.assertEqual(self.h.successful(self.h.plane.list_rules(None)), [])

    def test_capability_gate(self) -> None:
        _, _, server_session, _ = self.h.edge(self.bundle.token)
        server_session.features = frozenset({"tcp"})
        udp = Rule(
            name="dns",
            protocol=Protocol.UDP,
            listen=PortRange.single(free_port(socket.SOCK_DGRAM)),
            targets=(Target("10.0.0.5", PortRange.single(53)),),
        )
        failure = self.failureResultOf(
            ensureDeferred(self.h.plane.push_rule(self.bundle.client_id, udp, 2.0)), PortunusError
        )
        self.assertEqual(failure.value.code, "unsupported_protocol")

    def test_reconnect_replays_active_rules_in_order_and_drops_stale(self) -> None:
        _, _, server_session, pump = self.h.edge(self.bundle.token)
        first = self.h.successful(self.h.push(self.bundle.client_id, tcp_rule(free_port(), "a")))
        second = self.h.successful(self.h.push(self.bundle.client_id, tcp_rule(free_port(), "b")))
        server_session.transport.loseConnection()
        self.h.settle(pump)
        self.assertEqual(len(self.h.plane.sessions), 0)
        # The edge keeps forwarding while disconnected.
        self.assertEqual(len(self.h.agent.forwarder.rules), 2)
        # Removed while the link was down: the replay must drop it on the edge.
        self.h.successful(self.h.plane.remove_rule(second.rule.id))
        pushed: list[int] = []
        original = ServerSession.push_rule

        def recording(session: ServerSession, rule: Rule, replay: bool = False) -> Any:
            pushed.append(rule.id)
            return original(session, rule, replay)

        self.patch(ServerSession, "push_rule", recording)
        self.h.edge(self.bundle.token)
        self.assertEqual(pushed, [first.rule.id])
        self.assertEqual([r.id for r in self.h.agent.forwarder.rules], [first.rule.id])

    def test_revoke_disconnects_and_refuses_the_token(self) -> None:
        _, events, _, pump = self.h.edge(self.bundle.token)
        self.h.successful(self.h.plane.revoke_client(self.bundle.client_id))
        self.h.settle(pump)
        self.assertEqual(len(events.lost), 1)
        self.assertEqual(len(self.h.plane.sessions), 0)
        _, again, _, _ = self.h.edge(self.bundle.token)
        self.assertEqual(again.refused, ["token_revoked"])

    def test_stats_reports_reach_rule_stats(self) -> None:
        session, _, _, pump = self.h.edge(self.bundle.token)
        view = self.h.successful(self.h.push(self.bundle.client_id, tcp_rule(free_port())))
        session.send_stats()
        self.h.settle(pump)
        stats = self.h.successful(self.h.plane.rule_stats(view.rule.id))
        self.assertEqual(stats["rule_id"], view.rule.id)
        self.assertEqual(stats["bytes_in"], 0)
        self.assertIsNotNone(stats["updated_at"])


class BackoffTests(SynchronousTestCase):
    def test_ceiling_doubles_to_the_maximum(self) -> None:
        policy = full_jitter_backoff(0.5, 30.0, rng=lambda: 1.0)
        self.assertEqual([policy(n) for n in range(8)], [0.5, 1, 2, 4, 8, 16, 30, 30])

    def test_jitter_is_uniform_below_the_ceiling(self) -> None:
        policy = full_jitter_backoff(0.5, 30.0, rng=lambda: 0.25)
        self.assertEqual(policy(3), 1.0)
        self.assertEqual(policy(1000), 7.5)
