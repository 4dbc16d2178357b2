"""
Run a portunus twistd plugin as a child process and wait on its log events.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd_with_nofile(soft: int, hard: int) -> list[str]:
    """Like L{TWISTD}, with the open-file limit set to (C{soft}, C{hard}) first."""
    return [
        sys.executable,
        "-c",
        "import resource; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "from twisted.scripts.twistd import run; run()",
    ]


class TwistdProcess(ProcessProtocol):
    """
    Collects stdout, parses stderr as JSON log lines, and lets a test wait
    for the first event matching a predicate, or for the exit code.
    """

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.events: list[dict[str, Any]] = []
        self.exited: Deferred[int] = Deferred()
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = []
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                self._notify(event)

    def _notify(self, event: dict[str, Any]) -> None:
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(event):
                self._waiters.remove(waiter)
                d.callback(event)

    def wait_for(self, name: str, **fields: Any) -> Deferred[dict[str, Any]]:
        """Fire with the first event called C{name} whose fields match."""

        def matches(event: dict[str, Any]) -> bool:
            return event.get("event") == name and all(event.get(k) == v for k, v in fields.items())

        for event in self.events:
            if matches(event):
                d: Deferred[dict[str, Any]] = Deferred()
                d.callback(event)
                return d
        d = Deferred()
        self._waiters.append((matches, d))
        return d

    def wait_for_count(self, name: str, count: int) -> Deferred[list[dict[str, Any]]]:
        """Fire with the first C{count} events called C{name}."""
        seen = [e for e in self.events if e.get("event") == name]
        result: Deferred[list[dict[str, Any]]] = Deferred()

        def matches(event: dict[str, Any]) -> bool:
            if event.get("event") == name:
                seen.append(event)
            return len(seen) >= count

        if len(seen) >= count:
            result.callback(seen[:count])
            return result
        waiter: Deferred[dict[str, Any]] = Deferred()
        waiter.addCallback(lambda _: seen[:count]).chainDeferred(result)
        self._waiters.append((matches, waiter))
        return result

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        for _, d in self._waiters:
            d.errback(
                AssertionError(
                    f"process exited ({code}) first; stdout:\n{self.stdout.decode()}\n"
                    f"stderr:\n{self.stderr.decode()}"
                )
            )
        self._waiters.clear()
        self.exited.callback(code if code is not None else -1)

    def signal(self, signum: int) -> None:
        assert self.transport is not None
        self.transport.signalProcess(
            {signal.SIGTERM: "TERM", signal.SIGINT: "INT", signal.SIGHUP: "HUP"}[signum]
        )


def stop_all(reactor: Any, processes: list[TwistdProcess]) -> Deferred[list[int]]:
    """
    SIGTERM every process still running and fire once all have exited;
    one that ignores TERM is killed after 30 s (cleanup, not an assertion).
    """
    waits = []
    for process in processes:
        if not process.exited.called:
            process.signal(signal.SIGTERM)
            assert process.transport is not None
            killer = reactor.callLater(30, process.transport.signalProcess, "KILL")
            process.exited.addBoth(lambda r, k=killer: (k.active() and k.cancel(), r)[1])
            waits.append(process.exited)
    return gatherResults(waits)


def spawn_standalone(reactor: Any, config_path: str, *extra: str) -> TwistdProcess:
    process = TwistdProcess()
    args = [*TWISTD, "--nodaemon", "--pidfile=", "portunus-standalone", "--config", config_path]
    reactor.spawnProcess(
        process, sys.executable, [*args, *extra], env=dict(os.environ), path=os.getcwd()
    )
    return process


#: How often, and how many times, L{file_event} reads a log file.
FILE_POLL_SECS = 0.05
FILE_POLLS = 600


def read_events(path: str) -> list[dict[str, Any]]:
    """Every complete JSON line of the log file at C{path} (none if it is missing)."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    events = []
    for line in text.split(b"\n")[:-1]:
        event = json.loads(line)
        if isinstance(event, dict):
            events.append(event)
    return events


@inlineCallbacks
def file_event(
    reactor: Any, path: str, name: str, process: TwistdProcess | None = None
) -> Generator[Deferred[Any], Any, dict[str, Any]]:
    """
    The first event called C{name} in the log file at C{path}, read every
    L{FILE_POLL_SECS} up to L{FILE_POLLS} times; fails early if C{process}
    exits first.
    """
    for _ in range(FILE_POLLS):
        for event in read_events(path):
            if event.get("event") == name:
                return event
        if process is not None and process.exited.called:
            break
        yield deferLater(reactor, FILE_POLL_SECS, lambda: None)
    raise AssertionError(f"no {name} event in {path}: {read_events(path)[-5:]}")
