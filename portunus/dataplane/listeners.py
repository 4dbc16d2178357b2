"""
Binding listen sockets.

Sockets are created here rather than by C{reactor.listenTCP} or
C{listenUDP} so that each gets exactly the options Portunus uses
(C{IPV6_V6ONLY} on IPv6 so IPv4 and IPv6 are separate listeners; for TCP
C{SO_REUSEADDR} and backlog 1024; for UDP a 4 MiB receive buffer), bind
errors map to stable codes with the offending port, and a bound socket can
be adopted by this reactor or handed to a worker process later.

UDP sockets do not get C{SO_REUSEADDR}: on Linux it lets two UDP sockets
bind the same address and port, which would hide a real C{port_in_use}
(and UDP has no TIME_WAIT for it to help with).

A rule replaced by a new version of itself hands its listening sockets on
(L{InheritedSockets}): the new version's bind takes duplicates of the
sockets already listening on the (address, port) pairs it keeps, so those
ports never close and never refuse a connection, and binds only the rest.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import sys
from collections.abc import Iterable
from typing import Any

import attrs

from portunus.addresses import format_host_port
from portunus.errors import PortunusError

__all__ = [
    "BACKLOG",
    "UDP_RCVBUF",
    "BindError",
    "BoundSocket",
    "InheritedSockets",
    "Listening",
    "bind_datagram_sockets",
    "bind_stream_sockets",
    "classify_bind_error",
    "duplicate_socket",
    "receive_buffer_size",
]

BACKLOG = 1024

#: Receive buffer requested for UDP listeners.  Loss around 1 Gbit/s comes
#: from bursts overflowing this buffer, not from CPU: 4 MiB cut it from
#: 7-16 % to 2-6 % on the reference machine.
UDP_RCVBUF = 4 * 1024 * 1024

# Linux: SO_RCVBUFFORCE lets a privileged process exceed net.core.rmem_max.
_SO_RCVBUFFORCE: int | None = getattr(
    socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None
)

_IPV6_UNAVAILABLE = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT}


class BindError(PortunusError):
    """A listen port could not be bound; C{code} says why."""

    def __init__(self, code: str, address: str, port: int, reason: str) -> None:
        where = format_host_port(address, port)
        super().__init__(code, f"cannot listen on {where}: {reason}", port=port, address=address)
        self.address = address
        self.port = port


@attrs.frozen
class BoundSocket:
    """
    A bound, non-blocking socket (listening, for TCP) not yet given to a
    reactor.
    """

    sock: socket.socket
    address: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return self.sock.family


def duplicate_socket(fileno: int) -> socket.socket:
    """A new descriptor, as a non-blocking socket, for the socket C{fileno} names."""
    sock = socket.socket(fileno=os.dup(fileno))
    sock.setblocking(False)
    return sock


@attrs.frozen
class Listening:
    """A listen socket a reactor serves: where it is bound, and the reactor's port."""

    address: str
    port: int
    listener: Any

    def duplicate(self) -> BoundSocket | None:
        """
        A duplicate of the socket, or None when the reactor's port has no
        descriptor (a test's memory reactor).
        """
        fileno = getattr(self.listener, "fileno", None)
        if fileno is None:
            return None
        return BoundSocket(duplicate_socket(fileno()), self.address, self.port)


def _same_address(address: str) -> str:
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address


class InheritedSockets:
    """
    The listening sockets a replaced rule leaves to its new version,
    by (address, port, kind).

    They are duplicates: the old version stops accepting and drains as on
    any removal, while the kernel socket stays open for the new version,
    and connections waiting in its accept queue are accepted by the new
    one.  The new version's bind L{take}s what it listens on again;
    L{close} releases the rest, which closes the ports no longer used.
    """

    def __init__(self, sockets: Iterable[BoundSocket] = ()) -> None:
        self._sockets: dict[tuple[str, int, int], BoundSocket] = {}
        for bound in sockets:
            key = (_same_address(bound.address), bound.port, int(bound.sock.type))
            previous = self._sockets.get(key)
            if previous is not None:
                previous.sock.close()
            self._sockets[key] = bound

    @classmethod
    def duplicate(cls, sockets: Iterable[BoundSocket]) -> InheritedSockets:
        """Duplicates of C{sockets} (which stay open and stay the caller's)."""
        return cls(
            BoundSocket(duplicate_socket(b.sock.fileno()), b.address, b.port) for b in sockets
        )

    def __len__(self) -> int:
        return len(self._sockets)

    def take(self, address: str, port: int, kind: socket.SocketKind) -> socket.socket | None:
        """The socket bound on C{address}:C{port} for C{kind}, now the caller's; or None."""
        bound = self._sockets.pop((_same_address(address), port, int(kind)), None)
        return None if bound is None else bound.sock

    def close(self) -> None:
        """Close every socket not taken."""
        sockets, self._sockets = self._sockets, {}
        for bound in sockets.values():
            bound.sock.close()


def classify_bind_error(error: OSError) -> str:
    """Map a bind errno to the stable code an operator sees."""
    if error.errno == errno.EADDRINUSE:
        return "port_in_use"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission_denied"
    return "bind_failed"


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def receive_buffer_size(sock: socket.socket) -> int:
    """
    The receive buffer the kernel granted C{sock}, comparable with what
    was requested: Linux reports twice the requested size (the extra half
    is its bookkeeping), so its figure is halved here.
    """
    reported = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return reported // 2 if sys.platform.startswith("linux") else reported


def _request_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for C{size} bytes of receive buffer; never fail the bind over it."""
    if _SO_RCVBUFFORCE is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
            return
        except OSError:
            pass  # Unprivileged: fall back to the rmem_max-capped request.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _bind_one(
    address: str, port: int, kind: socket.SocketKind, reuse_port: bool = False
) -> socket.socket:
    family = _family(address)
    sock = socket.socket(family, kind)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            _request_receive_buffer(sock, UDP_RCVBUF)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_all(
    addresses: Iterable[str],
    ports: Iterable[int],
    kind: socket.SocketKind,
    reuse_port: bool = False,
    inherited: InheritedSockets | None = None,
) -> list[BoundSocket]:
    addresses = tuple(addresses)
    bound: list[BoundSocket] = []
    try:
        for port in ports:
            for address in addresses:
                kept = inherited.take(address, port, kind) if inherited is not None else None
                if kept is not None:
                    bound.append(BoundSocket(kept, address, port))
                    continue
                try:
                    sock = _bind_one(address, port, kind, reuse_port)
                except OSError as e:
                    if address == "::" and e.errno in _IPV6_UNAVAILABLE:
                        continue
                    raise BindError(
                        classify_bind_error(e), address, port, e.strerror or str(e)
                    ) from e
                bound.append(BoundSocket(sock, address, port))
    except BaseException:
        for b in bound:
            b.sock.close()
        raise
    return bound


def bind_stream_sockets(
    addresses: Iterable[str],
    ports: Iterable[int],
    inherited: InheritedSockets | None = None,
) -> list[BoundSocket]:
    """
    Bind and listen on every (address, port) pair, all or nothing.

    The IPv6 wildcard is skipped, not failed, on hosts without IPv6, so the
    default dual-stack rule still starts there.  On any other failure every
    socket bound so far is closed and L{BindError} names the first port
    that failed.

    @param inherited: listening sockets of the rule this one replaces; a
        pair found there is taken rather than bound again.
    """
    return _bind_all(addresses, ports, socket.SOCK_STREAM, inherited=inherited)


def bind_datagram_sockets(
    addresses: Iterable[str],
    ports: Iterable[int],
    reuse_port: bool = False,
    inherited: InheritedSockets | None = None,
) -> list[BoundSocket]:
    """
    Bind a UDP socket on every (address, port) pair, all or nothing, with
    the same rules and errors as L{bind_stream_sockets}.

    With C{reuse_port}, several such sets can be bound to the same ports
    (one per worker process): the kernel then sends each client's
    datagrams to one socket consistently, so a flow stays in one worker.

    Each socket asks for L{UDP_RCVBUF} bytes of receive buffer; the kernel
    may grant less (see L{receive_buffer_size}) and the bind still succeeds.
    """
    return _bind_all(addresses, ports, socket.SOCK_DGRAM, reuse_port, inherited)
