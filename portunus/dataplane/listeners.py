"""
Binding listen sockets.

Sockets are created here rather than by C{reactor.listenTCP} so that each
gets exactly the options Portunus uses (C{SO_REUSEADDR}, C{IPV6_V6ONLY} on
the IPv6 wildcard so IPv4 and IPv6 are separate listeners, backlog 1024),
bind errors map to stable codes with the offending port, and a bound socket
can be adopted by this reactor or handed to a worker process later.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

import attrs

from portunus.errors import PortunusError

__all__ = [
    "BACKLOG",
    "BindError",
    "BoundSocket",
    "bind_stream_sockets",
    "classify_bind_error",
]

BACKLOG = 1024

_IPV6_UNAVAILABLE = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT}


class BindError(PortunusError):
    """A listen port could not be bound; C{code} says why."""

    def __init__(self, code: str, address: str, port: int, reason: str) -> None:
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        super().__init__(
            code, f"cannot listen on {where}: {reason}", port=port, address=address
        )
        self.address = address
        self.port = port


@attrs.frozen
class BoundSocket:
    """A bound, listening, non-blocking socket not yet given to a reactor."""

    sock: socket.socket
    address: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return self.sock.family


def classify_bind_error(error: OSError) -> str:
    """Map a bind errno to the stable code an operator sees."""
    if error.errno == errno.EADDRINUSE:
        return "port_in_use"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission_denied"
    return "bind_failed"


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _bind_one(address: str, port: int, kind: socket.SocketKind) -> socket.socket:
    family = _family(address)
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def bind_stream_sockets(addresses: Iterable[str], ports: Iterable[int]) -> list[BoundSocket]:
    """
    Bind every (address, port) pair, all or nothing.

    The IPv6 wildcard is skipped, not failed, on hosts without IPv6, so the
    default dual-stack rule still starts there.  On any other failure every
    socket bound so far is closed and L{BindError} names the first port
    that failed.
    """
    bound: list[BoundSocket] = []
    try:
        for port in ports:
            for address in addresses:
                try:
                    sock = _bind_one(address, port, socket.SOCK_STREAM)
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
