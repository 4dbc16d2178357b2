"""
One worker process, as its main process sees it.

L{WorkerProcess} is the process (its exit, its signals) and its link
(L{portunus.dataplane.workers.link}): it hands rules over with duplicates of
their sockets (closed once the worker acknowledges them), asks for
removals and fires each when the worker has drained, or has gone away,
and keeps the worker's latest report.  L{spawn_worker} starts
C{python -m portunus.dataplane.workers.worker} on a fresh socketpair.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from portunus.dataplane.listeners import BoundSocket
from portunus.dataplane.workers.link import OneLinkFactory, WorkerLink
from portunus.model import Rule
from portunus.reactors import IProcessReactor
from portunus.rulejson import rule_to_dict

__all__ = ["LINK_FD", "WorkerOwner", "WorkerProcess", "spawn_worker"]

#: The descriptor a worker finds its link on.
LINK_FD = 3


class WorkerOwner(Protocol):
    """Who hears of a worker's exit and of rules it could not serve."""

    #: The role running the workers (C{client}, C{standalone}): the first
    #: part of their log events.
    event_prefix: str

    def worker_ended(self, worker: WorkerProcess, code: int | None, signal: int | None) -> None: ...

    def worker_add_failed(
        self, worker: WorkerProcess, key: int, message: dict[str, Any]
    ) -> None: ...


class WorkerProcess(ProcessProtocol):
    """One worker process and its link, as the main process sees them."""

    def __init__(self, pool: WorkerOwner, index: int, started: float) -> None:
        self.pool = pool
        self.index = index
        self.started = started
        self.link = WorkerLink(self._message, self._link_lost, event_prefix=pool.event_prefix)
        #: The latest report: key -> {"stats": ..., "targets": ...}.
        self.last: dict[int, dict[str, Any]] = {}
        self.ended: Deferred[None] = Deferred()
        #: Duplicates of the descriptors handed over, kept until acknowledged.
        self._held: dict[int, list[int]] = {}
        self._removing: dict[int, list[Deferred[int]]] = {}

    @property
    def linked(self) -> bool:
        return bool(self.link.connected)

    def add(self, key: int, rule: Rule, sockets: tuple[BoundSocket, ...]) -> None:
        if not self.linked:
            return
        fds = [os.dup(bound.sock.fileno()) for bound in sockets]
        self._held.setdefault(key, []).extend(fds)
        entries = [{"address": b.address, "port": b.port} for b in sockets]
        message = {"op": "add", "key": key, "rule": rule_to_dict(rule), "sockets": entries}
        self.link.send(message, fds)

    def remove(self, key: int, drain: float) -> Deferred[int]:
        """Fires with the connections the worker cut, or 0 if it goes away first."""
        self.last.pop(key, None)
        if not self.linked:
            return succeed(0)
        d: Deferred[int] = Deferred()
        self._removing.setdefault(key, []).append(d)
        self.link.send({"op": "remove", "key": key, "drain": drain})
        return d

    def set_log_level(self, level: str) -> None:
        """Tell the worker its new log level (a level name this process parsed)."""
        if self.linked:
            self.link.send({"op": "log_level", "level": level})

    def exit(self) -> None:
        """Ask the worker to exit (its rules are already drained)."""
        self.link.send({"op": "exit"})

    def signal(self, name: str) -> None:
        if self.transport is not None:
            with contextlib.suppress(ProcessExitedAlready):
                self.transport.signalProcess(name)

    def _release(self, key: int) -> None:
        for fd in self._held.pop(key, []):
            os.close(fd)

    def _message(self, message: dict[str, Any], fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        op = message.get("op")
        if op == "report":
            rules = message.get("rules", {})
            self.last = {int(k): v for k, v in rules.items() if isinstance(v, dict)}
        elif op == "added":
            self._release(int(message["key"]))
        elif op == "add_failed":
            self._release(int(message["key"]))
            self.pool.worker_add_failed(self, int(message["key"]), message)
        elif op == "removed":
            for d in self._removing.pop(int(message["key"]), []):
                d.callback(int(message.get("cut", 0)))

    def _link_lost(self, reason: Failure) -> None:
        for key in list(self._held):
            self._release(key)
        removing, self._removing = self._removing, {}
        for waiters in removing.values():
            for d in waiters:
                d.callback(0)

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.pool.worker_ended(self, code, getattr(reason.value, "signal", None))
        self.ended.callback(None)


def spawn_worker(reactor: IProcessReactor, worker: WorkerProcess, args: list[str]) -> None:
    """
    Start C{worker}'s process with its end of a new socketpair on
    L{LINK_FD} (stdin and stdout are pipes it does not use; stderr is
    this process's, so its log lines join the main process's).
    """
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        parent_end.setblocking(False)
        reactor.adoptStreamConnection(
            parent_end.fileno(), socket.AF_UNIX, OneLinkFactory(worker.link)
        )
        argv = [
            sys.executable,
            "-m",
            "portunus.dataplane.workers.worker",
            "--index",
            str(worker.index),
            "--link-fd",
            str(LINK_FD),
            *args,
        ]
        reactor.spawnProcess(
            worker,
            sys.executable,
            argv,
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: 2, LINK_FD: child_end.fileno()},
        )
    finally:
        parent_end.close()
        child_end.close()
