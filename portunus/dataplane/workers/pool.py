"""
The arithmetic and the binding of a multi-process data plane.

The main process binds every listener and its workers serve them, report
their counters, and the main process adds the reports up.  This module
holds the parts that need no process: the worker count option, binding a
rule for N workers, the restart backoff, and the arithmetic on reports
(counters summed, per-target health merged).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import attrs

from portunus.bounds import WORKERS
from portunus.dataplane.listeners import (
    InheritedSockets,
    bind_datagram_sockets,
    bind_stream_sockets,
)
from portunus.dataplane.stats import PortStats, RuleStats
from portunus.model import Protocol, Rule

__all__ = [
    "GAUGES",
    "HEALTHY_RUN_SECS",
    "KILL_GRACE_SECS",
    "RESTART_MAX_SECS",
    "RESTART_MIN_SECS",
    "InheritedListeners",
    "RestartBackoff",
    "WorkerListeners",
    "bind_for_workers",
    "merge_target_states",
    "parse_worker_count",
    "sni_listener_key",
    "sum_snapshots",
    "without_gauges",
]

#: Restart delays for a worker that keeps dying quickly.
RESTART_MIN_SECS = 0.5
RESTART_MAX_SECS = 30.0
#: A worker that ran at least this long resets its restart backoff.
HEALTHY_RUN_SECS = 10.0
#: Grace beyond the drain deadline before stragglers are killed.
KILL_GRACE_SECS = 5.0

#: Counters that say what is open now rather than what happened: a worker
#: that exited has nothing open, whatever its last report said.
GAUGES = ("active_connections", "active_flows")

_COUNTERS = tuple(a.name for a in attrs.fields(RuleStats) if a.name != "ports")
#: Per-target counters that add up across workers.
_TARGET_COUNTERS = ("bytes_in", "bytes_out", "active_connections", "total_connections")


def parse_worker_count(text: str) -> int:
    """C{auto} is the CPU count; otherwise a whole number within L{WORKERS}."""
    if text.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count not in WORKERS:
        raise ValueError(
            f"--workers must be 'auto' or a whole number from {WORKERS.span()}, got {text!r}"
        )
    return count


def sni_listener_key(rule: Rule) -> tuple[tuple[str, ...], int] | None:
    """
    The listener an SNI-routed rule shares with the other SNI rules on its
    port (bound once, for the first of them); None for any other rule.
    """
    if rule.sni_pattern is None and not rule.sni_fallback:
        return None
    return (rule.listen_addresses, rule.listen.start)


@attrs.frozen
class WorkerListeners:
    """The sockets bound for a rule: shared ones, and one set per worker."""

    rule: Rule
    shared: tuple[Any, ...]
    per_worker: tuple[tuple[Any, ...], ...]

    def for_worker(self, index: int) -> tuple[Any, ...]:
        """The sockets worker C{index} serves."""
        return self.shared + (self.per_worker[index] if self.per_worker else ())

    def close(self) -> None:
        for bound in (*self.shared, *(b for group in self.per_worker for b in group)):
            bound.sock.close()

    def duplicate(self) -> InheritedListeners:
        """Duplicates of these sockets, for the rule's next version to bind with."""
        return InheritedListeners(
            InheritedSockets.duplicate(self.shared),
            tuple(InheritedSockets.duplicate(group) for group in self.per_worker),
        )


@attrs.frozen
class InheritedListeners:
    """
    The sockets a replaced rule leaves to its new version: the shared
    ones, and each worker's own (UDP), so worker C{i} keeps its socket
    and the clients the kernel sends to it.
    """

    shared: InheritedSockets = attrs.field(factory=InheritedSockets)
    per_worker: tuple[InheritedSockets, ...] = ()

    def for_worker(self, index: int) -> InheritedSockets | None:
        return self.per_worker[index] if index < len(self.per_worker) else None

    def close(self) -> None:
        """Close every socket not taken."""
        for inherited in (self.shared, *self.per_worker):
            inherited.close()


def bind_for_workers(
    rule: Rule, count: int, inherited: InheritedListeners | None = None
) -> WorkerListeners:
    """
    Bind a rule's sockets for C{count} workers, all or nothing: a TCP
    listener is shared by every worker; UDP ports are bound once per
    worker with C{SO_REUSEPORT}, so each client's datagrams (and so its
    flow) stay with one worker.

    @param inherited: the sockets of the version of the rule this one
        replaces; those on the same (address, port) pairs are taken rather
        than bound again.  The caller closes what is left.
    """
    if rule.protocol is Protocol.TCP:
        shared = inherited.shared if inherited is not None else None
        sockets = bind_stream_sockets(rule.listen_addresses, rule.listen, shared)
        return WorkerListeners(rule, tuple(sockets), ())
    groups: list[tuple[Any, ...]] = []
    try:
        for index in range(count):
            bound = bind_datagram_sockets(
                rule.listen_addresses,
                rule.listen,
                reuse_port=True,
                inherited=inherited.for_worker(index) if inherited is not None else None,
            )
            groups.append(tuple(bound))
    except BaseException:
        for group in groups:
            for b in group:
                b.sock.close()
        raise
    return WorkerListeners(rule, (), tuple(groups))


class RestartBackoff:
    """
    How long to wait before restarting worker C{index}: 0.5 s, doubling up
    to 30 s while it keeps dying young; a run of 10 s or more starts over.
    """

    def __init__(self) -> None:
        self._next: dict[int, float] = {}

    def delay(self, index: int, ran_secs: float) -> float:
        if ran_secs >= HEALTHY_RUN_SECS:
            delay = RESTART_MIN_SECS
        else:
            delay = self._next.get(index, RESTART_MIN_SECS)
        self._next[index] = min(delay * 2, RESTART_MAX_SECS)
        return delay


def _add_snapshot(total: PortStats, snapshot: dict[str, Any]) -> None:
    for name in _COUNTERS:
        if hasattr(total, name):
            setattr(total, name, getattr(total, name) + snapshot.get(name, 0))


def sum_snapshots(snapshots: Iterable[dict[Any, Any]]) -> dict[int, RuleStats]:
    """Add per-rule (and per-port) counters reported by several workers."""
    totals: dict[int, RuleStats] = {}
    for snapshot in snapshots:
        for rule_id, rule_snapshot in snapshot.items():
            stats = totals.setdefault(int(rule_id), RuleStats())
            _add_snapshot(stats, rule_snapshot)
            for port, port_snapshot in rule_snapshot.get("ports", {}).items():
                _add_snapshot(stats.for_port(int(port)), port_snapshot)
    return totals


def without_gauges(rule_snapshot: dict[str, Any]) -> dict[str, Any]:
    """A rule's snapshot (per-port entries included) with L{GAUGES} at zero."""
    result = {**rule_snapshot, **dict.fromkeys(GAUGES, 0)}
    if "ports" in rule_snapshot:
        result["ports"] = {
            port: {**counters, **dict.fromkeys(GAUGES, 0)}
            for port, counters in rule_snapshot["ports"].items()
        }
    return result


def _observed_at(state: dict[str, Any]) -> float:
    """When the reporting worker last saw the target answer or fail."""
    times = [t for t in (state.get("last_success_at"), state.get("last_failure_at")) if t]
    return max(times, default=-math.inf)


def _latest(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def merge_target_states(
    reports: Iterable[list[dict[str, Any]] | None],
) -> list[dict[str, Any]]:
    """
    One rule's per-target states as several workers report them, merged.

    Counters add up.  Health is a judgement each worker makes from its own
    connections and probes; the merged health (and failure streak) is that
    of the worker which saw the target most recently, answering or
    failing, since its view is the freshest.  A worker that has not dialled
    the target at all has no view; when none has, the first report's
    (initial) health stands.  Reports line up by position: every worker
    runs the same rule, so its targets come in the same config order.
    Missing (None) and empty reports are left out.
    """
    present = [r for r in reports if r]
    if not present:
        return []
    merged = []
    for position in range(min(len(r) for r in present)):
        states = [r[position] for r in present]
        freshest = max(states, key=_observed_at)
        entry = dict(states[0])
        entry["health"] = freshest.get("health")
        entry["consecutive_failures"] = freshest.get("consecutive_failures", 0)
        entry["last_success_at"] = _latest(s.get("last_success_at") for s in states)
        entry["last_failure_at"] = _latest(s.get("last_failure_at") for s in states)
        for name in _TARGET_COUNTERS:
            entry[name] = sum(s.get(name, 0) for s in states)
        merged.append(entry)
    return merged
