"""
The TCP relay's state machine, on a memory reactor.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.runtime import RuleRuntime
from portunus.dataplane.tcp import CONNECT_TIMEOUT_SECS, InboundFactory, RelayState, TcpRelay
from portunus.model import PortRange, Protocol, Rule, Target
from tests._fakes import FakeTCPTransport


def make_rule(*targets: Target, listen: PortRange | None = None) -> Rule:
    return Rule(
        name="web",
        protocol=Protocol.TCP,
        listen=listen or PortRange.single(8080),
        targets=targets or (Target("10.0.0.5", PortRange.single(80)),),
    )


class RelayHarness:
    """One inbound factory on a memory reactor, and the relays it made."""

    def __init__(self, rule: Rule, listen_port: int | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.runtime = RuleRuntime(self.reactor, rule)
        self.stats = self.runtime.stats
        self.opened: list[TcpRelay] = []
        self.closed: list[TcpRelay] = []
        opened, closed = self.runtime.relay_opened, self.runtime.relay_closed

        def on_opened(relay: TcpRelay) -> None:
            self.opened.append(relay)
            opened(relay)

        def on_closed(relay: TcpRelay) -> None:
            self.closed.append(relay)
            closed(relay)

        self.runtime.relay_opened = on_opened  # type: ignore[method-assign]
        self.runtime.relay_closed = on_closed  # type: ignore[method-assign]
        self.factory = InboundFactory(
            self.runtime, listen_port if listen_port is not None else rule.listen.start
        )

    def accept(self) -> tuple[Any, FakeTCPTransport]:
        leg = self.factory.buildProtocol(None)
        transport = FakeTCPTransport()
        leg.makeConnection(transport)
        return leg, transport

    def connect_target(self, index: int = -1) -> tuple[Any, FakeTCPTransport]:
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        leg = factory.buildProtocol(None)
        transport = FakeTCPTransport()
        leg.makeConnection(transport)
        return leg, transport

    def fail_target(self, reason: Exception, index: int = -1) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(self.reactor.connectors[index], Failure(reason))

    @property
    def dialled(self) -> list[tuple[str, int, float]]:
        return [(host, port, timeout) for host, port, _, timeout, _ in self.reactor.tcpClients]


class DialTests(SynchronousTestCase):
    def test_accept_pauses_client_and_dials_target(self) -> None:
        """A new client is not read from until its target connects; dial uses 3 s."""
        h = RelayHarness(make_rule())
        _, client = h.accept()
        self.assertEqual(client.producerState, "paused")
        self.assertTrue(client.no_delay)
        self.assertEqual(h.dialled, [("10.0.0.5", 80, CONNECT_TIMEOUT_SECS)])
        self.assertEqual(h.opened[0].state, RelayState.DIALING)
        self.assertEqual((h.stats.active_connections, h.stats.total_connections), (1, 1))

    def test_port_range_maps_by_offset(self) -> None:
        """Listen port A+i goes to target port C+i."""
        rule = make_rule(Target("10.0.0.5", PortRange(9000, 9009)), listen=PortRange(8000, 8009))
        h = RelayHarness(rule, listen_port=8003)
        h.accept()
        self.assertEqual(h.dialled[0][:2], ("10.0.0.5", 9003))
        self.assertEqual(h.stats.ports[8003].total_connections, 1)

    def test_refused_target_falls_over_in_priority_order(self) -> None:
        """A refused dial tries the next target, lowest priority value first."""
        rule = make_rule(
            Target("10.0.0.2", PortRange.single(80), priority=5),
            Target("10.0.0.1", PortRange.single(80), priority=1),
        )
        h = RelayHarness(rule)
        h.accept()
        h.fail_target(ConnectionRefusedError())
        self.assertEqual([d[0] for d in h.dialled], ["10.0.0.1", "10.0.0.2"])
        self.assertEqual(h.opened[0].state, RelayState.DIALING)

    def test_all_targets_failing_closes_client(self) -> None:
        """When no target answers, the client is closed and counted as a failure."""
        h = RelayHarness(make_rule())
        leg, client = h.accept()
        h.fail_target(ConnectTimeout())
        self.assertTrue(client.disconnecting)
        self.assertEqual(h.opened[0].state, RelayState.CLOSING)
        leg.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.opened[0].state, RelayState.CLOSED)
        self.assertEqual(h.closed, h.opened)
        self.assertEqual((h.stats.active_connections, h.stats.connect_failures), (0, 1))

    def test_client_leaving_while_dialling_cancels_dial(self) -> None:
        """A client that disconnects before the target answers stops the dial."""
        h = RelayHarness(make_rule())
        leg, _ = h.accept()
        leg.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(h.reactor.connectors[0]._disconnected)
        self.assertEqual(h.stats.active_connections, 0)
        # A late connect is closed at once rather than relayed.
        _, target = h.connect_target()
        self.assertTrue(target.disconnecting)


class RelayingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = RelayHarness(make_rule())
        self.client_leg, self.client = self.h.accept()
        self.target_leg, self.target = self.h.connect_target()

    def test_producers_registered_both_ways(self) -> None:
        """Each transport is the streaming producer of the other; client resumes."""
        self.assertIs(self.client.producer, self.target)
        self.assertIs(self.target.producer, self.client)
        self.assertTrue(self.client.streaming and self.target.streaming)
        self.assertEqual(self.client.producerState, "producing")
        self.assertTrue(self.target.no_delay)

    def test_slow_target_pauses_client(self) -> None:
        """When the target's writer is full it pauses the client's reads, and resumes them."""
        self.target.producer.pauseProducing()
        self.assertEqual(self.client.producerState, "paused")
        self.target.producer.resumeProducing()
        self.assertEqual(self.client.producerState, "producing")

    def test_slow_client_pauses_target(self) -> None:
        """When the client's writer is full it pauses the target's reads."""
        self.client.producer.pauseProducing()
        self.assertEqual(self.target.producerState, "paused")

    def test_bytes_flow_and_are_counted(self) -> None:
        """Bytes go each way unchanged and count per rule and per port."""
        self.client_leg.dataReceived(b"hello")
        self.target_leg.dataReceived(b"world!")
        self.assertEqual(self.target.value(), b"hello")
        self.assertEqual(self.client.value(), b"world!")
        self.assertEqual((self.h.stats.bytes_in, self.h.stats.bytes_out), (5, 6))
        self.assertEqual(self.h.stats.ports[8080].bytes_out, 6)

    def test_client_half_close_passes_through(self) -> None:
        """Client EOF shuts the target's write side; the reply still reaches the client."""
        self.client_leg.readConnectionLost()
        self.assertTrue(self.target.write_closed)
        self.assertIsNone(self.target.producer)
        self.assertFalse(self.client.disconnecting)
        self.target_leg.dataReceived(b"reply")
        self.assertEqual(self.client.value(), b"reply")
        self.assertEqual(self.h.opened[0].state, RelayState.RELAYING)

    def test_both_eofs_close_both(self) -> None:
        """Once each side has sent EOF, both sockets are closed gracefully."""
        self.target_leg.readConnectionLost()
        self.assertTrue(self.client.write_closed)
        self.client_leg.readConnectionLost()
        self.assertTrue(self.client.disconnecting and self.target.disconnecting)
        self.assertFalse(self.client.socket_options)
        self.client_leg.connectionLost(Failure(ConnectionDone()))
        self.target_leg.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.h.stats.active_connections, 0)
        self.assertEqual(self.h.closed, self.h.opened)

    def test_target_reset_resets_client(self) -> None:
        """A reset from the target closes the client with an RST (SO_LINGER 0)."""
        self.target_leg.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(self.client.disconnected)
        level, option, _ = self.client.socket_options[0]
        self.assertEqual((level, option), (socket.SOL_SOCKET, socket.SO_LINGER))
        self.assertEqual(self.h.stats.active_connections, 1)
        self.client_leg.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.h.stats.active_connections, 0)

    def test_client_reset_resets_target(self) -> None:
        """A reset from the client aborts the target connection."""
        self.client_leg.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(self.target.disconnected)
        self.assertEqual(self.h.opened[0].state, RelayState.CLOSING)
        self.target_leg.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.h.opened[0].state, RelayState.CLOSED)

    def test_abort_cuts_both(self) -> None:
        """abort() (drain deadline) closes both sides at once, counted once."""
        relay = self.h.opened[0]
        relay.abort()
        relay.abort()
        self.assertTrue(self.client.disconnected and self.target.disconnected)
        self.client_leg.connectionLost(Failure(ConnectionLost()))
        self.target_leg.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.h.stats.active_connections, 0)
        self.assertEqual(self.h.closed, [relay])

    def test_graceful_close_waits_for_both_sockets(self) -> None:
        """A relay is live until both sockets are gone, so buffered replies drain."""
        self.target_leg.dataReceived(b"last words")
        self.client_leg.readConnectionLost()
        self.target_leg.readConnectionLost()
        self.target_leg.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.h.opened[0].state, RelayState.CLOSING)
        self.assertEqual(self.h.stats.active_connections, 1)
        self.assertEqual(self.h.closed, [])
        self.client_leg.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.h.opened[0].state, RelayState.CLOSED)
        self.assertEqual(self.h.closed, self.h.opened)


class EarlyEofTests(SynchronousTestCase):
    def test_eof_while_dialling_is_passed_on_after_connect(self) -> None:
        """A client that half-closes before the target answers still gets its reply."""
        h = RelayHarness(make_rule())
        client_leg, client = h.accept()
        client_leg.readConnectionLost()
        target_leg, target = h.connect_target()
        self.assertTrue(target.write_closed)
        target_leg.dataReceived(b"late reply")
        self.assertEqual(client.value(), b"late reply")
