"""
Dialling targets: L{SocketDialer} on real loopback sockets, L{dialer_for}.

Readiness comes from the real reactor; the turn-later start and the
timeout run on a L{Clock}, so only a test that waits for the kernel spins
the reactor.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane.dial import (
    DialedConnection,
    ReactorDialer,
    SocketDialer,
    dialer_for,
)
from tests._net import LOOPBACK

reactor: Any = _reactor


class Recorder:
    """The protocol a dial hands its transport to, and its failure callback."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.made: Deferred[None] = Deferred()
        self.failures: list[Failure] = []

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.made.callback(None)

    def failed(self, reason: Failure) -> None:
        self.failures.append(reason)


def listener(backlog: int = 16) -> socket.socket:
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    sock.listen(backlog)
    return sock


def full_listener(case: SynchronousTestCase) -> socket.socket:
    """
    A listener whose accept queue is full, so the kernel drops new SYNs and
    a connect to it stays pending (Linux: backlog 0 queues one connection).
    """
    sock = listener(backlog=0)
    case.addCleanup(sock.close)
    filler = socket.create_connection(sock.getsockname())
    case.addCleanup(filler.close)
    return sock


class SocketDialerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dialer = SocketDialer(reactor, clock=self.clock)
        self.protocol = Recorder()

    def attempt(self, port: int, timeout: float = 3.0) -> Any:
        attempt = self.dialer.attempt(LOOPBACK, port, timeout, self.protocol, self.protocol.failed)
        attempt.start()
        return attempt

    def test_loopback_connects_on_the_next_turn(self) -> None:
        """A loopback target is connected on the turn after start(), without a timer."""
        server = listener()
        self.addCleanup(server.close)
        port = server.getsockname()[1]
        self.attempt(port)
        self.assertIsNone(self.protocol.transport)
        self.clock.advance(0)
        transport = self.protocol.transport
        self.assertIsInstance(transport, DialedConnection)
        self.addCleanup(transport.socket.close)
        self.assertEqual((transport.getPeer().host, transport.getPeer().port), (LOOPBACK, port))
        accepted, peer = server.accept()
        self.addCleanup(accepted.close)
        self.assertEqual(transport.getHost().port, peer[1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Not read until the relay asks (userspace) or splice takes the socket.
        self.assertNotIn(transport, reactor.getReaders())

    def test_refused_reports_connection_refused(self) -> None:
        """A closed port fails the attempt with connectTCP's refusal error."""
        closed = socket.socket()
        closed.bind((LOOPBACK, 0))
        port = closed.getsockname()[1]
        self.addCleanup(closed.close)
        self.attempt(port)
        self.clock.advance(0)
        self.assertIsNone(self.protocol.transport)
        [failure] = self.protocol.failures
        self.assertTrue(failure.check(ConnectionRefusedError))

    def test_pending_attempt_times_out(self) -> None:
        """An unanswered connect fails with connectTCP's timeout error, and lets go."""
        server = full_listener(self)
        attempt = self.attempt(server.getsockname()[1], timeout=3.0)
        self.clock.advance(0)
        self.assertIn(attempt, reactor.getWriters())
        self.assertEqual(self.protocol.failures, [])
        self.clock.advance(3.0)
        [failure] = self.protocol.failures
        self.assertTrue(failure.check(ConnectTimeout))
        self.assertNotIn(attempt, reactor.getWriters())
        self.assertIsNone(self.protocol.transport)

    def test_cancel_before_the_turn_dials_nothing(self) -> None:
        """An attempt cancelled before its turn opens no socket and reports nothing."""
        server = listener()
        self.addCleanup(server.close)
        server.setblocking(False)
        self.attempt(server.getsockname()[1]).cancel()
        self.clock.advance(0)
        self.assertEqual((self.protocol.transport, self.protocol.failures), (None, []))
        with self.assertRaises(BlockingIOError):
            server.accept()

    def test_cancel_while_pending_lets_go(self) -> None:
        """Cancelling a pending connect leaves the reactor, drops the timer, reports nothing."""
        server = full_listener(self)
        attempt = self.attempt(server.getsockname()[1])
        self.clock.advance(0)
        attempt.cancel()
        self.assertNotIn(attempt, reactor.getWriters())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual((self.protocol.transport, self.protocol.failures), (None, []))

    def test_one_turn_starts_every_queued_attempt(self) -> None:
        """Attempts made in one turn share one delayed call and all start on the next."""
        server = listener()
        self.addCleanup(server.close)
        port = server.getsockname()[1]
        protocols = [Recorder() for _ in range(3)]
        for protocol in protocols:
            self.dialer.attempt(LOOPBACK, port, 3.0, protocol, protocol.failed).start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        for protocol in protocols:
            self.assertIsInstance(protocol.transport, DialedConnection)
            self.addCleanup(protocol.transport.socket.close)

    def test_host_names_go_through_connect_tcp(self) -> None:
        """A name (only dialled without a resolver) is left to the reactor to resolve."""
        memory = MemoryReactorClock()
        dialer = SocketDialer(memory)
        dialer.attempt("db.internal", 5432, 3.0, self.protocol, self.protocol.failed).start()
        self.assertEqual(
            [(host, port, timeout) for host, port, _, timeout, _ in memory.tcpClients],
            [("db.internal", 5432, 3.0)],
        )


class PendingConnectTests(TestCase):
    timeout = 30

    def test_pending_connect_completes_when_the_target_accepts(self) -> Deferred[None]:
        """A connect the target answers late is handed over once the socket is writable."""
        clock = Clock()
        dialer = SocketDialer(reactor, clock=clock)
        server = full_listener(self)
        protocol = Recorder()
        attempt = dialer.attempt(LOOPBACK, server.getsockname()[1], 3.0, protocol, protocol.failed)
        attempt.start()
        clock.advance(0)
        self.assertIn(attempt, reactor.getWriters())
        # Make room: the kernel's SYN retry then completes the handshake.
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)

        def connected(_: None) -> None:
            self.assertIsInstance(protocol.transport, DialedConnection)
            self.addCleanup(protocol.transport.socket.close)
            self.assertNotIn(attempt, reactor.getWriters())
            self.assertEqual((protocol.failures, clock.getDelayedCalls()), ([], []))

        return protocol.made.addCallback(connected)


class DialerForTests(SynchronousTestCase):
    def test_real_reactor_gets_the_socket_dialer(self) -> None:
        """The running reactor dials with sockets; a memory reactor through connectTCP."""
        self.assertIsInstance(dialer_for(reactor), SocketDialer)
        self.assertIsInstance(dialer_for(MemoryReactorClock()), ReactorDialer)
