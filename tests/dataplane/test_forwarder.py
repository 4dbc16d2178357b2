"""
Forwarder lifecycle on a memory reactor: install, drain deadline, errors,
and replacing a rule on its own sockets.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from portunus.client.agent import ACTIVATED, FAILED, EdgeAgent
from portunus.dataplane import BindError, Forwarder
from portunus.dataplane.listeners import (
    BoundSocket,
    InheritedSockets,
    bind_datagram_sockets,
    bind_stream_sockets,
    classify_bind_error,
)
from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.rulejson import rule_to_dict
from tests._fakes import FakeTCPTransport
from tests._net import LOOPBACK, free_port, free_port_range, inode, port_is_free


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


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class InheritedSocketsTests(SynchronousTestCase):
    """The sockets a replaced rule hands on, and binding with them."""

    def listening(self, port: int) -> BoundSocket:
        [bound] = bind_stream_sockets((LOOPBACK,), [port])
        self.addCleanup(bound.sock.close)
        return bound

    def test_take_hands_each_pair_over_once(self) -> None:
        """A socket is found by (address, port, kind), once; others are not there."""
        original = self.listening(free_port())
        inherited = InheritedSockets.duplicate([original])
        self.addCleanup(inherited.close)
        port = original.port
        self.assertIsNone(inherited.take(LOOPBACK, port, socket.SOCK_DGRAM))
        self.assertIsNone(inherited.take(LOOPBACK, port + 1, socket.SOCK_STREAM))
        self.assertIsNone(inherited.take("127.0.0.2", port, socket.SOCK_STREAM))
        taken = inherited.take(LOOPBACK, port, socket.SOCK_STREAM)
        assert taken is not None
        self.addCleanup(taken.close)
        self.assertNotEqual(taken.fileno(), original.sock.fileno())
        self.assertEqual(inode(taken.fileno()), inode(original.sock.fileno()))
        self.assertIsNone(inherited.take(LOOPBACK, port, socket.SOCK_STREAM))
        self.assertEqual(len(inherited), 0)

    def test_ipv6_addresses_match_however_written(self) -> None:
        """C{::1} and C{0:0::1} are the same listen address."""
        try:
            [bound] = bind_stream_sockets(("::1",), [free_port()])
        except PortunusError:
            self.skipTest("::1 not configured")
        inherited = InheritedSockets([bound])
        self.addCleanup(inherited.close)
        taken = inherited.take("0:0::1", bound.port, socket.SOCK_STREAM)
        self.assertIs(taken, bound.sock)

    def test_bind_reuses_kept_pairs_and_binds_the_rest(self) -> None:
        """
        With the old socket still listening, the pair it covers is reused
        (no port_in_use) and only the other pair is bound.
        """
        start = free_port_range(2)
        original = self.listening(start)
        inherited = InheritedSockets.duplicate([original])
        bound = bind_stream_sockets((LOOPBACK,), [start, start + 1], inherited)
        for b in bound:
            self.addCleanup(b.sock.close)
        self.assertEqual([b.port for b in bound], [start, start + 1])
        self.assertEqual(inode(bound[0].sock.fileno()), inode(original.sock.fileno()))
        self.assertEqual(bound[1].sock.getsockname(), (LOOPBACK, start + 1))
        self.assertEqual(len(inherited), 0)

    def test_udp_pairs_are_reused_too(self) -> None:
        [original] = bind_datagram_sockets((LOOPBACK,), [free_port(socket.SOCK_DGRAM)])
        self.addCleanup(original.sock.close)
        inherited = InheritedSockets.duplicate([original])
        [bound] = bind_datagram_sockets((LOOPBACK,), [original.port], inherited=inherited)
        self.addCleanup(bound.sock.close)
        self.assertEqual(inode(bound.sock.fileno()), inode(original.sock.fileno()))

    def test_a_failed_bind_closes_what_it_took(self) -> None:
        """
        All or nothing: when another pair is in use, the inherited socket
        taken is closed with the rest, so the old port is released.
        """
        start = free_port_range(2)
        original = self.listening(start)
        blocker = self.listening(start + 1)
        inherited = InheritedSockets.duplicate([original])
        error = self.assertRaises(
            BindError, bind_stream_sockets, (LOOPBACK,), [start, start + 1], inherited
        )
        self.assertEqual((error.code, error.port), ("port_in_use", start + 1))
        self.assertEqual(len(inherited), 0)
        original.sock.close()
        blocker.sock.close()
        self.assertTrue(port_is_free(start))

    def test_close_releases_what_was_not_taken(self) -> None:
        original = self.listening(free_port())
        inherited = InheritedSockets.duplicate([original])
        original.sock.close()
        self.assertFalse(port_is_free(original.port))
        inherited.close()
        self.assertTrue(port_is_free(original.port))


class _HeldPort:
    """
    A memory reactor's listening port that, like a real one, holds its own
    descriptor and closes it one turn after C{stopListening}.
    """

    def __init__(self, clock: MemoryReactorClock, fileno: int) -> None:
        self._clock = clock
        self.sock = socket.socket(fileno=os.dup(fileno))

    def fileno(self) -> int:
        return self.sock.fileno()

    def stopListening(self) -> None:
        self._clock.callLater(0, self.sock.close)


class HeldPortsReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.held: list[_HeldPort] = []

    def _hold(self, fileno: int) -> _HeldPort:
        port = _HeldPort(self, fileno)
        self.held.append(port)
        return port

    def adoptStreamPort(self, fileno: int, addressFamily: Any, factory: Any) -> _HeldPort:
        super().adoptStreamPort(fileno, addressFamily, factory)
        return self._hold(fileno)

    def adoptDatagramPort(
        self, fileno: int, addressFamily: Any, protocol: Any, maxPacketSize: int = 8192
    ) -> _HeldPort:
        super().adoptDatagramPort(fileno, addressFamily, protocol, maxPacketSize)
        return self._hold(fileno)


class ReplaceTests(SynchronousTestCase):
    """
    An edge replacing a rule with a new version of itself: the new version
    listens on the old one's sockets where their pairs match, although the
    old ones are still open (as on a real reactor, for one more turn).
    """

    def setUp(self) -> None:
        self.reactor = HeldPortsReactor()
        self.forwarder = Forwarder(self.reactor)
        self.agent = EdgeAgent(self.forwarder, drain_timeout=1.0)
        self.agent.begin_session()
        self.addCleanup(self._close)

    def _close(self) -> None:
        self.agent.stop()
        self.reactor.advance(2)
        for port in self.reactor.held:
            port.sock.close()

    def rule(
        self,
        listen: PortRange,
        target: str = "10.0.0.5",
        protocol: Protocol = Protocol.TCP,
        rule_id: int = 1,
        sni: str | None = None,
    ) -> Rule:
        return Rule(
            id=rule_id,
            name=f"rule-{rule_id}",
            protocol=protocol,
            listen=listen,
            targets=(Target(target, PortRange(9000, 9000 + len(listen) - 1)),),
            listen_addresses=(LOOPBACK,),
            sni_pattern=sni,
        )

    def push(self, rule: Rule) -> tuple[str, str | None]:
        return self.agent.push(rule_to_dict(rule))

    def inodes(self, first: int, last: int | None = None) -> list[int]:
        return [inode(p.fileno()) for p in self.reactor.held[first:last]]

    def test_tcp_rule_keeps_its_socket(self) -> None:
        """
        The new version is adopted on the old version's socket (activated,
        not port_in_use); the old descriptor closes a turn later; the port
        closes only when the rule goes; nothing leaks.
        """
        port = PortRange.single(free_port())
        before = open_fds()
        self.assertEqual(self.push(self.rule(port)), (ACTIVATED, None))
        self.assertEqual(self.push(self.rule(port, "10.0.0.6")), (ACTIVATED, None))
        old, new = self.reactor.held
        self.assertEqual(inode(new.fileno()), inode(old.fileno()))
        self.assertEqual(self.forwarder.rules[0].targets[0].host, "10.0.0.6")
        self.reactor.advance(0)
        self.assertEqual(old.sock.fileno(), -1)
        self.assertFalse(port_is_free(port.start))
        self.agent.remove(1)
        self.reactor.advance(2)
        self.assertTrue(port_is_free(port.start))
        self.assertEqual(open_fds(), before)

    def test_only_the_pairs_still_used_are_kept(self) -> None:
        """
        A range moved by one port: the two ports both versions listen on
        keep their sockets, the new one is bound, the dropped one closes.
        """
        start = free_port_range(4)
        self.push(self.rule(PortRange(start, start + 2)))
        self.assertEqual(self.push(self.rule(PortRange(start + 1, start + 3))), (ACTIVATED, None))
        self.assertEqual(self.inodes(3), [*self.inodes(1, 3), self.inodes(5)[0]])
        self.assertNotIn(self.inodes(5)[0], self.inodes(0, 3))
        self.reactor.advance(0)
        self.assertTrue(port_is_free(start))
        self.assertFalse(port_is_free(start + 3))

    def test_udp_rule_keeps_its_socket(self) -> None:
        port = PortRange.single(free_port(socket.SOCK_DGRAM))
        self.push(self.rule(port, protocol=Protocol.UDP))
        changed = self.rule(port, "10.0.0.6", Protocol.UDP)
        self.assertEqual(self.push(changed), (ACTIVATED, None))
        old, new = self.reactor.held
        self.assertEqual(inode(new.fileno()), inode(old.fileno()))

    def test_a_new_protocol_binds_anew_and_closes_the_old_socket(self) -> None:
        port = free_port()
        self.push(self.rule(PortRange.single(port)))
        changed = self.rule(PortRange.single(port), protocol=Protocol.UDP)
        self.assertEqual(self.push(changed), (ACTIVATED, None))
        _, new = self.reactor.held
        self.assertEqual(new.sock.type, socket.SOCK_DGRAM)
        self.reactor.advance(0)
        self.assertTrue(port_is_free(port))

    def test_only_sni_rule_of_a_port_keeps_its_listener(self) -> None:
        """Replacing the only SNI rule of a port hands the port's listener on."""
        port = PortRange.single(free_port())
        self.push(self.rule(port, sni="a.example"))
        self.assertEqual(self.push(self.rule(port, "10.0.0.6", sni="a.example")), (ACTIVATED, None))
        old, new = self.reactor.held
        self.assertEqual(inode(new.fileno()), inode(old.fileno()))
        self.assertEqual(self.forwarder.rules[0].targets[0].host, "10.0.0.6")

    def test_one_of_several_sni_rules_binds_nothing(self) -> None:
        """
        Replacing one SNI rule of a shared port adopts nothing new, and
        what it inherited is released: the port closes with its last rule.
        """
        port = PortRange.single(free_port())
        self.push(self.rule(port, sni="a.example"))
        self.push(self.rule(port, rule_id=2, sni="b.example"))
        self.assertEqual(self.push(self.rule(port, "10.0.0.6", sni="a.example")), (ACTIVATED, None))
        self.assertEqual(len(self.reactor.held), 1)
        self.assertEqual(sorted(r.id for r in self.forwarder.rules), [1, 2])
        self.agent.remove(1)
        self.agent.remove(2)
        self.reactor.advance(2)
        self.assertTrue(port_is_free(port.start))

    def test_a_listener_other_sni_rules_share_is_not_handed_on(self) -> None:
        """
        One of two SNI rules of a port replaced by a plain rule on that
        port: the listener stays with the other SNI rule, so the plain rule
        conflicts with it (port_in_use) rather than sharing its socket.
        """
        port = PortRange.single(free_port())
        self.push(self.rule(port, sni="a.example"))
        self.push(self.rule(port, rule_id=2, sni="b.example"))
        self.assertEqual(self.push(self.rule(port)), (FAILED, "port_in_use"))
        self.assertEqual([r.id for r in self.forwarder.rules], [2])
        self.assertEqual(len(self.reactor.held), 1)

    def test_a_real_conflict_is_still_port_in_use(self) -> None:
        """
        A new version that also needs a port somebody else holds fails
        with port_in_use naming it; the old version is removed and its
        port released, as before.
        """
        start = free_port_range(2)
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind((LOOPBACK, start + 1))
        blocker.listen(1)
        self.push(self.rule(PortRange.single(start)))
        outcome = self.push(self.rule(PortRange(start, start + 1)))
        self.assertEqual(outcome, (FAILED, f"port_in_use:{start + 1}"))
        self.assertEqual((self.forwarder.rules, self.agent.rules), ((), {}))
        self.reactor.advance(0)
        self.assertTrue(port_is_free(start))

    def test_inherit_without_descriptors(self) -> None:
        """
        Nothing is inherited from a rule not installed, nor from ports
        without a descriptor (a plain memory reactor's).
        """
        self.assertEqual(len(self.forwarder.inherit(7)), 0)
        forwarder = Forwarder(MemoryReactorClock())
        forwarder.install(self.rule(PortRange.single(free_port())))
        self.assertEqual(len(forwarder.inherit(1)), 0)
