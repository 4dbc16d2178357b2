"""
The standalone forwarder as a Twisted service.

It binds every rule in C{privilegedStartService} (so ports below 1024 can be
bound before twistd sheds privileges), refuses to start if any rule failed
to bind, serves them from C{startService} (in this process, or in worker
processes started then), reports per-rule counters periodically, and
drains in-flight connections on shutdown.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger, LogLevel

from portunus.compat import clear_exit_signal
from portunus.dataplane.descriptors import DescriptorBudget
from portunus.dataplane.forwarder import BoundRule, Forwarder
from portunus.dataplane.rlimits import raise_nofile_limit
from portunus.dataplane.splice import splice_disabled_by_env, splice_supported
from portunus.dataplane.workers.forwarder import WorkerForwarder
from portunus.dataplane.workers.pool import WorkerListeners, sni_listener_key
from portunus.errors import PortunusError
from portunus.logging import parse_log_level
from portunus.model import Rule
from portunus.reactors import IProcessReactor
from portunus.standalone.config import StandaloneConfig
from portunus.standalone.forwarder import StandaloneForwarder, forwarder_for
from portunus.standalone.statsock import StatsPublisher, StatsSocketFactory, StatsSocketService
from portunus.tapsupport import install_log_observer

__all__ = ["StandaloneService"]

log = Logger()


class StandaloneService(MultiService):
    """Forwards the rules of one standalone config file."""

    def __init__(
        self,
        config: StandaloneConfig,
        reactor: IProcessReactor,
        forwarder: StandaloneForwarder | None = None,
        log_observer: ILogObserver | None = None,
        stderr: IO[str] | None = None,
        stats_socket: str | None = None,
    ) -> None:
        """
        @param forwarder: serves the rules; a L{WorkerForwarder}
            (C{--workers N}) leaves this process only binding the listeners
            and supervising the workers that serve them.
        @param stats_socket: where to serve the stats socket; None for none.
        """
        super().__init__()
        self.config = config
        self._reactor = reactor
        self.forwarder = forwarder if forwarder is not None else forwarder_for(config, reactor)
        self.workers = self.forwarder.count if isinstance(self.forwarder, WorkerForwarder) else 1
        self._log_observer = log_observer
        self._stderr = stderr if stderr is not None else sys.stderr
        #: What bind_all bound (a BoundRule, or WorkerListeners for workers).
        self._bound: list[Any] | None = None
        self._stats_loop: LoopingCall | None = None
        self._previous_sighup: Any = None
        self.stats_socket: StatsSocketService | None = None
        if stats_socket is not None:
            self.stats_socket = self._stats_socket(stats_socket)
            self.addService(self.stats_socket)

    def _stats_socket(self, path: str) -> StatsSocketService:
        if isinstance(self.forwarder, Forwarder):
            splice = self.forwarder.splice is not None
        else:
            # Each worker's Forwarder decides as a default one does.
            splice = splice_supported() and not splice_disabled_by_env()
        publisher = StatsPublisher(
            self._reactor,
            rules=lambda: self.config.rules,
            counters=self.forwarder.stats,
            refresh_ms=self.config.stats_refresh_ms,
            splice=splice,
            monotonic=time.monotonic,
        )
        factory = StatsSocketFactory(self._reactor, publisher, commands=self)
        return StatsSocketService(self._reactor, path, factory)

    def setServiceParent(self, parent: Any) -> None:
        if self._log_observer is not None:
            install_log_observer(parent, self._log_observer)
        super().setServiceParent(parent)

    # -- binding ----------------------------------------------------------

    def bind_all(self) -> list[tuple[str, PortunusError]]:
        """
        Bind every rule; return the failures (rule name, error) and keep the
        successes for L{startService}.  A failed rule binds nothing.
        """
        failures: list[tuple[str, PortunusError]] = []
        bound: list[Any] = []
        #: SNI-routed ports bound already: their other rules share the
        #: listener (the forwarder only learns of it at activation).
        sni_ports: set[tuple[tuple[str, ...], int]] = set()
        for rule in self.config.rules:
            sni = sni_listener_key(rule)
            joins = sni in sni_ports
            try:
                bound.append(self._joining(rule) if joins else self.forwarder.bind(rule))
                if sni is not None:
                    sni_ports.add(sni)
            except PortunusError as e:
                failures.append((rule.name, e))
                log.error(
                    "rule {rule} failed: {reason}",
                    event="rule.failed",
                    rule=rule.name,
                    rule_id=str(rule.id),
                    reason=e.code,
                    detail=e.message,
                    offending_port=e.fields.get("port"),
                )
        if failures:
            for b in bound:
                b.close()
            bound = []
        self._bound = bound
        return failures

    def _joining(self, rule: Rule) -> BoundRule | WorkerListeners:
        """An SNI rule joining its port's listener: bound with no socket of its own."""
        if isinstance(self.forwarder, WorkerForwarder):
            return WorkerListeners(rule, (), ())
        return BoundRule(rule, ())

    def privilegedStartService(self) -> None:
        failures = self.bind_all()
        if failures:
            self._stderr.write(f"error: {len(failures)} rule(s) failed to bind:\n")
            for name, error in failures:
                self._stderr.write(f"- {name}: {error.code}: {error.message} ({error.hint})\n")
            self._stderr.flush()
            raise SystemExit(1)
        super().privilegedStartService()

    # -- running ----------------------------------------------------------

    def startService(self) -> None:
        if self._bound is None:
            self.privilegedStartService()
        assert self._bound is not None
        bound, self._bound = self._bound, []
        raise_nofile_limit("standalone")
        budget = getattr(self.forwarder, "budget", None)
        if budget is None:
            # Workers derive theirs from the limit they inherit: this one.
            budget = DescriptorBudget.for_limit(
                reserve=self.config.reserve_fds, per_rule=self.config.max_conns_per_rule
            )
        else:
            budget.configure()
        budget.log_settings("standalone")
        for b in bound:
            self.forwarder.activate(b)
        if isinstance(self.forwarder, WorkerForwarder):
            # Each worker is handed every rule activated above.
            self.forwarder.start()
        if self.config.stats_enabled:
            self._stats_loop = LoopingCall(self.report_stats)
            self._stats_loop.clock = self._reactor
            self._stats_loop.start(self.config.stats_log_interval_secs, now=False)
        self._install_sighup()
        log.info(
            "standalone forwarder running {count} rule(s) from {source} in {workers} process(es)",
            event="standalone.started",
            count=len(self.config.rules),
            workers=self.workers,
            source=self.config.source,
            label=self.config.label,
        )
        super().startService()

    def report_stats(self) -> None:
        """Log one C{standalone.stats} event per rule."""
        names = {rule.id: rule.name for rule in self.config.rules}
        for rule_id, stats in self.forwarder.stats().items():
            log.info(
                "rule {rule}: {bytes_in} B in, {bytes_out} B out, "
                "{active_connections} active connections",
                event="standalone.stats",
                rule=names.get(rule_id, "?"),
                rule_id=str(rule_id),
                **stats.snapshot(),
            )

        if isinstance(self.forwarder, Forwarder):
            for port, counters in self.forwarder.sni_stats().items():
                log.info(
                    "SNI port {port}: {exact} exact, {wildcard} wildcard, "
                    "{fallback} fallback, {miss} dropped",
                    event="standalone.sni_stats",
                    port=port,
                    **counters,
                )

    def stopService(self) -> Deferred[None]:
        log.info(
            "stopping: no new connections; draining up to {drain_secs}s",
            event="shutdown.signal",
            drain_secs=self.config.shutdown_drain_secs,
            active_connections=self.forwarder.connection_count(),
        )
        if self._stats_loop is not None and self._stats_loop.running:
            self._stats_loop.stop()
        self._restore_sighup()
        # Children (the stats socket) stop at once; their Deferred joins the drain's.
        children: Deferred[Any] = super().stopService()

        def stopped(_: object) -> None:
            log.info("standalone forwarder stopped", event="standalone.stopped")
            # twistd re-raises the stopping signal at exit so the status shows
            # it; a completed drain is a clean shutdown and exits 0 instead.
            clear_exit_signal(self._reactor)

        d: Deferred[Any] = self.forwarder.stop(self.config.shutdown_drain_secs)
        return d.addCallback(lambda result: children.addCallback(lambda _: result)).addCallback(
            stopped
        )

    # -- requests on the stats socket --------------------------------------

    def reload(self) -> dict[str, Any]:
        """
        Re-read the config without dropping connections: not there yet.

        Provisional: the stats socket's C{reload} request lands here, so
        the hitless reload only has to fill this in (SIGHUP with it).
        """
        raise PortunusError(
            "reload_unsupported",
            "this forwarder cannot reload its configuration yet",
        )

    def set_log_level(self, spec: str) -> dict[str, Any]:
        """
        Change the level of this process's log (and its workers') now.

        Provisional: one level name for everything; per-module filters
        are refused with C{log_level_invalid}.
        """
        try:
            level = parse_log_level(spec)
        except ValueError:
            raise PortunusError(
                "log_level_invalid",
                f"{spec[:64]!r} is not a log level; per-module filters are not supported yet",
            ) from None
        observer: Any = self._log_observer
        previous: Any = getattr(observer, "level", None)
        if previous not in set(LogLevel.iterconstants()):
            raise PortunusError(
                "log_level_unavailable", "this process's log level cannot be changed"
            )
        observer.level = level
        if isinstance(self.forwarder, WorkerForwarder):
            self.forwarder.set_log_level(level.name)
        # Said at a level the new setting still shows.
        shown = level if level in (LogLevel.error, LogLevel.critical) else LogLevel.warn
        log.emit(
            shown,
            "log level changed from {previous} to {current}",
            event="standalone.log_level_changed",
            previous=previous.name,
            current=level.name,
        )
        return {"level": level.name, "previous": previous.name}

    # -- signals ----------------------------------------------------------

    def _install_sighup(self) -> None:
        def on_sighup(signum: int, frame: object) -> None:
            self._reactor.callFromThread(
                log.warn,
                "SIGHUP received: configuration reload is not supported; "
                "restart the service to apply changes",
                event="standalone.sighup_ignored",
            )

        try:
            self._previous_sighup = signal.signal(signal.SIGHUP, on_sighup)
        except ValueError:
            # Not the main thread (e.g. under a test runner); nothing to do.
            self._previous_sighup = None

    def _restore_sighup(self) -> None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
