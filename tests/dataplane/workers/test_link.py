"""
The link to a worker: length-prefixed JSON messages, each paired with the
descriptors it hands over, in order; broken input closes the link and the
descriptors it brought.  One test passes a descriptor through a real
socketpair and the real reactor.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane.workers.link import OneLinkFactory, WorkerLink
from tests.dataplane.workers._fakes import FdTransport, decode, frame

reactor: Any = _reactor


class Received:
    def __init__(self) -> None:
        self.messages: list[tuple[dict[str, Any], list[int]]] = []
        self.lost: list[Failure] = []

    def message(self, message: dict[str, Any], fds: list[int]) -> None:
        self.messages.append((message, fds))


class WorkerLinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.received = Received()
        self.link = WorkerLink(
            self.received.message, self.received.lost.append, event_prefix="client"
        )
        self.transport = FdTransport()
        self.link.makeConnection(self.transport)

    def pipe_fd(self) -> int:
        r, w = os.pipe()
        os.close(w)
        return r

    def test_descriptors_go_with_their_messages_in_order(self) -> None:
        """Descriptors may arrive ahead of their message; each message takes its own."""
        fds = [self.pipe_fd() for _ in range(3)]
        self.addCleanup(lambda: [os.close(fd) for fd in fds])
        for fd in fds:
            self.link.fileDescriptorReceived(fd)
        data = frame({"op": "a", "fds": 1}) + frame({"op": "b"}) + frame({"op": "c", "fds": 2})
        self.link.dataReceived(data)
        self.assertEqual(
            [(m["op"], f) for m, f in self.received.messages],
            [("a", fds[:1]), ("b", []), ("c", fds[1:])],
        )

    def test_send_queues_descriptors_before_the_message(self) -> None:
        self.link.send({"op": "add", "key": 1}, [11, 12])
        self.assertEqual(self.transport.fds, [11, 12])
        self.assertEqual(decode(self.transport.value()), [{"op": "add", "key": 1, "fds": 2}])

    def test_unreadable_message_closes_the_link_and_its_descriptors(self) -> None:
        fd = self.pipe_fd()
        self.link.fileDescriptorReceived(fd)
        self.link.dataReceived(frame({"op": "x", "fds": 2}))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.received.messages, [])
        self.link.connectionLost(Failure(ConnectionError()))
        self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual(len(self.received.lost), 1)

    def test_oversized_message_closes_the_link(self) -> None:
        self.link.dataReceived(b"\x7f\xff\xff\xff")
        self.assertTrue(self.transport.disconnecting)

    def test_nothing_is_sent_once_lost(self) -> None:
        self.link.connectionLost(Failure(ConnectionError()))
        self.link.send({"op": "add"}, [5])
        self.assertEqual((self.transport.value(), self.transport.fds), (b"", []))


class RealSocketpairTests(TestCase):
    timeout = 10

    def test_a_descriptor_crosses_the_socketpair(self) -> None:
        """
        A pipe's read end sent with a message arrives with that message, as
        a new descriptor for the same pipe.
        """
        got: Deferred[tuple[dict[str, Any], list[int]]] = Deferred()
        sender = WorkerLink(lambda m, f: None, event_prefix="client")
        receiver = WorkerLink(lambda m, f: got.callback((m, f)), event_prefix="client")
        a, b = socket.socketpair()
        for sock, link in ((a, sender), (b, receiver)):
            sock.setblocking(False)
            transport = reactor.adoptStreamConnection(
                sock.fileno(), socket.AF_UNIX, OneLinkFactory(link)
            )
            self.addCleanup(transport.loseConnection)
            sock.close()
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        sender.send({"op": "hello", "sockets": ["pipe"]}, [r])

        def check(result: tuple[dict[str, Any], list[int]]) -> None:
            message, [fd] = result
            self.addCleanup(os.close, fd)
            self.assertEqual(message["op"], "hello")
            os.write(w, b"ok")
            self.assertEqual(os.read(fd, 2), b"ok")

        return got.addCallback(check)
