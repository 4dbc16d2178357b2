"""
Live counters for rules and their ports.

Counters are plain mutable objects updated in place by the relay on every
chunk (TCP) or datagram (UDP), so reading them is free and a snapshot is
always current.  They are kept per rule and per listen port; metrics export
only the per-rule totals (bounded cardinality), the per-port view is for
operators who ask for it.

TCP rules use the connection counters, UDP rules the datagram and flow
counters; C{bytes_in}/C{bytes_out} count payload bytes for both.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["LOG_THROTTLE_SECS", "LogThrottle", "PortStats", "RuleStats"]

#: At most one warning per kind per rule in this many seconds; the others
#: are counted and reported with the next one.
LOG_THROTTLE_SECS = 10.0


@attrs.define
class PortStats:
    """Counters for one listen port (or a whole rule)."""

    #: Bytes from clients towards targets.
    bytes_in: int = 0
    #: Bytes from targets back to clients.
    bytes_out: int = 0
    active_connections: int = 0
    total_connections: int = 0
    #: Connections (TCP) or new flows (UDP) dropped because no target could
    #: be reached: dial failures, or an upstream socket that could not be
    #: opened.
    connect_failures: int = 0
    #: UDP datagrams forwarded from clients to targets.
    datagrams_in: int = 0
    #: UDP datagrams forwarded from targets back to clients.
    datagrams_out: int = 0
    #: UDP flows open now.
    active_flows: int = 0
    #: Datagrams that would have opened a new flow but met the rule's
    #: C{udp_max_flows} cap; existing flows are never evicted for them.
    flows_dropped_overflow: int = 0
    #: Flows evicted because their upstream socket got an ICMP error
    #: (port or host unreachable).
    icmp_evictions: int = 0
    #: New flows dropped because the target's hostname did not resolve.
    dns_failures: int = 0
    #: UDP datagrams lost to a failed send in either direction (socket
    #: buffer full, too large for the path, ...).
    send_dropped: int = 0
    #: Datagrams dropped because their flow was still resolving its target
    #: and already held as many datagrams as it may queue.
    flows_pending_drops: int = 0
    #: UDP datagrams dropped by a bandwidth cap, client->target and back.
    bandwidth_dropped_in: int = 0
    bandwidth_dropped_out: int = 0

    def snapshot(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.define
class RuleStats(PortStats):
    """A rule's totals plus the same counters for each of its ports."""

    #: Healthy<->failed transitions of this rule's targets.
    target_failovers_total: int = 0
    #: Connections or flows refused by the rule's rate limits.
    rate_limit_rejects: int = 0
    #: Time connections spent paused by a bandwidth cap, per direction.
    throttle_seconds_in: float = 0.0
    throttle_seconds_out: float = 0.0
    #: Connections (TCP) or new flows (UDP) refused because the rule held
    #: C{max_conns_per_rule} already.
    conn_cap_rejects: int = 0
    #: Connections or new flows refused because the process was down to
    #: its C{reserve_fds} free descriptors.
    fd_reserve_rejects: int = 0
    #: Connections this rule dialled that landed on one of this process's
    #: own listeners (a target that loops back), dropped at the accept.
    self_connections_dropped: int = 0
    #: Target addresses refused because they are local (loopback,
    #: link-local, the host's own) and the rule may not reach them.
    local_target_refusals: int = 0
    ports: dict[int, PortStats] = attrs.field(factory=dict)

    def for_port(self, port: int) -> PortStats:
        stats = self.ports.get(port)
        if stats is None:
            stats = self.ports[port] = PortStats()
        return stats

    def snapshot(self, per_port: bool = False) -> dict[str, Any]:
        totals: dict[str, Any] = attrs.asdict(self, filter=lambda a, _: a.name != "ports")
        if per_port:
            totals["ports"] = {str(p): s.snapshot() for p, s in sorted(self.ports.items())}
        return totals


class LogThrottle:
    """Lets one event through per interval and counts the ones it holds back."""

    __slots__ = ("_interval", "_next", "_suppressed")

    def __init__(self, interval: float = LOG_THROTTLE_SECS) -> None:
        self._interval = interval
        self._next = float("-inf")
        self._suppressed = 0

    def allow(self, now: float) -> int | None:
        """
        C{None} if the event must stay quiet, else how many were held back
        since the last one let through.
        """
        if now < self._next:
            self._suppressed += 1
            return None
        held, self._suppressed = self._suppressed, 0
        self._next = now + self._interval
        return held
