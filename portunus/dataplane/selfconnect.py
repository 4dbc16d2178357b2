"""
Connections this process dials that come back to it.

A target that reaches one of the process's own listeners (a rule pointing
at itself through a name that changed, two rules pointing at each other)
would have every connection dial another connection, until the
descriptors run out.  The checks at push and at activation
(L{portunus.targetpolicy}) catch what they can see; this is the run-time
backstop: every dialled socket's local address is kept while it is open,
and an accepted connection whose peer is one of them is closed at once,
counted on the rule that dialled it (C{self_connections_dropped}) and
logged (C{rule.self_connection_dropped}, at most once per 10 seconds per
rule).

With C{--workers N} each worker keeps its own: a loop through a listener
the workers share is cut when a connection lands on the worker that
dialled it, after a few hops rather than at the first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from portunus.addresses import format_host_port, local_form
from portunus.dataplane.stats import LogThrottle, RuleStats

__all__ = ["DialedBy", "DialedSockets", "came_back"]

log = Logger()

Address = tuple[str, int]


class DialedBy:
    """What one rule's dialer tells the process-wide L{DialedSockets}."""

    __slots__ = ("_rule", "_sockets", "_stats", "_throttle")

    def __init__(self, sockets: DialedSockets, rule: str, stats: RuleStats) -> None:
        self._sockets = sockets
        self._rule = rule
        self._stats = stats
        self._throttle = LogThrottle()

    def add(self, local: Address, remote: Address) -> None:
        """A socket of this rule's is connecting from C{local} to C{remote}."""
        self._sockets.owners.setdefault(local, {})[_reached(remote)] = self

    def discard(self, local: Address, remote: Address) -> None:
        """That socket is closed."""
        owners = self._sockets.owners
        bucket = owners.get(local)
        if bucket is not None and bucket.get(_reached(remote)) is self:
            del bucket[_reached(remote)]
            if not bucket:
                del owners[local]

    def dropped(self, peer: Address, listen_port: int, now: float) -> None:
        self._stats.self_connections_dropped += 1
        held = self._throttle.allow(now)
        if held is not None:
            log.warn(
                "rule {rule}: a connection it dialled (from {peer}) came back to this "
                "process's listener on port {listen_port}: its target leads back here; "
                "dropped ({held} more since the last report)",
                event="rule.self_connection_dropped",
                rule=self._rule,
                peer=format_host_port(*peer),
                listen_port=listen_port,
                held=held,
            )


def _reached(remote: Address) -> Address:
    """Where a connection to C{remote} arrives: C{0.0.0.0} arrives on loopback."""
    form = local_form(remote[0])
    return (str(form) if form is not None else remote[0], remote[1])


class DialedSockets:
    """
    The sockets this process dialled and still holds: by local address,
    then by the address they connect to (a local port may be shared by
    connections to different destinations).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.owners: dict[Address, dict[Address, DialedBy]] = {}

    def owned_by(self, rule: str, stats: RuleStats) -> DialedBy:
        return DialedBy(self, rule, stats)

    def refuse(self, transport: Any, listen_port: int) -> bool:
        """
        Whether the accepted connection C{transport} on C{listen_port} is
        one this process dialled (its peer is one of our sockets, and its
        own address is where that socket connects to); if so it is counted
        on that socket's rule and logged, and the caller closes it.
        """
        peer = transport.getPeer()
        bucket = self.owners.get((peer.host, peer.port))
        if not bucket:
            return False
        local = transport.getHost()
        owner = bucket.get((local.host, local.port))
        if owner is None:
            return False
        owner.dropped((peer.host, peer.port), listen_port, self._clock.seconds())
        return True


def came_back(dialed: DialedSockets | None, transport: Any, listen_port: int) -> bool:
    """
    Whether a listener on C{listen_port} accepted C{transport} from one of
    this process's own dialled sockets (the caller then closes it).
    """
    return dialed is not None and dialed.refuse(transport, listen_port)
