"""
One TUI session: connect, wait for the Hello, run the screen until the
user quits, the daemon closes the socket, or something goes wrong.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure

from portunus.reactors import IStatsClientReactor
from portunus.standalone.tui.client import CONNECT_TIMEOUT_SECS, connect
from portunus.standalone.tui.dashboard import Dashboard
from portunus.standalone.tui.feed import FeedError, Hello, Snapshot
from portunus.standalone.tui.screen import StatsApp

__all__ = ["run_tui"]


class _Session:
    """The socket's sink: holds Snapshots until the screen is up."""

    def __init__(self) -> None:
        self.hello_received: Deferred[Hello] = Deferred()
        self.app: StatsApp | None = None
        self.pending: list[Snapshot] = []

    def hello(self, raw: dict[str, Any], hello: Hello) -> None:
        self.hello_received.callback(hello)

    def snapshot(self, raw: dict[str, Any], snapshot: Snapshot) -> None:
        if self.app is None:
            self.pending.append(snapshot)
        else:
            self.app.snapshot(snapshot)

    def reply(self, raw: dict[str, Any]) -> None:
        pass  # the TUI sends no requests

    def ended(self, error: str | None) -> None:
        if self.app is not None:
            self.app.finish(0 if error is None else 2, error)
        elif not self.hello_received.called:
            self.hello_received.errback(
                FeedError(error or "the daemon closed the socket before its Hello")
            )


@inlineCallbacks
def run_tui(reactor: IStatsClientReactor, path: str, screen: Any = None) -> Any:
    """
    Fire with C{(exit code, error)}: C{(0, None)} when the user quits or
    the daemon goes away, C{(2, why)} on any error.
    """
    session = _Session()
    try:
        protocol = yield connect(reactor, path, session)
    except FeedError as e:
        return 2, str(e)

    def no_hello(failure: Failure) -> Failure:
        if failure.check(DeferredTimeout):
            raise FeedError(f"no Hello from {path} within {CONNECT_TIMEOUT_SECS:g} s")
        return failure

    try:
        hello = yield session.hello_received.addTimeout(CONNECT_TIMEOUT_SECS, reactor).addErrback(
            no_hello
        )
    except FeedError as e:
        if protocol.transport is not None:
            protocol.transport.loseConnection()
        return 2, str(e)

    def close() -> None:
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    app = StatsApp(reactor, Dashboard(hello), close, screen=screen)
    session.app = app
    for snapshot in session.pending:
        app.dashboard.add_snapshot(snapshot)
    session.pending = []
    app.start()
    result = yield app.done
    return result
