"""
Reading the stats socket with Twisted: the line protocol, and the two
one-shot uses of it (C{stats --once}, and sending one request).

The socket is read by the reactor, so a slow screen never blocks it and a
quiet socket never blocks the screen.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from portunus.reactors import IStatsSocketReactor
from portunus.standalone.tui.feed import (
    MAX_LINE_BYTES,
    FeedError,
    Hello,
    Snapshot,
    parse_hello,
    parse_snapshot,
)

__all__ = [
    "CONNECT_TIMEOUT_SECS",
    "StatsClientProtocol",
    "StatsSink",
    "connect",
    "read_once",
    "send_request",
]

#: How long connecting to the socket, and waiting for its Hello, may take.
CONNECT_TIMEOUT_SECS = 5.0


class StatsSink(TypingProtocol):
    """What a session's lines are handed to."""

    def hello(self, raw: dict[str, Any], hello: Hello) -> None: ...

    def snapshot(self, raw: dict[str, Any], snapshot: Snapshot) -> None: ...

    def reply(self, raw: dict[str, Any]) -> None: ...

    def ended(self, error: str | None) -> None:
        """The session is over: C{None} at the daemon's end of file, else why."""


class StatsClientProtocol(LineOnlyReceiver):
    """Splits the socket into Hello, Snapshots and replies; any other line is skipped."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_BYTES

    def __init__(self, sink: StatsSink) -> None:
        self.sink = sink
        self.hello: Hello | None = None
        self._error: str | None = None

    def lineReceived(self, line: bytes) -> None:
        if self._error is not None:
            return
        try:
            self._line(line)
        except FeedError as e:
            self._fail(str(e))

    def _line(self, line: bytes) -> None:
        try:
            raw = json.loads(line)
        except ValueError as e:
            raise FeedError(f"a line is not JSON ({e})") from None
        if self.hello is None:
            self.hello = parse_hello(raw)
            self.sink.hello(raw, self.hello)
        elif not isinstance(raw, dict):
            raise FeedError("a line is not a JSON object")
        elif "reply" in raw:
            self.sink.reply(raw)
        elif "seq" in raw:
            self.sink.snapshot(raw, parse_snapshot(raw))
        # Anything else is a message a newer daemon sends: skipped.

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(f"a line is longer than {MAX_LINE_BYTES} bytes")

    def _fail(self, error: str) -> None:
        self._error = error
        if self.transport is not None:
            self.transport.loseConnection()

    def send_request(self, **fields: Any) -> None:
        self.sendLine(json.dumps(fields).encode())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.sink.ended(self._error)


def connect(
    reactor: IStatsSocketReactor, path: str, sink: StatsSink
) -> Deferred[StatsClientProtocol]:
    """
    Connect to the socket at C{path}.

    Fails with L{FeedError} saying what to check when nothing answers.
    """
    endpoint = UNIXClientEndpoint(reactor, path, timeout=int(CONNECT_TIMEOUT_SECS))
    d: Deferred[StatsClientProtocol] = endpoint.connect(
        Factory.forProtocol(lambda: StatsClientProtocol(sink))
    )

    def failed(failure: Failure) -> Failure:
        reason = getattr(failure.value, "osError", None) or failure.value
        raise FeedError(
            f"cannot connect to the stats socket {path}: {_reason(reason)}; is "
            "portunus-standalone running, and is this its [stats] socket_path "
            "(pass --socket PATH)?"
        )

    return d.addErrback(failed)


def _reason(error: object) -> str:
    if isinstance(error, int):
        return os.strerror(error)
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return str(text).strip().rstrip(".")


class _Collector:
    """A sink that fires Deferreds as the lines it waits for arrive."""

    def __init__(self) -> None:
        self.hello_raw: dict[str, Any] | None = None
        self.snapshot_raw: dict[str, Any] | None = None
        self.reply_raw: dict[str, Any] | None = None
        self.waiting: Deferred[None] | None = None
        self.want: Callable[[], bool] = lambda: False

    def hello(self, raw: dict[str, Any], hello: Hello) -> None:
        self.hello_raw = raw
        self._check()

    def snapshot(self, raw: dict[str, Any], snapshot: Snapshot) -> None:
        if self.snapshot_raw is None:
            self.snapshot_raw = raw
        self._check()

    def reply(self, raw: dict[str, Any]) -> None:
        self.reply_raw = raw
        self._check()

    def ended(self, error: str | None) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.errback(FeedError(error or "the daemon closed the socket"))

    def until(
        self, reactor: IStatsSocketReactor, want: Callable[[], bool], timeout: float
    ) -> Deferred[None]:
        self.want = want
        d: Deferred[None] = Deferred()
        self.waiting = d
        self._check()

        def timed_out(failure: Failure) -> Failure:
            if failure.check(DeferredTimeout):
                raise FeedError(f"the daemon sent nothing expected within {timeout:g} s")
            return failure

        return d.addTimeout(timeout, reactor).addErrback(timed_out)

    def _check(self) -> None:
        if self.waiting is not None and self.want():
            waiting, self.waiting = self.waiting, None
            waiting.callback(None)


@inlineCallbacks
def read_once(reactor: IStatsSocketReactor, path: str) -> Any:
    """Fire with C{{"hello": ..., "snapshot": ...}}: the Hello and the first Snapshot."""
    collector = _Collector()
    protocol = yield connect(reactor, path, collector)
    try:
        yield collector.until(
            reactor, lambda: collector.hello_raw is not None, CONNECT_TIMEOUT_SECS
        )
        assert protocol.hello is not None
        # A Snapshot is due within refresh_ms; allow for a busy daemon.
        wait = 2 * protocol.hello.refresh_ms / 1000 + CONNECT_TIMEOUT_SECS
        yield collector.until(reactor, lambda: collector.snapshot_raw is not None, wait)
    finally:
        if protocol.transport is not None:
            protocol.transport.loseConnection()
    return {"hello": collector.hello_raw, "snapshot": collector.snapshot_raw}


@inlineCallbacks
def send_request(reactor: IStatsSocketReactor, path: str, timeout: float, **request: Any) -> Any:
    """Send one request (after the Hello) and fire with its reply."""
    collector = _Collector()
    protocol = yield connect(reactor, path, collector)
    try:
        yield collector.until(
            reactor, lambda: collector.hello_raw is not None, CONNECT_TIMEOUT_SECS
        )
        protocol.send_request(**request)
        yield collector.until(reactor, lambda: collector.reply_raw is not None, timeout)
    finally:
        if protocol.transport is not None:
            protocol.transport.loseConnection()
    return collector.reply_raw
