"""
Dialling a relay's target.

A relay hands a dialer the address to try, the protocol that takes the
connected socket and what to call if the attempt fails; the attempt can be
cancelled until it settles.  Two dialers keep the same contract:

  - L{ReactorDialer} uses C{reactor.connectTCP}: any reactor, including the
    memory reactors of the unit tests, and host names the reactor resolves.
  - L{SocketDialer} connects a non-blocking socket itself and gives it to a
    plain TCP transport.  C{connectTCP} spends much of a short connection's
    Python time on what a relay never uses: a connector and its timer, a
    deferred, a delayed call per connection before the first C{connect()},
    and a second C{connect()} plus four C{epoll_ctl} calls around it.
    Here the attempts made during one turn of the reactor all start on the
    next turn (one delayed call for the batch: like C{connectTCP}, a burst
    of accepted clients does not dial before the rest of that turn's I/O,
    such as a target's own accepts, is served), and a loopback or LAN
    target that completes its handshake within C{connect()} is connected
    at once, without a timer or a readiness event; otherwise the socket
    waits for writability under a timeout, as before.

Failures carry the same exceptions as C{connectTCP}'s
(L{twisted.internet.error.getConnectError}, C{TimeoutError} for the
timeout), so logs and tests read the same either way.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import address, error, tcp
from twisted.internet.interfaces import (
    IProtocol,
    IReactorFDSet,
    IReactorTCP,
    IReactorTime,
    IWriteDescriptor,
)
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portunus.reactors import IDataplaneReactor

if TYPE_CHECKING:
    from portunus.dataplane.selfconnect import DialedBy

__all__ = ["DialAttempt", "Dialer", "ReactorDialer", "SocketDialer", "dialer_for"]

log = Logger()

_PENDING = frozenset({errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK})
_CONNECTED = frozenset({0, errno.EISCONN})


class DialAttempt(Protocol):
    def start(self) -> None:
        """Begin; the outcome is reported on a later turn of the reactor."""

    def cancel(self) -> None:
        """Give up (the client left); nothing is reported afterwards."""


class Dialer(Protocol):
    def attempt(
        self,
        host: str,
        port: int,
        timeout: float,
        protocol: IProtocol,
        failed: Callable[[Failure], object],
    ) -> DialAttempt:
        """
        Prepare one connection attempt to C{host}:C{port}.  Once connected,
        C{protocol} is given the transport (C{makeConnection}); on failure
        C{failed(reason)} is called.  Exactly one of the two happens unless
        the attempt is cancelled first.
        """


def dialer_for(reactor: IDataplaneReactor, track: DialedBy | None = None) -> Dialer:
    """
    L{SocketDialer} for a real POSIX reactor, L{ReactorDialer} otherwise.

    @param track: told the local address of every socket dialled, while
        it is open (L{portunus.dataplane.selfconnect}).
    """
    from twisted.internet.posixbase import PosixReactorBase

    if isinstance(reactor, PosixReactorBase):
        return SocketDialer(reactor, track=track)
    return ReactorDialer(reactor)


# -- through the reactor -----------------------------------------------------


class _OneProtocolFactory(ClientFactory):
    noisy = False

    def __init__(self, protocol: IProtocol, failed: Callable[[Failure], object]) -> None:
        self._protocol = protocol
        self._failed = failed

    def buildProtocol(self, addr: Any) -> IProtocol:  # type: ignore[override]
        return self._protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._failed(reason)


class _ConnectorAttempt:
    def __init__(
        self, reactor: IReactorTCP, host: str, port: int, timeout: float, factory: ClientFactory
    ) -> None:
        self._reactor = reactor
        self._args = (host, port, factory)
        self._timeout = timeout
        self._connector: Any = None

    def start(self) -> None:
        host, port, factory = self._args
        self._connector = self._reactor.connectTCP(host, port, factory, timeout=self._timeout)

    def cancel(self) -> None:
        if self._connector is not None:
            self._connector.disconnect()


class ReactorDialer:
    """Dials with C{reactor.connectTCP}."""

    def __init__(self, reactor: IReactorTCP) -> None:
        self._reactor = reactor

    def attempt(
        self,
        host: str,
        port: int,
        timeout: float,
        protocol: IProtocol,
        failed: Callable[[Failure], object],
    ) -> DialAttempt:
        factory = _OneProtocolFactory(protocol, failed)
        return _ConnectorAttempt(self._reactor, host, port, timeout, factory)


# -- with our own socket -----------------------------------------------------


class DialedConnection(tcp.Connection):
    """
    The transport of a socket L{SocketDialer} connected: a plain Twisted
    TCP connection (writes, producers, half-close, abort) that knows its
    two addresses.  It is not reading yet: the relay starts it when it
    relays in userspace, or hands its socket to splice.
    """

    logstr = "TargetConnection,client"

    def __init__(
        self,
        sock: socket.socket,
        protocol: IProtocol,
        peer: tuple[Any, ...],
        reactor: IReactorFDSet,
    ) -> None:
        super().__init__(sock, protocol, reactor)
        self._peer = peer
        self.connected = 1
        #: Called once the socket is closed (the dialer stops tracking it).
        self.on_close: Callable[[], object] | None = None

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    def _address(self, sockaddr: tuple[Any, ...]) -> address.IPv4Address | address.IPv6Address:
        if self.socket.family == socket.AF_INET6:
            return address.IPv6Address("TCP", *sockaddr[:2])
        return address.IPv4Address("TCP", *sockaddr[:2])

    def getPeer(self) -> address.IPv4Address | address.IPv6Address:
        return self._address(self._peer)

    def getHost(self) -> address.IPv4Address | address.IPv6Address:
        return self._address(self.socket.getsockname())

    def __repr__(self) -> str:
        return f"<DialedConnection to {self._peer[0]}:{self._peer[1]}>"


@implementer(IWriteDescriptor)
class _SocketAttempt:
    """
    One non-blocking C{connect()}: while it is pending, the reactor sees
    this object (writable, or readable on error, means it settled).
    """

    __slots__ = (
        "_cancelled",
        "_clock",
        "_dialer",
        "_failed",
        "_fd",
        "_local",
        "_peer",
        "_protocol",
        "_reactor",
        "_sock",
        "_timeout",
        "_timer",
    )

    def __init__(
        self,
        dialer: SocketDialer,
        reactor: IReactorFDSet,
        clock: IReactorTime,
        peer: tuple[Any, ...],
        timeout: float,
        protocol: IProtocol,
        failed: Callable[[Failure], object],
    ) -> None:
        self._dialer = dialer
        self._reactor = reactor
        self._clock = clock
        self._cancelled = False
        self._peer = peer
        self._timeout = timeout
        self._protocol = protocol
        self._failed = failed
        self._sock: socket.socket | None = None
        self._fd = -1
        self._timer: Any = None
        #: The socket's own address while the dialer tracks it.
        self._local: tuple[str, int] | None = None

    def start(self) -> None:
        self._dialer.queue(self)

    def connect(self) -> None:
        """Called by the dialer on the turn after L{start}."""
        if self._cancelled:
            return
        family = socket.AF_INET6 if len(self._peer) == 4 else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            self._fail(error.ConnectBindError(e.errno, e.strerror))
            return
        self._sock = sock
        self._fd = sock.fileno()
        try:
            result = sock.connect_ex(self._peer)
            if result in _PENDING:
                # Over loopback the handshake is done by the time connect()
                # returns; asking again says so without waiting for an event.
                result = sock.connect_ex(self._peer)
        except OSError as e:
            result = e.errno or errno.EINVAL
        if result in _CONNECTED or result in _PENDING:
            self._track(sock)
        if result in _CONNECTED:
            self._connected()
        elif result in _PENDING:
            self._reactor.addWriter(self)
            self._timer = self._clock.callLater(self._timeout, self._timed_out)
        else:
            self._close_and_fail(error.getConnectError((result, os.strerror(result))))

    def cancel(self) -> None:
        self._cancelled = True
        if self._sock is not None:
            self._stop_waiting()
            sock, self._sock = self._sock, None
            sock.close()
            self._untrack()

    def _track(self, sock: socket.socket) -> None:
        """Tell the dialer's tracker where this socket connects from."""
        track = self._dialer.track
        if track is None:
            return
        try:
            local = sock.getsockname()
        except OSError:
            return
        self._local = (local[0], local[1])
        track.add(self._local, (self._peer[0], self._peer[1]))

    def _untrack(self) -> None:
        local, self._local = self._local, None
        track = self._dialer.track
        if local is not None and track is not None:
            track.discard(local, (self._peer[0], self._peer[1]))

    # -- as the reactor's descriptor while pending -----------------------------

    def fileno(self) -> int:
        return self._fd

    def doWrite(self) -> None:
        self._settled()

    def doRead(self) -> None:
        self._settled()

    def connectionLost(self, reason: Failure) -> None:
        self._settled()

    def logPrefix(self) -> str:
        return "TargetDial"

    # -- outcomes ---------------------------------------------------------------

    def _settled(self) -> None:
        if self._sock is None:
            return
        self._stop_waiting()
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close_and_fail(error.getConnectError((err, os.strerror(err))))
        else:
            self._connected()

    def _timed_out(self) -> None:
        self._timer = None
        self._reactor.removeWriter(self)
        self._close_and_fail(error.TimeoutError())

    def _stop_waiting(self) -> None:
        """Leave the reactor and cancel the timeout, if waiting for either."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._reactor.removeWriter(self)

    def _connected(self) -> None:
        sock, self._sock = self._sock, None
        assert sock is not None
        transport = DialedConnection(sock, self._protocol, self._peer, self._reactor)
        if self._local is not None:
            transport.on_close = self._untrack
        self._protocol.makeConnection(transport)

    def _close_and_fail(self, reason: Exception) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._untrack()
        self._fail(reason)

    def _fail(self, reason: Exception) -> None:
        self._failed(Failure(reason))


def _numeric_peer(host: str, port: int) -> tuple[Any, ...] | None:
    """The socket address of an IP literal; None for a host name."""
    try:
        socket.inet_pton(socket.AF_INET, host)
        return (host, port)
    except OSError:
        pass
    if ":" not in host:
        return None
    try:
        # Also resolves a scope (fe80::1%eth0) to its interface index.
        infos = socket.getaddrinfo(
            host, port, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
        )
    except OSError:
        return None
    return tuple(infos[0][4])


class SocketDialer:
    """
    Dials IP literals with a non-blocking socket of its own; host names
    (which only come without a resolver) go through C{connectTCP}.
    """

    def __init__(
        self,
        reactor: IDataplaneReactor,
        clock: IReactorTime | None = None,
        track: DialedBy | None = None,
    ) -> None:
        """
        @param clock: runs the turn-later starts and the timeouts; by
            default the reactor itself.
        @param track: told each dialled socket's local address while it is
            open, so the listeners can recognise it coming back.
        """
        self.track = track
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._fallback = ReactorDialer(reactor)
        self._queued: list[_SocketAttempt] = []

    def queue(self, attempt: _SocketAttempt) -> None:
        if not self._queued:
            self._clock.callLater(0, self._connect_queued)
        self._queued.append(attempt)

    def _connect_queued(self) -> None:
        queued, self._queued = self._queued, []
        for attempt in queued:
            try:
                attempt.connect()
            except Exception:
                # A bug in whatever took the connection: the others still go.
                log.failure("dialling a target failed", event="proxy.dial_error")

    def attempt(
        self,
        host: str,
        port: int,
        timeout: float,
        protocol: IProtocol,
        failed: Callable[[Failure], object],
    ) -> DialAttempt:
        peer = _numeric_peer(host, port)
        if peer is None:
            return self._fallback.attempt(host, port, timeout, protocol, failed)
        return _SocketAttempt(self, self._reactor, self._clock, peer, timeout, protocol, failed)
