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

from portunus.addresses import format_host_port
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

    def add(self, local: Address) -> None:
        """A socket of this rule's is connecting from C{local}."""
        self._sockets.owners[local] = self

    def discard(self, local: Address) -> None:
        """That socket is closed."""
        if self._sockets.owners.get(local) is self:
            del self._sockets.owners[local]

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


class DialedSockets:
    """The local addresses of every socket this process dialled and still holds."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.owners: dict[Address, DialedBy] = {}

    def owned_by(self, rule: str, stats: RuleStats) -> DialedBy:
        return DialedBy(self, rule, stats)

    def refuse(self, host: str, port: int, listen_port: int) -> bool:
        """
        Whether an accepted connection from C{host}:C{port} on C{listen_port}
        comes from a socket this process dialled; if so it is counted on
        that socket's rule and logged, and the caller closes it.
        """
        owner = self.owners.get((host, port))
        if owner is None:
            return False
        owner.dropped((host, port), listen_port, self._clock.seconds())
        return True


def came_back(dialed: DialedSockets | None, peer: Any, listen_port: int) -> bool:
    """
    Whether the connection a listener on C{listen_port} accepted from
    C{peer} (Twisted's address, C{None} in some tests) is one this process
    dialled; its factory then returns no protocol and the reactor closes it.
    """
    return (
        dialed is not None and peer is not None and dialed.refuse(peer.host, peer.port, listen_port)
    )
