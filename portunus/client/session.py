"""
The edge's side of the control connection.

Hello goes out only once the TLS handshake has completed, which is also
when the server's certificate pin has been checked: a client never sends
its token to a server it has not verified.  After the Welcome, the session
applies pushed rules through the L{EdgeAgent} and reports stats on a timer.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from portunus import __version__
from portunus.client.agent import EdgeAgent
from portunus.control.commands import (
    FEATURES,
    PROTOCOL_VERSION,
    AuthFailed,
    Hello,
    NotAuthenticated,
    PushRule,
    RemoveRule,
    ReplayDone,
    StatsReport,
    chunk_stats,
)

__all__ = ["ClientSession", "IClientEvents"]

log = Logger()


class IClientEvents(TypingProtocol):
    """What the session tells its owner (the client service)."""

    def session_welcomed(self, session: ClientSession, welcome: dict[str, Any]) -> None: ...

    def session_refused(self, session: ClientSession, reason: str) -> None: ...

    def session_lost(self, session: ClientSession, reason: Failure) -> None: ...


@implementer(IHandshakeListener)
class ClientSession(amp.AMP):
    """One control connection, client side."""

    def __init__(
        self,
        agent: EdgeAgent,
        token: str,
        clock: IReactorTime,
        events: IClientEvents,
        stats_interval: float = 5.0,
        wait_for_handshake: bool = True,
    ) -> None:
        super().__init__()
        self._agent = agent
        self._token = token
        self._clock = clock
        self._events = events
        self._stats_interval = stats_interval
        self._wait_for_handshake = wait_for_handshake
        self._stats_loop: LoopingCall | None = None
        self.welcome: dict[str, Any] | None = None
        self._hello_sent = False

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self._wait_for_handshake:
            self._send_hello()

    def handshakeCompleted(self) -> None:
        self._send_hello()

    def _send_hello(self) -> None:
        if self._hello_sent:
            return
        self._hello_sent = True
        self._agent.begin_session()
        d = self.callRemote(
            Hello,
            token=self._token,
            protocol_version=PROTOCOL_VERSION,
            client_version=__version__,
            features=list(FEATURES),
            addresses=self._agent.hello_addresses(),
        )
        d.addCallbacks(self._welcomed, self._refused)

    def _welcomed(self, welcome: dict[str, Any]) -> None:
        self.welcome = welcome
        self._stats_loop = LoopingCall(self.send_stats)
        self._stats_loop.clock = self._clock
        # Portunus skips the first tick: the first report comes one interval in.
        self._stats_loop.start(self._stats_interval, now=False)
        self._events.session_welcomed(self, welcome)

    def _refused(self, failure: Failure) -> None:
        if failure.check(AuthFailed):
            self._events.session_refused(self, str(failure.value))
        elif self.transport is not None:
            log.failure("Hello failed", failure, event="control.hello_failed")
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        if self._stats_loop is not None and self._stats_loop.running:
            self._stats_loop.stop()
        self._events.session_lost(self, reason)

    def send_stats(self) -> None:
        """One StatsReport (more if it does not fit one AMP value)."""
        sent_at_ms = int(self._clock.seconds() * 1000)
        for chunk in chunk_stats(self._agent.stats_entries()):
            self.callRemote(StatsReport, sent_at_ms=sent_at_ms, stats=chunk)

    # -- commands from the server ----------------------------------------

    def _require_welcome(self) -> None:
        if self.welcome is None:
            raise NotAuthenticated("no Welcome yet: the server must answer Hello first")

    @PushRule.responder
    def push_rule(self, request_id: str, rule: Any, replay: bool | None = None) -> dict[str, Any]:
        self._require_welcome()
        outcome, reason = self._agent.push(rule)
        answer: dict[str, Any] = {"outcome": outcome}
        if reason is not None:
            answer["reason"] = reason
        return answer

    @RemoveRule.responder
    def remove_rule(self, request_id: str, rule_id: int) -> dict[str, Any]:
        self._require_welcome()
        return {"outcome": self._agent.remove(rule_id)}

    @ReplayDone.responder
    def replay_done(self, count: int) -> dict[str, Any]:
        self._require_welcome()
        removed = self._agent.replay_done()
        log.info(
            "server replayed {count} rule(s); {removed} stale rule(s) removed",
            event="control.replay_done",
            count=count,
            removed=len(removed),
        )
        return {"removed": removed}
