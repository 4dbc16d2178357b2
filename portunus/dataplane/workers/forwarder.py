"""
A data plane in N worker processes (C{--workers N}), for the edge and the
standalone forwarder.

L{WorkerForwarder} stands in for the in-process L{Forwarder}, so the
edge's agent and the standalone service drive it the same way.  The main
process binds each rule's listeners itself, so a bind error
(C{port_in_use} ...) is reported exactly as with one process and nothing
is half applied.  It then hands the bound sockets and the rule to every
worker over that worker's link (L{portunus.dataplane.workers.link}):

  - a TCP listener is shared: every worker accepts from the same queue;
  - a UDP port is bound once per worker with C{SO_REUSEPORT}, so a
    client's datagrams (and its flow) stay with one worker;
  - SNI-routed rules on one port share its listener, as in one process.

The main process keeps its own copy of every socket, so a worker that
dies is restarted (with backoff) and gets every current rule again, its
listeners included.  A removal reaches every worker and completes when
all have drained.  Counters are the sum of the workers' reports (sent
every C{report_secs}) plus what exited workers had counted; per-target
health is merged by L{merge_target_states}.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.logger import Logger

from portunus.dataplane.forwarder import (
    DEFAULT_DRAIN_SECS,
    SUPPORTED_PROTOCOLS,
    log_activated,
    log_removed,
    refuse_unless_installable,
)
from portunus.dataplane.listeners import BoundSocket, InheritedSockets
from portunus.dataplane.resolver import ResolverSettings
from portunus.dataplane.sni import SniError, SniRouteTable
from portunus.dataplane.stats import RuleStats
from portunus.dataplane.workers.pool import (
    KILL_GRACE_SECS,
    InheritedListeners,
    RestartBackoff,
    WorkerListeners,
    bind_for_workers,
    merge_target_states,
    sni_listener_key,
    sum_snapshots,
    without_gauges,
)
from portunus.dataplane.workers.process import WorkerProcess, spawn_worker
from portunus.dataplane.workers.worker import REPORT_INTERVAL_SECS
from portunus.errors import PortunusError
from portunus.model import Rule

__all__ = ["WorkerForwarder"]

log = Logger()


@attrs.define
class _Installed:
    """A rule being served: its key (per installation) and its sockets."""

    key: int
    listeners: WorkerListeners

    @property
    def rule(self) -> Rule:
        return self.listeners.rule

    @property
    def sni(self) -> tuple[tuple[str, ...], int] | None:
        """The SNI-routed listener it shares, if any."""
        return sni_listener_key(self.rule)


@attrs.define
class _SniPort:
    """One listener shared by the SNI-routed rules on its port."""

    sockets: tuple[BoundSocket, ...]
    table: SniRouteTable[int] = attrs.field(factory=SniRouteTable)
    #: Rule ids in the order they were installed; a (re)started worker is
    #: handed the listener with the first of them.
    members: list[int] = attrs.field(factory=list)


Launch = Callable[[WorkerProcess], None]


class WorkerForwarder:
    """The L{Forwarder} interface, served by N processes."""

    def __init__(
        self,
        reactor: Any,
        count: int,
        *,
        event_prefix: str,
        drain_secs: float = DEFAULT_DRAIN_SECS,
        report_secs: float = REPORT_INTERVAL_SECS,
        port_stats: bool = True,
        resolver: ResolverSettings | None = None,
        log_level: str = "info",
        log_format: str = "json",
        launch: Launch | None = None,
        reserve_fds: int | None = None,
        max_conns_per_rule: int | None = None,
    ) -> None:
        """
        @param event_prefix: the role running the workers (C{client},
            C{standalone}): the first part of the workers' log events,
            theirs and this process's about them (C{<role>.worker_exited}).
        @param drain_secs: how long a worker told to stop by a signal (not
            by this process) lets its connections finish.
        @param report_secs: how often each worker reports its counters and
            target health: the interval the caller reads them at (a worker
            that crashes loses what it counted since its last report).
        @param port_stats: whether the reports carry each port's counters
            (L{stats} then has them too); without, only each rule's.
        @param resolver: the settings of each worker's DNS resolver for
            host-name targets; without, names go to the reactor's resolver.
        @param launch: starts a worker process and connects its link; the
            default spawns C{python -m portunus.dataplane.workers.worker}.
        @param reserve_fds: each worker's descriptor reserve; derived from
            its open-file limit when C{None} (L{portunus.dataplane.descriptors}).
        @param max_conns_per_rule: each worker's per-rule cap, or C{None}.
        """
        self._reactor = reactor
        self.count = count
        self.event_prefix = event_prefix
        self.report_secs = report_secs
        self._worker_args = [
            *("--event-prefix", event_prefix),
            *("--drain-secs", str(drain_secs)),
            *("--report-secs", str(report_secs)),
            *("--log-level", log_level, "--log-format", log_format),
            *(() if port_stats else ("--no-port-stats",)),
            *(() if resolver is None else ("--resolver", json.dumps(attrs.asdict(resolver)))),
            *(() if reserve_fds is None else ("--reserve-fds", str(reserve_fds))),
            *(
                ()
                if max_conns_per_rule is None
                else ("--max-conns-per-rule", str(max_conns_per_rule))
            ),
        ]
        self._launch = launch if launch is not None else self._spawn
        self.workers: dict[int, WorkerProcess] = {}
        self._installed: dict[int, _Installed] = {}
        self._sni: dict[tuple[tuple[str, ...], int], _SniPort] = {}
        self._keys = itertools.count(1)
        #: What workers that exited had counted, by key (gauges at zero).
        self._retired: dict[int, dict[str, Any]] = {}
        self._retired_targets: dict[int, list[dict[str, Any]]] = {}
        self._backoff = RestartBackoff()
        self._restarts: dict[int, Any] = {}
        self.stopping = False
        #: Workers restarted so far.
        self.restarts = 0

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(i.rule for i in self._installed.values())

    # -- workers ---------------------------------------------------------

    def start(self) -> None:
        for index in range(self.count):
            self._start_worker(index)

    def _start_worker(self, index: int) -> None:
        self._restarts.pop(index, None)
        worker = WorkerProcess(self, index, self._reactor.seconds())
        self.workers[index] = worker
        try:
            self._launch(worker)
        except Exception:
            del self.workers[index]
            log.failure(
                "could not start worker {index}",
                event=f"{self.event_prefix}.worker_spawn_failed",
                index=index,
            )
            self._restart_later(index, 0.0)
            return
        for installed in self._installed.values():
            worker.add(installed.key, installed.rule, self._sockets_for(installed, index))

    def set_log_level(self, level: str) -> None:
        """Every worker logs at C{level} from now on, restarted ones too."""
        self._worker_args[self._worker_args.index("--log-level") + 1] = level
        for worker in self.workers.values():
            worker.set_log_level(level)

    def _spawn(self, worker: WorkerProcess) -> None:
        spawn_worker(self._reactor, worker, self._worker_args)

    def worker_ended(self, worker: WorkerProcess, code: int | None, signal: int | None) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._retire(worker.last)
        if self.stopping:
            return
        delay = self._restart_later(worker.index, self._reactor.seconds() - worker.started)
        log.error(
            "worker {index} exited (code {code}, signal {signal}); restarting in {delay}s",
            event=f"{self.event_prefix}.worker_exited",
            index=worker.index,
            code=code,
            signal=signal,
            delay=delay,
        )

    def _restart_later(self, index: int, ran_secs: float) -> float:
        delay = self._backoff.delay(index, ran_secs)
        self.restarts += 1
        self._restarts[index] = self._reactor.callLater(delay, self._start_worker, index)
        return delay

    def worker_add_failed(self, worker: WorkerProcess, key: int, message: dict[str, Any]) -> None:
        rule = next((i.rule for i in self._installed.values() if i.key == key), None)
        log.error(
            "worker {index} could not serve rule {rule}: {code}",
            event=f"{self.event_prefix}.worker_rule_failed",
            index=worker.index,
            rule=rule.name if rule is not None else None,
            rule_id=str(rule.id) if rule is not None else None,
            code=message.get("code"),
            detail=message.get("message"),
        )

    def _retire(self, last: dict[int, dict[str, Any]]) -> None:
        """Keep what an exited worker counted for the rules still served."""
        current = {i.key for i in self._installed.values()}
        for key, entry in last.items():
            if key not in current:
                continue
            counted = without_gauges(entry.get("stats") or {})
            before = self._retired.get(key)
            if before is not None:
                total = sum_snapshots([{key: before}, {key: counted}])[key]
                counted = total.snapshot(per_port=True)
            self._retired[key] = counted
            targets = entry.get("targets")
            if targets:
                closed = [{**t, "active_connections": 0} for t in targets]
                self._retired_targets[key] = merge_target_states(
                    [self._retired_targets.get(key, []), closed]
                )

    # -- the Forwarder interface -----------------------------------------

    def inherit(self, rule_id: int) -> InheritedListeners:
        """
        Duplicates of the sockets this process holds for rule C{rule_id}
        and releases when it is removed (an SNI-routed rule: its port's
        listener, unless other rules share it), for the rule's new version
        to L{bind} with: the workers are then handed the very sockets they
        were serving.  Empty for a rule not installed.
        """
        installed = self._installed.get(rule_id)
        if installed is None:
            return InheritedListeners()
        if installed.sni is not None:
            port = self._sni[installed.sni]
            if port.members != [rule_id]:
                return InheritedListeners()
            return InheritedListeners(InheritedSockets.duplicate(port.sockets))
        return installed.listeners.duplicate()

    def bind(self, rule: Rule, inherited: InheritedListeners | None = None) -> WorkerListeners:
        """
        Bind every listen socket of C{rule} here, all or nothing, reusing
        what L{inherit} took where the pairs match (the rest is closed).

        @raise PortunusError: as L{Forwarder.bind}.
        """
        try:
            return self._bind(rule, inherited)
        finally:
            if inherited is not None:
                inherited.close()

    def _bind(self, rule: Rule, inherited: InheritedListeners | None) -> WorkerListeners:
        refuse_unless_installable(rule, self._installed, SUPPORTED_PROTOCOLS)
        if sni_listener_key(rule) in self._sni:
            return WorkerListeners(rule, (), ())  # joins the listener its port already has
        return bind_for_workers(rule, self.count, inherited)

    def activate(self, bound: WorkerListeners) -> None:
        """Hand a bound rule to every worker."""
        rule = bound.rule
        sni = sni_listener_key(rule)
        if sni is not None:
            port = self._sni.get(sni) or _SniPort(bound.shared)
            try:
                port.table.add(rule.sni_pattern, rule.id)
            except SniError as e:
                bound.close()
                raise PortunusError(e.code, e.message, rule=rule.name) from e
            port.members.append(rule.id)
            self._sni[sni] = port
        installed = _Installed(next(self._keys), bound)
        self._installed[rule.id] = installed
        for worker in self.workers.values():
            worker.add(installed.key, rule, self._sockets_for(installed, worker.index))
        log_activated(rule, workers=self.count)

    def _sockets_for(self, installed: _Installed, index: int) -> tuple[BoundSocket, ...]:
        if installed.sni is not None:
            port = self._sni[installed.sni]
            return port.sockets if port.members[0] == installed.rule.id else ()
        return installed.listeners.for_worker(index)

    def remove(self, rule_id: int, drain_timeout: float = DEFAULT_DRAIN_SECS) -> Deferred[int]:
        """
        Stop accepting at once in every worker; fire, once all have
        drained, with the connections cut (or UDP flows closed) in total.

        @raise PortunusError: C{rule_not_found}.
        """
        installed = self._installed.pop(rule_id, None)
        if installed is None:
            raise PortunusError("rule_not_found", f"no rule with id {rule_id} is installed")
        key = installed.key
        self._retired.pop(key, None)
        self._retired_targets.pop(key, None)
        waits = [worker.remove(key, drain_timeout) for worker in self.workers.values()]
        self._release(rule_id, installed)
        rule = installed.rule

        return gatherResults(waits).addCallback(lambda cuts: log_removed(sum(cuts), rule))

    def _release(self, rule_id: int, installed: _Installed) -> None:
        """Close this process's copy of the rule's sockets (the workers hold their own)."""
        if installed.sni is None:
            installed.listeners.close()
            return
        port = self._sni[installed.sni]
        port.table.remove(rule_id)
        port.members.remove(rule_id)
        if not port.members:
            del self._sni[installed.sni]
            for bound in port.sockets:
                bound.sock.close()

    def stats(self) -> dict[int, RuleStats]:
        """Every rule's counters, summed over the workers (exited ones included)."""
        ids = {i.key: rule_id for rule_id, i in self._installed.items()}
        snapshots: list[dict[int, Any]] = [
            {ids[k]: s for k, s in self._retired.items() if k in ids}
        ]
        for worker in self.workers.values():
            snapshots.append(
                {ids[k]: e.get("stats") or {} for k, e in worker.last.items() if k in ids}
            )
        totals = sum_snapshots(snapshots)
        return {rule_id: totals.get(rule_id, RuleStats()) for rule_id in self._installed}

    def connection_count(self) -> int:
        """Open TCP connections plus UDP flows, over every rule and worker."""
        return sum(s.active_connections + s.active_flows for s in self.stats().values())

    def target_states(self, rule_id: int) -> list[dict[str, Any]] | None:
        """Per-target health and counters of a multi-target rule, merged over workers."""
        installed = self._installed.get(rule_id)
        if installed is None:
            return None
        key = installed.key
        reports = [w.last[key].get("targets") for w in self.workers.values() if key in w.last]
        reports.append(self._retired_targets.get(key))
        return merge_target_states(reports) or None

    def stop(self, drain_timeout: float = DEFAULT_DRAIN_SECS) -> Deferred[Any]:
        """
        Remove every rule (each worker drains up to C{drain_timeout}), then
        let the workers exit; any still running C{KILL_GRACE_SECS} after
        the drain deadline are killed.  Called once, as the role using it
        stops (the edge: by its agent).
        """
        self.stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        killer = self._reactor.callLater(drain_timeout + KILL_GRACE_SECS, self._kill_all)
        removals = [self.remove(rule_id, drain_timeout) for rule_id in list(self._installed)]

        def exit_workers(_: object) -> Deferred[Any]:
            ended = []
            for worker in list(self.workers.values()):
                worker.exit()
                ended.append(worker.ended)
            return DeferredList(ended)

        def done(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            return result

        return DeferredList(removals).addCallback(exit_workers).addBoth(done)

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            log.warn(
                "worker {index} still running after the drain; killing it",
                event=f"{self.event_prefix}.worker_killed",
                index=worker.index,
            )
            worker.signal("KILL")
