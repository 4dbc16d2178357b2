"""
What the edge agent needs of a data plane.

Two things provide it: the in-process L{portunus.dataplane.Forwarder}
(the default) and L{portunus.dataplane.workers.forwarder.WorkerForwarder}
(C{--workers N}), so the agent is the same either way.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from portunus.dataplane.stats import RuleStats
from portunus.model import Rule

__all__ = ["EdgeForwarder"]


class EdgeForwarder(Protocol):
    def inherit(self, rule_id: int) -> Any:
        """
        Duplicates of the listening sockets rule C{rule_id} holds, taken
        before it is removed for a new version of itself (see L{bind}).
        """

    def bind(self, rule: Rule, inherited: Any = None) -> Any:
        """
        Bind every listen socket of C{rule}, all or nothing, reusing the
        C{inherited} sockets (what L{inherit} returned) on the pairs they
        cover; those not reused are closed, whatever the outcome.

        @raise PortunusError: C{port_in_use}, C{permission_denied},
            C{bind_failed} (naming the port), C{rule_exists} ...
        """

    def activate(self, bound: Any) -> None:
        """Start serving what L{bind} returned."""

    def remove(self, rule_id: int, drain_timeout: float = ...) -> Deferred[int]:
        """Stop accepting now; fire with the connections cut at the drain deadline."""

    def stats(self) -> dict[int, RuleStats]:
        """Cumulative counters of every rule served."""

    def target_states(self, rule_id: int) -> list[dict[str, Any]] | None:
        """Per-target health and counters of a multi-target rule, else None."""

    def stop(self, drain_timeout: float = ...) -> Deferred[Any]:
        """Remove every rule, draining them together."""
