"""
Live counters for rules and their ports.

Counters are plain mutable objects updated in place by the relay on every
chunk, so reading them is free and a snapshot is always current.  They are
kept per rule and per listen port; metrics export only the per-rule totals
(bounded cardinality), the per-port view is for operators who ask for it.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["PortStats", "RuleStats"]


@attrs.define
class PortStats:
    """Counters for one listen port (or a whole rule)."""

    #: Bytes from clients towards targets.
    bytes_in: int = 0
    #: Bytes from targets back to clients.
    bytes_out: int = 0
    active_connections: int = 0
    total_connections: int = 0
    #: Connections dropped because no target could be reached.
    connect_failures: int = 0

    def snapshot(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.define
class RuleStats(PortStats):
    """A rule's totals plus the same counters for each of its ports."""

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
