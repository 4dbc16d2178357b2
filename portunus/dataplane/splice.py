"""
Zero-copy TCP relaying on Linux with C{splice(2)}.

Bytes move socket -> pipe -> socket inside the kernel, driven by the
reactor's readiness events: no copy into Python, no thread per connection,
no busy loop.  L{SpliceRelay} takes the two sockets over from their Twisted
transports once a relay starts bulk transfer, and gives them back (for a
clean close or a reset) when both directions are done.

Pipes come from a shared L{PipePool} and are held only while bytes are in
flight: an idle connection holds none, so thousands of idle connections
cost no extra file descriptors and no pipe memory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from portunus.compat import nothing_buffered

__all__ = [
    "PIPE_SIZE",
    "Pipe",
    "PipePool",
    "SpliceOwner",
    "SpliceRelay",
    "splice_disabled_by_env",
    "splice_supported",
]

log = Logger()

#: Requested capacity of each pipe (Portunus: 1 MiB).
PIPE_SIZE = 1 << 20
#: Idle pipes kept for reuse; more are closed when returned.
POOL_MAX_IDLE = 32
#: Splice calls per readiness event and direction, so one busy connection
#: cannot starve the others on the same reactor.
_BATCHES_PER_EVENT = 4

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

#: errno values that mean "this kernel or sandbox cannot splice these fds".
UNSUPPORTED_ERRNOS = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})

_probe_result: bool | None = None


def splice_disabled_by_env(environ: dict[str, str] | None = None) -> bool:
    """C{PORTUNUS_DISABLE_SPLICE} set to anything non-empty forces userspace."""
    env = os.environ if environ is None else environ
    return bool(env.get("PORTUNUS_DISABLE_SPLICE", "").strip())


def splice_supported() -> bool:
    """
    Whether this process can splice TCP sockets through pipes, probed once
    on a real loopback-free socketpair.
    """
    global _probe_result
    if _probe_result is None:
        _probe_result = _probe()
    return _probe_result


def _probe() -> bool:
    if not sys.platform.startswith("linux") or not hasattr(os, "splice"):
        return False
    try:
        a, b = socket.socketpair()
    except OSError:
        return False
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        a.sendall(b"x")
        b.setblocking(False)
        moved = os.splice(b.fileno(), w, 1, flags=_FLAGS)
        back = os.splice(r, a.fileno(), 1, flags=_FLAGS)
        return moved == 1 and back == 1
    except OSError:
        return False
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


class Pipe:
    """A non-blocking pipe pair and its capacity."""

    __slots__ = ("capacity", "read_fd", "write_fd")

    def __init__(self, read_fd: int, write_fd: int, capacity: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.capacity = capacity

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class PipePool:
    """
    Pipes shared by every spliced connection of a process.

    A pipe is lent while bytes are in flight and returned empty, so the
    number of pipes follows the number of busy connections, not open ones.
    Unprivileged users get a limited total of pipe memory
    (C{/proc/sys/fs/pipe-user-pages-soft}); past it 1 MiB requests are
    refused and pipes keep the kernel's default size instead.
    """

    def __init__(self, size: int = PIPE_SIZE, max_idle: int = POOL_MAX_IDLE) -> None:
        self._size = size
        self._max_idle = max_idle
        self._idle: list[Pipe] = []
        self._size_failure_logged = False
        self.created = 0
        #: Pipes open now, lent or idle (two descriptors each).
        self.open = 0

    def acquire(self) -> Pipe:
        if self._idle:
            return self._idle.pop()
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            capacity = fcntl.fcntl(write_fd, _F_SETPIPE_SZ, self._size)
        except OSError as e:
            capacity = fcntl.fcntl(write_fd, _F_GETPIPE_SZ)
            if not self._size_failure_logged:
                self._size_failure_logged = True
                log.warn(
                    "could not size splice pipes to {requested} bytes ({reason}); using {capacity}",
                    event="proxy.splice_pipe_size_failed",
                    requested=self._size,
                    capacity=capacity,
                    reason=e.strerror,
                )
        self.created += 1
        self.open += 1
        return Pipe(read_fd, write_fd, capacity)

    def discard(self, pipe: Pipe) -> None:
        """Close a lent pipe that cannot be reused (it still holds bytes)."""
        pipe.close()
        self.open -= 1

    def release(self, pipe: Pipe) -> None:
        """Return an empty pipe for reuse."""
        if len(self._idle) < self._max_idle:
            self._idle.append(pipe)
        else:
            pipe.close()
            self.open -= 1

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        for pipe in self._idle:
            pipe.close()
        self.open -= len(self._idle)
        self._idle.clear()


class SpliceOwner(Protocol):
    """What a L{SpliceRelay} reports to the relay that started it."""

    def count_in(self, n: int) -> None:
        """C{n} more bytes went from the client to the target."""

    def count_out(self, n: int) -> None:
        """C{n} more bytes went from the target back to the client."""

    def splice_done(self, reset: bool) -> None:
        """Both directions ended: cleanly, or with an error or reset."""

    def splice_unsupported(self) -> None:
        """The first splice showed these sockets cannot be spliced."""


@implementer(IReadDescriptor, IWriteDescriptor)
class _End:
    """
    One spliced socket as the reactor sees it, with the direction it feeds
    (this socket -> pipe -> its peer): readable means that direction can
    move, writable means the peer's direction can deliver.

    Both ends of a connection and their directions are these two objects,
    so an idle spliced connection costs little beyond its sockets.
    """

    __slots__ = (
        "done",
        "eof",
        "fd",
        "in_pipe",
        "peer",
        "pipe",
        "relay",
        "sock",
        "upstream",
        "waiting_write",
    )

    def __init__(self, relay: SpliceRelay, sock: socket.socket, upstream: bool) -> None:
        self.relay = relay
        self.sock = sock
        self.fd = sock.fileno()
        #: The client's end: what it feeds is counted as bytes in.
        self.upstream = upstream
        self.peer: _End = self
        self.pipe: Pipe | None = None
        #: Bytes read from this socket, in the pipe, not yet delivered.
        self.in_pipe = 0
        self.eof = False
        self.done = False
        #: The peer is full: this socket is not read until it drains.
        self.waiting_write = False

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.relay.pump(self)

    def doWrite(self) -> None:
        self.relay.pump(self.peer)

    def connectionLost(self, reason: Any) -> None:
        # Only called if the reactor gives up on the descriptor itself.
        self.relay.fail(reason.getErrorMessage() if hasattr(reason, "getErrorMessage") else "lost")

    def logPrefix(self) -> str:
        return "SpliceRelay"


class SpliceRelay:
    """
    Moves bytes both ways between two connected TCP transports with splice.

    The owner's C{splice_done(reset)} is called once: with C{False} after
    both directions ended with an EOF and everything was delivered (the
    owner closes the transports gracefully), with C{True} after an error or
    reset (the owner resets both).  C{splice_unsupported()} is called
    instead if the very first splice shows the kernel cannot splice these
    sockets; nothing has moved then, and the owner relays in userspace.
    """

    __slots__ = (
        "_client_transport",
        "_moved",
        "_owner",
        "_pool",
        "_reactor",
        "_target_transport",
        "client",
        "finished",
        "target",
    )

    def __init__(
        self,
        reactor: IReactorFDSet,
        client_transport: Any,
        target_transport: Any,
        pool: PipePool,
        owner: SpliceOwner,
    ) -> None:
        self._reactor = reactor
        self._client_transport = client_transport
        self._target_transport = target_transport
        self._pool = pool
        self._owner = owner
        self.client = _End(self, client_transport.socket, upstream=True)
        self.target = _End(self, target_transport.socket, upstream=False)
        self.client.peer = self.target
        self.target.peer = self.client
        self._moved = False
        self.finished = False

    @property
    def upstream(self) -> _End:
        """The client -> target direction (kept by the client's end)."""
        return self.client

    @property
    def downstream(self) -> _End:
        """The target -> client direction."""
        return self.target

    @staticmethod
    def can_take_over(transport: Any) -> bool:
        """
        A socket transport with nothing queued in it: its socket can be
        spliced, or written to directly, without reordering any bytes.
        """
        return hasattr(transport, "socket") and nothing_buffered(transport)

    def start(self) -> None:
        # Neither transport is writing: nothing is buffered (can_take_over).
        self._client_transport.stopReading()
        self._target_transport.stopReading()
        self._reactor.addReader(self.client)
        self._reactor.addReader(self.target)

    # -- moving bytes -----------------------------------------------------

    def pump(self, d: _End) -> None:
        """Move what can be moved in the direction C{d} feeds."""
        if self.finished or d.done:
            return
        try:
            self._pump(d)
        except OSError as e:
            if not self._moved and e.errno in UNSUPPORTED_ERRNOS:
                self._give_back()
                self._owner.splice_unsupported()
                return
            self.fail(e.strerror or str(e))

    def _pump(self, d: _End) -> None:
        dst_fd = d.peer.fd
        for _ in range(_BATCHES_PER_EVENT):
            # Deliver what is in the pipe before reading more.
            while d.in_pipe:
                try:
                    n = os.splice(d.pipe.read_fd, dst_fd, d.in_pipe, flags=_FLAGS)  # type: ignore[union-attr]
                except BlockingIOError:
                    self._wait_writable(d)
                    return
                d.in_pipe -= n
                self._moved = True
                if d.upstream:
                    self._owner.count_in(n)
                else:
                    self._owner.count_out(n)
            if d.waiting_write:
                self._resume_reading(d)
            if d.eof:
                self._finish_direction(d)
                return
            pipe = d.pipe
            if pipe is None:
                pipe = d.pipe = self._pool.acquire()
            try:
                n = os.splice(d.fd, pipe.write_fd, pipe.capacity, flags=_FLAGS)
            except BlockingIOError:
                # Nothing to read now: hand the empty pipe back and wait.
                self._pool.release(pipe)
                d.pipe = None
                return
            if n == 0:
                d.eof = True
            else:
                d.in_pipe += n
        # Budget used: the level-triggered reactor calls again if more is ready.

    def _wait_writable(self, d: _End) -> None:
        """The destination is full: stop reading the source until it drains."""
        if not d.waiting_write:
            d.waiting_write = True
            self._reactor.removeReader(d)
            self._reactor.addWriter(d.peer)

    def _resume_reading(self, d: _End) -> None:
        d.waiting_write = False
        self._reactor.removeWriter(d.peer)
        if not d.eof:
            self._reactor.addReader(d)

    def _finish_direction(self, d: _End) -> None:
        d.done = True
        self._reactor.removeReader(d)
        if d.pipe is not None:
            self._pool.release(d.pipe)
            d.pipe = None
        try:
            d.peer.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                self.fail(e.strerror or str(e))
                return
        if self.client.done and self.target.done:
            self._give_back()
            self._owner.splice_done(False)

    # -- ending -----------------------------------------------------------

    def fail(self, reason: str) -> None:
        """An error on either socket: stop and let the owner reset both."""
        if self.finished:
            return
        log.debug("splice relay reset: {reason}", event="proxy.splice_reset", reason=reason)
        self._give_back(discard_pipes=True)
        self._owner.splice_done(True)

    def stop(self) -> None:
        """Stop splicing now (the owner is cutting the connection)."""
        if not self.finished:
            self._give_back(discard_pipes=True)

    def _give_back(self, discard_pipes: bool = False) -> None:
        """Unregister from the reactor and return (or discard) pipes."""
        self.finished = True
        reactor = self._reactor
        for d in (self.client, self.target):
            # Only what is registered: a finished direction already left.
            if not (d.done or d.waiting_write):
                reactor.removeReader(d)
            if d.peer.waiting_write:
                reactor.removeWriter(d)
            if d.pipe is not None:
                if discard_pipes and d.in_pipe:
                    self._pool.discard(d.pipe)
                else:
                    self._pool.release(d.pipe)
                d.pipe = None
