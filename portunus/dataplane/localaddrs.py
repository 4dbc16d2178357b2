"""
This host's own addresses: what "one of the edge's own addresses" means for
the target checks (L{portunus.targetpolicy}) and the edge's Hello.

They come from the interfaces (C{psutil.net_if_addrs}, which reads
C{getifaddrs}), so a DHCP lease or a new VPN address counts as soon as it
is there; L{LocalAddresses} reads them again when its copy is older than
C{max_age} seconds rather than on every check.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import psutil
from twisted.internet.interfaces import IReactorTime

from portunus.addresses import is_local_address, local_form

__all__ = ["MAX_AGE_SECS", "LocalAddresses", "host_addresses"]

#: How long a reading of the interfaces is believed.
MAX_AGE_SECS = 30.0


def host_addresses() -> frozenset[str]:
    """Every IPv4 and IPv6 address on this host's interfaces, without scopes."""
    found = set()
    try:
        interfaces = psutil.net_if_addrs()
    except OSError:
        return frozenset()
    for entries in interfaces.values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                form = local_form(entry.address)
                if form is not None:
                    found.add(str(form))
    return frozenset(found)


class LocalAddresses:
    """The host's addresses, read again once older than C{max_age} seconds."""

    def __init__(
        self,
        clock: IReactorTime,
        read: Callable[[], frozenset[str]] = host_addresses,
        max_age: float = MAX_AGE_SECS,
    ) -> None:
        self._clock = clock
        self._read = read
        self._max_age = max_age
        self._addresses: frozenset[str] = frozenset()
        self._read_at: float | None = None

    def current(self) -> frozenset[str]:
        now = self._clock.seconds()
        if self._read_at is None or now - self._read_at >= self._max_age:
            self._addresses = self._read()
            self._read_at = now
        return self._addresses

    def is_local(self, address: str) -> bool:
        """Loopback, link-local, unspecified, or one of this host's addresses."""
        return is_local_address(address, self.current())
