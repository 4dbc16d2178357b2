"""
Run a portunus twistd plugin as a child process and wait on its log events.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


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


def spawn_standalone(reactor: Any, config_path: str, *extra: str) -> TwistdProcess:
    process = TwistdProcess()
    args = [*TWISTD, "--nodaemon", "--pidfile=", "portunus-standalone", "--config", config_path]
    reactor.spawnProcess(
        process, sys.executable, [*args, *extra], env=dict(os.environ), path=os.getcwd()
    )
    return process
