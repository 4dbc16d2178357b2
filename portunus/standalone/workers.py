"""
A multi-process standalone forwarder: the parent binds, N workers serve.

Python runs one thread of bytecode at a time, so one process tops out at
one core.  The parent binds every listener (before it sheds privileges),
then starts N worker processes that inherit the sockets and each run their
own reactor and relays:

  - TCP listeners are shared: every worker accepts from the same queue.
  - UDP listeners are bound once per worker with C{SO_REUSEPORT}: the kernel
    sends a given client's datagrams to the same socket, so a flow (and its
    upstream source port) stays in one worker.

Workers report their counters once a second; the parent sums them (plus
the final counters of workers that exited) for its stats events.  A worker
that dies is restarted with backoff; stopping the service drains them all.
What this shares with the edge's workers is in L{portunus.dataplane.workers.pool}.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from portunus.dataplane.stats import RuleStats
from portunus.dataplane.workers.pool import (
    KILL_GRACE_SECS,
    RestartBackoff,
    WorkerListeners,
    sum_snapshots,
    without_gauges,
)
from portunus.model import Rule
from portunus.standalone.worker import EXIT_CONFIG_CHANGED, config_digest

__all__ = ["WorkerSupervisor"]

log = Logger()


class _WorkerProcess(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = started
        self.last: dict[str, Any] = {}
        self.ended: Deferred[int | None] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            try:
                self.last = json.loads(line)["rules"]
            except (ValueError, KeyError, TypeError):
                log.warn(
                    "worker {index} sent an unreadable report",
                    event="standalone.worker_bad_report",
                    index=self.index,
                )

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.supervisor.worker_ended(self, code, getattr(reason.value, "signal", None))
        self.ended.callback(code)


class WorkerSupervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(
        self,
        reactor: Any,
        config_path: str,
        listeners: list[WorkerListeners],
        count: int,
        drain_secs: float,
        log_level: str,
        log_format: str,
    ) -> None:
        self._reactor = reactor
        self._config_path = os.path.abspath(config_path)
        self._digest = config_digest(config_path)
        self._listeners = listeners
        self.count = count
        self._drain_secs = drain_secs
        self._log_args = ["--log-level", log_level, "--log-format", log_format]
        self.workers: dict[int, _WorkerProcess] = {}
        self._retired: list[dict[str, Any]] = []
        self._backoff = RestartBackoff()
        self._restarts: dict[int, Any] = {}
        self.stopping = False
        self.restarts = 0

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(w.rule for w in self._listeners)

    def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        entries = []
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: 2}
        for group in self._listeners:
            for bound in group.for_worker(index):
                fd = bound.sock.fileno()
                child_fds[fd] = fd
                entries.append(
                    {
                        "rule": group.rule.name,
                        "address": bound.address,
                        "port": bound.port,
                        "fd": fd,
                    }
                )
        process = _WorkerProcess(self, index, self._reactor.seconds())
        args = [
            sys.executable,
            "-m",
            "portunus.standalone.worker",
            "--config",
            self._config_path,
            "--config-sha256",
            self._digest,
            "--index",
            str(index),
            "--listeners",
            json.dumps(entries),
            *self._log_args,
        ]
        self._reactor.spawnProcess(
            process, sys.executable, args, env=dict(os.environ), childFDs=child_fds
        )
        self.workers[index] = process

    def worker_ended(self, process: _WorkerProcess, code: int | None, signal: int | None) -> None:
        self.workers.pop(process.index, None)
        # What it counted stays counted; what it had open is gone with it.
        self._retired.append({rule: without_gauges(s) for rule, s in process.last.items()})
        if self.stopping:
            return
        ran = self._reactor.seconds() - process.started
        delay = self._backoff.delay(process.index, ran, longest=code == EXIT_CONFIG_CHANGED)
        log.error(
            "worker {index} exited (code {code}, signal {signal}); restarting in {delay}s",
            event="standalone.worker_exited",
            index=process.index,
            code=code,
            signal=signal,
            delay=delay,
        )
        self.restarts += 1
        self._restarts[process.index] = self._reactor.callLater(delay, self._spawn, process.index)

    def stats(self) -> dict[int, RuleStats]:
        live = [w.last for w in self.workers.values()]
        return sum_snapshots([*self._retired, *live])

    def connection_count(self) -> int:
        return sum(s.active_connections + s.active_flows for s in self.stats().values())

    def stop(self) -> Deferred[Any]:
        """TERM every worker, wait for their drains; KILL stragglers late."""
        self.stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        waits = []
        for process in list(self.workers.values()):
            if process.transport is not None:
                process.transport.signalProcess("TERM")
            waits.append(process.ended)
        if not waits:
            self._close_listeners()
            return succeed(None)

        def kill() -> None:
            for process in list(self.workers.values()):
                if process.transport is not None:
                    process.transport.signalProcess("KILL")

        killer = self._reactor.callLater(self._drain_secs + KILL_GRACE_SECS, kill)

        def done(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            self._close_listeners()
            return result

        return DeferredList(waits).addBoth(done)

    def _close_listeners(self) -> None:
        for group in self._listeners:
            group.close()
