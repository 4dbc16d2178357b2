"""
The userspace relay's write path (C{tcp._forward}) on a real Twisted TCP
transport over a loopback socket pair: straight to the socket while nothing
is queued, through the transport's queue (in order) once the socket is full.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.tcp import _forward
from tests._fakes import FakeTCPTransport
from tests._net import LOOPBACK


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(1)
    ours = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    return ours, peer


def drain(peer: socket.socket) -> bytes:
    peer.setblocking(False)
    chunks = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class ForwardTests(SynchronousTestCase):
    def setUp(self) -> None:
        ours, self.peer = loopback_pair()
        self.addCleanup(self.peer.close)
        self.reactor: Any = MemoryReactor()
        self.transport = tcp.Connection(ours, Protocol(), self.reactor)
        self.transport.connected = 1
        self.addCleanup(ours.close)

    def test_sends_at_once_when_nothing_is_queued(self) -> None:
        """The bytes are on the socket before any turn of the reactor."""
        _forward(self.transport, b"hello")
        self.assertEqual(self.transport._tempDataBuffer, [])
        self.assertNotIn(self.transport, self.reactor.writers)
        self.peer.settimeout(5)
        self.assertEqual(self.peer.recv(5), b"hello")

    def test_full_socket_queues_the_rest_in_order(self) -> None:
        """
        What the socket does not take is queued in the transport, later
        writes queue behind it, and the peer gets every byte in order.
        """
        # 32 MiB: more than the socket and its unread peer hold.
        first = bytes(range(256)) * (128 * 1024)
        _forward(self.transport, first)
        queued = self.transport._tempDataLen
        self.assertGreater(queued, 0)
        self.assertLess(queued, len(first))
        self.assertIn(self.transport, self.reactor.writers)
        _forward(self.transport, b"second")
        self.assertEqual(self.transport._tempDataLen, queued + len(b"second"))

        received = b""
        for _ in range(10_000):
            received += drain(self.peer)
            if len(received) == len(first) + len(b"second"):
                break
            self.transport.doWrite()
        self.assertEqual(received, first + b"second")

    def test_disconnecting_transport_gets_the_write_call(self) -> None:
        """After loseConnection() nothing goes to the socket (Twisted drops it)."""
        self.transport.loseConnection()
        _forward(self.transport, b"too late")
        self.assertEqual(drain(self.peer), b"")

    def test_other_transports_are_written_to(self) -> None:
        """A transport without Twisted's queue (a test double) gets write()."""
        fake = FakeTCPTransport()
        _forward(fake, b"data")
        self.assertEqual(fake.value(), b"data")
