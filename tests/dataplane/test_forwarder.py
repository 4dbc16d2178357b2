"""
Forwarder lifecycle on a memory reactor: install, drain deadline, errors.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane import Forwarder
from portunus.dataplane.listeners import classify_bind_error
from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, Rule, Target
from tests._fakes import FakeTCPTransport
from tests._net import LOOPBACK, free_port, free_port_range


def rule(name: str = "web", protocol: Protocol = Protocol.TCP, ports: int = 1) -> Rule:
    start = free_port_range(ports) if ports > 1 else free_port()
    return Rule(
        name=name,
        protocol=protocol,
        listen=PortRange(start, start + ports - 1),
        targets=(Target("10.0.0.5", PortRange(9000, 9000 + ports - 1)),),
        listen_addresses=(LOOPBACK,),
    )


class ForwarderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.forwarder = Forwarder(self.reactor)

    def accept(self, index: int = 0) -> tuple[object, FakeTCPTransport]:
        _, _, factory = self.reactor.adoptedPorts[index]
        leg = factory.buildProtocol(None)
        transport = FakeTCPTransport()
        leg.makeConnection(transport)
        return leg, transport

    def test_install_adopts_one_listener_per_port(self) -> None:
        """A range rule serves every one of its ports from adopted sockets."""
        r = rule(ports=3)
        self.forwarder.install(r)
        self.assertEqual(len(self.reactor.adoptedPorts), 3)
        self.assertEqual([f.listen_port for _, _, f in self.reactor.adoptedPorts], list(r.listen))
        self.assertEqual(self.forwarder.rules, (r,))

    def test_duplicate_install_refused(self) -> None:
        """Installing the same rule twice is rule_exists and binds nothing more."""
        r = rule()
        self.forwarder.install(r)
        error = self.assertRaises(PortunusError, self.forwarder.install, r)
        self.assertEqual(error.code, "rule_exists")
        self.assertEqual(len(self.reactor.adoptedPorts), 1)

    def test_unsupported_protocol_refused(self) -> None:
        """A protocol the Forwarder was not built for is refused with protocol_unsupported."""
        forwarder = Forwarder(self.reactor, supported_protocols=frozenset({Protocol.TCP}))
        error = self.assertRaises(PortunusError, forwarder.install, rule(protocol=Protocol.UDP))
        self.assertEqual(error.code, "protocol_unsupported")
        self.assertEqual(self.reactor.adoptedPorts, [])

    def test_remove_unknown_rule(self) -> None:
        """Removing a rule that is not installed is rule_not_found."""
        error = self.assertRaises(PortunusError, self.forwarder.remove, 42)
        self.assertEqual(error.code, "rule_not_found")

    def test_idle_rule_removal_completes_at_once(self) -> None:
        """With no live connection, removal needs no drain wait."""
        r = rule()
        self.forwarder.install(r)
        self.assertEqual(self.successResultOf(self.forwarder.remove(r.id)), 0)
        self.assertEqual(self.forwarder.rules, ())

    def test_drain_deadline_cuts_remaining_connections(self) -> None:
        """Connections still open when the drain deadline passes are cut."""
        r = rule()
        self.forwarder.install(r)
        _, client = self.accept()
        d = self.forwarder.remove(r.id, drain_timeout=30)
        self.reactor.advance(29)
        self.assertNoResult(d)
        self.reactor.advance(1)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertTrue(client.disconnected)

    def test_drain_finishes_when_last_connection_closes(self) -> None:
        """Removal fires as soon as the last in-flight connection ends."""
        r = rule()
        self.forwarder.install(r)
        leg, _ = self.accept()
        _, _, target_factory, _, _ = self.reactor.tcpClients[0]
        from twisted.internet.error import ConnectionDone, ConnectionRefusedError
        from twisted.python.failure import Failure

        d = self.forwarder.remove(r.id, drain_timeout=30)
        self.assertNoResult(d)
        target_factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertNoResult(d)
        leg.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stats_follow_rules(self) -> None:
        """Stats are keyed by rule id and vanish with the rule."""
        r = rule()
        self.forwarder.install(r)
        self.accept()
        self.assertEqual(self.forwarder.stats()[r.id].active_connections, 1)
        self.forwarder.remove(r.id, drain_timeout=0)
        self.reactor.advance(0)
        self.assertEqual(self.forwarder.stats(), {})


class ClassifyBindErrorTests(SynchronousTestCase):
    def test_codes(self) -> None:
        """Each bind errno maps to the stable code operators see."""
        cases = {
            errno.EADDRINUSE: "port_in_use",
            errno.EACCES: "permission_denied",
            errno.EPERM: "permission_denied",
            errno.EADDRNOTAVAIL: "bind_failed",
        }
        for number, code in cases.items():
            self.assertEqual(classify_bind_error(OSError(number, "x")), code)

    def test_v6only_separates_families(self) -> None:
        """The IPv6 wildcard listener is V6ONLY so IPv4 gets its own socket."""
        from portunus.dataplane.listeners import bind_stream_sockets

        if not socket.has_ipv6:
            self.skipTest("no IPv6 on this host")
        port = free_port()
        try:
            bound = bind_stream_sockets(("::1",), [port])
        except OSError:
            self.skipTest("::1 not configured")
        try:
            v6 = bound[0].sock
            self.assertEqual(v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), 1)
            self.assertEqual(v6.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 1)
        finally:
            for b in bound:
                b.sock.close()
