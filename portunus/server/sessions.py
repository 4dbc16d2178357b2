"""
The server's side of each client's control connection, and the registry of
live sessions keyed by client id.

L{ServerSession} only speaks the protocol; what a command means (checking a
token, redeeming a code, replaying rules, keeping stats) is asked of its
L{ISessionHost}, which the control plane provides.
"""

from __future__ import annotations

import itertools
from typing import TypedDict

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import Interface

from portunus.addresses import format_host_port
from portunus.control.commands import (
    AuthFailed,
    Enroll,
    Hello,
    NotAuthenticated,
    PushRule,
    RemoveRule,
    ReplayDone,
    StatsReport,
)
from portunus.model import Rule
from portunus.rulejson import rule_to_dict

__all__ = ["EnrollAnswer", "ISessionHost", "ServerSession", "SessionRegistry", "WelcomeValues"]

log = Logger()

_request_ids = itertools.count(1)


class EnrollAnswer(TypedDict):
    """The answer to C{Enroll}: the client's identity and its token."""

    client_id: str
    client_name: str
    #: The C{host:port} the client dials from now on.
    server_endpoint: str
    token: str


class WelcomeValues(TypedDict):
    """What the plane puts in every Welcome (the answer to C{Hello})."""

    server_version: str
    server_time_ms: int
    udp_flow_idle_secs: int
    udp_max_flows_per_rule: int


class ISessionHost(Interface):
    """What a session needs from the control plane."""

    async def redeem_enrollment(code: str) -> EnrollAnswer:
        """The Enroll answer; raises L{EnrollmentRefused}."""

    async def authenticate(token: str) -> tuple[str, str]:
        """The token's C{(client_id, client_name)}; raises L{AuthFailed}."""

    def welcome_values() -> WelcomeValues:
        """The UDP tunables and server version for the Welcome."""

    def session_started(session: ServerSession) -> None:
        """Hello succeeded: register the session; replay once Welcome is out."""

    def session_ended(session: ServerSession, reason: str) -> None:
        """The connection is gone."""

    def stats_received(session: ServerSession, sent_at_ms: int, stats: object) -> None:
        """A StatsReport arrived; C{stats} is the client's JSON, unchecked."""


class ServerSession(amp.AMP):
    """One client's control connection, server side."""

    def __init__(self, host: ISessionHost, clock: IReactorTime) -> None:
        super().__init__()
        self._host = host
        self._clock = clock
        self.client_id: str | None = None
        self.client_name: str | None = None
        self.client_version: str | None = None
        self.features: frozenset[str] = frozenset()
        self.remote_addr: str | None = None
        self.connected_at: float | None = None
        self._end_reason = "connection_lost"
        self._authenticating = False
        self.lost = False

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        if host is not None:
            self.remote_addr = format_host_port(host, port)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = True
        super().connectionLost(reason)
        if self.client_id is not None:
            self._host.session_ended(self, self._end_reason)

    def close(self, reason: str) -> None:
        """Drop this session (revoked, replaced, server stopping)."""
        self._end_reason = reason
        if self.transport is not None:
            self.transport.loseConnection()

    def _require_auth(self) -> None:
        if self.client_id is None:
            raise NotAuthenticated("send Hello with a valid token first")

    # -- commands from the client ----------------------------------------

    @Enroll.responder
    def enroll(self, code: str) -> Deferred[EnrollAnswer]:
        return Deferred.fromCoroutine(self._host.redeem_enrollment(code))

    @Hello.responder
    def hello(
        self, token: str, protocol_version: str, client_version: str, features: list[str]
    ) -> Deferred[dict[str, object]]:
        if self.client_id is not None or self._authenticating:
            log.warn(
                "client {client} sent Hello twice; ignored",
                event="client.hello_after_welcome",
                client=self.client_name,
            )
            raise AuthFailed("hello_after_welcome")
        self._authenticating = True

        def authenticated(identity: tuple[str, str]) -> dict[str, object]:
            self.client_id, self.client_name = identity
            self.client_version = client_version
            self.features = frozenset(features)
            self.connected_at = self._clock.seconds()
            log.info(
                "client {client_name} ({client_id}) connected from {remote_addr}, "
                "version {client_version}",
                event="client.hello",
                client_id=self.client_id,
                client_name=self.client_name,
                remote_addr=self.remote_addr,
                client_version=client_version,
                protocol_version=protocol_version,
                features=sorted(self.features),
            )
            welcome: dict[str, object] = dict(self._host.welcome_values())
            welcome.update(client_id=self.client_id, client_name=self.client_name)
            self._host.session_started(self)
            return welcome

        def refused(failure: Failure) -> Failure:
            self._authenticating = False
            if failure.check(AuthFailed):
                # Answer, then hang up: a refused client has nothing to say.
                self._clock.callLater(0, self.close, "auth_failed")
            return failure

        d = Deferred.fromCoroutine(self._host.authenticate(token))
        return d.addCallbacks(authenticated, refused)

    @StatsReport.responder
    def stats_report(self, sent_at_ms: int, stats: object) -> dict[str, object]:
        self._require_auth()
        self._host.stats_received(self, sent_at_ms, stats)
        return {}

    # -- commands to the client ------------------------------------------

    def push_rule(self, rule: Rule, replay: bool = False) -> Deferred[tuple[str, str | None]]:
        """The client's outcome for C{rule}: (C{activated}|C{failed}, reason)."""
        prefix = "replay-" if replay else "push-"
        d = self.callRemote(
            PushRule,
            request_id=f"{prefix}{next(_request_ids)}",
            rule=rule_to_dict(rule),
            replay=replay,
        )
        return d.addCallback(lambda answer: (answer["outcome"], answer.get("reason")))

    def remove_rule(self, rule_id: int) -> Deferred[str]:
        d = self.callRemote(RemoveRule, request_id=f"remove-{next(_request_ids)}", rule_id=rule_id)
        return d.addCallback(lambda answer: answer["outcome"])

    def replay_done(self, count: int) -> Deferred[list[int]]:
        d = self.callRemote(ReplayDone, count=count)
        return d.addCallback(lambda answer: answer["removed"])


class SessionRegistry:
    """Live sessions by client id; a new session for an id replaces the old."""

    def __init__(self) -> None:
        self._sessions: dict[str, ServerSession] = {}

    def register(self, session: ServerSession) -> None:
        assert session.client_id is not None
        old = self._sessions.get(session.client_id)
        self._sessions[session.client_id] = session
        if old is not None and old is not session:
            log.info(
                "client {client_id} reconnected; closing its previous session",
                event="client.session_replaced",
                client_id=session.client_id,
            )
            old.close("replaced")

    def unregister(self, session: ServerSession) -> bool:
        """Forget C{session} if it is still the current one for its client."""
        if session.client_id is not None and self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
            return True
        return False

    def get(self, client_id: str) -> ServerSession | None:
        return self._sessions.get(client_id)

    def disconnect(self, client_id: str, reason: str) -> bool:
        session = self._sessions.get(client_id)
        if session is None:
            return False
        session.close(reason)
        return True

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[ServerSession]:
        return list(self._sessions.values())
