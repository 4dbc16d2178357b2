"""
The splice(2) relay on real loopback TCP socket pairs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane import splice as splice_module
from portunus.dataplane.splice import (
    PipePool,
    SpliceRelay,
    splice_disabled_by_env,
    splice_supported,
)
from tests._net import LOOPBACK

reactor: Any = _reactor


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets over 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    return near, far


class FakeTransport:
    """The call SpliceRelay makes of a Twisted transport, and its socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False


class Owner:
    """Records what a SpliceRelay reports to its owner."""

    def __init__(self) -> None:
        self.bytes_in: list[int] = []
        self.bytes_out: list[int] = []
        self.done: list[bool] = []
        self.unsupported: list[bool] = []

    def count_in(self, n: int) -> None:
        self.bytes_in.append(n)

    def count_out(self, n: int) -> None:
        self.bytes_out.append(n)

    def splice_done(self, reset: bool) -> None:
        self.done.append(reset)

    def splice_unsupported(self) -> None:
        self.unsupported.append(True)


def until(predicate: Callable[[], bool], turns: int = 20000) -> Deferred[None]:
    """Fire once C{predicate} holds, checking once per reactor turn (bounded)."""
    d: Deferred[None] = Deferred()

    def check(left: int) -> None:
        if predicate():
            d.callback(None)
        elif left == 0:
            d.errback(AssertionError("condition never held"))
        else:
            reactor.callLater(0, check, left - 1)

    check(turns)
    return d


def recv_some(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""


class SpliceRelayTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if not splice_supported():
            self.skipTest("this kernel or sandbox cannot splice sockets")
        self.client, client_side = tcp_pair()
        target_side, self.target = tcp_pair()
        for s in (self.client, client_side, target_side, self.target):
            self.addCleanup(s.close)
        self.client.setblocking(False)
        self.target.setblocking(False)
        self.pool = PipePool()
        self.addCleanup(self.pool.close)
        owner = Owner()
        self.bytes_in = owner.bytes_in
        self.bytes_out = owner.bytes_out
        self.done = owner.done
        self.unsupported = owner.unsupported
        self.relay = SpliceRelay(
            reactor, FakeTransport(client_side), FakeTransport(target_side), self.pool, owner
        )
        self.relay.start()
        self.addCleanup(self.relay.stop)

    @inlineCallbacks
    def test_bytes_flow_both_ways_and_are_counted(self) -> Any:
        """Bytes move both ways unchanged, counted; idle directions return their pipe."""
        self.client.sendall(b"request")
        got = bytearray()
        yield until(lambda: bool(got.extend(recv_some(self.target))) or got == b"request")
        self.target.sendall(b"response!")
        back = bytearray()
        yield until(lambda: bool(back.extend(recv_some(self.client))) or back == b"response!")
        self.assertEqual((sum(self.bytes_in), sum(self.bytes_out)), (7, 9))
        # Idle directions hold no pipe: one pipe served both, and is back.
        self.assertEqual((self.pool.created, self.pool.idle), (1, 1))

    @inlineCallbacks
    def test_half_close_passes_through_then_finishes(self) -> Any:
        """Client EOF reaches the target; the reply still flows; both EOFs finish cleanly."""
        self.client.sendall(b"ask")
        self.client.shutdown(socket.SHUT_WR)
        got = bytearray()
        eof = []

        def target_reads() -> bool:
            data = recv_some(self.target)
            if data == b"" and got == b"ask":
                try:
                    if self.target.recv(1) == b"":
                        eof.append(True)
                except BlockingIOError:
                    pass
            got.extend(data)
            return bool(eof)

        yield until(target_reads)
        self.target.sendall(b"answer")
        self.target.shutdown(socket.SHUT_WR)
        yield until(lambda: self.done == [False])
        self.client.setblocking(True)
        self.assertEqual(self.client.recv(100), b"answer")
        self.assertEqual(self.client.recv(100), b"")
        self.assertEqual(self.pool.idle, self.pool.created)

    @inlineCallbacks
    def test_reset_from_target_is_reported(self) -> Any:
        """An RST from the target ends the relay as a reset."""
        self.client.sendall(b"x")
        yield until(lambda: recv_some(self.target) == b"x")
        self.target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.target.close()
        yield until(lambda: self.done == [True])

    @inlineCallbacks
    def test_slow_reader_parks_the_direction(self) -> Any:
        """A target that does not read stops the relay reading; nothing is lost."""
        self.target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        payload = os.urandom(16 * 1024 * 1024)
        view = memoryview(payload)
        sent = 0

        def client_writes() -> bool:
            nonlocal sent
            with contextlib.suppress(BlockingIOError):
                sent += self.client.send(view[sent : sent + (1 << 20)])
            return self.relay.upstream.waiting_write

        yield until(client_writes)
        self.assertLessEqual(self.relay.upstream.in_pipe, self.relay.upstream.pipe.capacity)  # type: ignore[union-attr]
        received = bytearray()

        def both_move() -> bool:
            nonlocal sent
            if sent < len(payload):
                with contextlib.suppress(BlockingIOError):
                    sent += self.client.send(view[sent : sent + (1 << 20)])
            received.extend(recv_some(self.target))
            return len(received) == len(payload)

        yield until(both_move, turns=200000)
        self.assertEqual(bytes(received), payload)
        self.assertEqual(sum(self.bytes_in), len(payload))


class SpliceFallbackTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_refused_splice_falls_back_without_losing_bytes(self) -> Any:
        """If the kernel refuses the first splice, the caller is told and data stays queued."""
        client, client_side = tcp_pair()
        target_side, target = tcp_pair()
        for s in (client, client_side, target_side, target):
            self.addCleanup(s.close)

        def refuse(*args: object, **kwargs: object) -> int:
            raise OSError(errno.EINVAL, "Invalid argument")

        self.patch(splice_module.os, "splice", refuse)
        owner = Owner()
        relay = SpliceRelay(
            reactor, FakeTransport(client_side), FakeTransport(target_side), PipePool(), owner
        )
        relay.start()
        client.sendall(b"keep me")
        yield until(lambda: owner.unsupported == [True])
        self.assertTrue(relay.finished)
        client_side.setblocking(True)
        self.assertEqual(client_side.recv(100), b"keep me")


class SpliceEnvironmentTests(SynchronousTestCase):
    def test_disable_variable(self) -> None:
        """PORTUNUS_DISABLE_SPLICE set to any non-blank value forces userspace."""
        self.assertTrue(splice_disabled_by_env({"PORTUNUS_DISABLE_SPLICE": "1"}))
        self.assertFalse(splice_disabled_by_env({"PORTUNUS_DISABLE_SPLICE": " "}))
        self.assertFalse(splice_disabled_by_env({}))

    def test_pool_reuses_and_bounds_idle_pipes(self) -> None:
        """Returned pipes are reused; beyond the idle cap they are closed."""
        pool = PipePool(max_idle=1)
        self.addCleanup(pool.close)
        a, b = pool.acquire(), pool.acquire()
        pool.release(a)
        pool.release(b)
        self.assertEqual(pool.idle, 1)
        self.assertIs(pool.acquire(), a)
        with self.assertRaises(OSError):
            os.fstat(b.read_fd)
