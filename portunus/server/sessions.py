"""
The server's side of each client's control connection, the factory of the
control listener, and the registry of live sessions keyed by client id.

L{ServerSession} only speaks the protocol; what a command means (checking a
token, redeeming a code, replaying rules, keeping stats) is asked of its
L{ISessionHost}, which the control plane provides.  Until its Hello is
welcomed a session is a stranger: its L{Ticket} at the control port's
L{Gate} bounds how long and how much it may send, and what an edge sends is
checked (L{portunus.server.edgeinput}) before the host sees it.  Junk on
the wire closes the connection and is counted, never logged as a traceback.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypedDict, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from portunus.addresses import format_host_port
from portunus.control.commands import (
    AuthFailed,
    Enroll,
    EnrollmentRefused,
    Hello,
    NotAuthenticated,
    PushRule,
    RemoveRule,
    ReplayDone,
    StatsReport,
)
from portunus.model import Rule
from portunus.rulejson import rule_to_dict
from portunus.server.edgeinput import (
    EdgeInputError,
    check_enroll_code,
    check_hello,
    check_hello_addresses,
    check_stats,
)
from portunus.server.gate import MAX_BYTES_BEFORE_WELCOME, REFUSAL_REASONS, Gate, Ticket

__all__ = [
    "EnrollAnswer",
    "ISessionHost",
    "ServerSession",
    "SessionRegistry",
    "WelcomeValues",
    "control_factory",
]

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

    def stats_received(
        session: ServerSession, sent_at_ms: int, stats: list[dict[str, object]]
    ) -> None:
        """
        A StatsReport arrived: C{stats} are its entries, already checked
        (L{portunus.server.edgeinput.check_stats}); a malformed report
        never gets here.
        """


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@implementer(IHandshakeListener)
class ServerSession(amp.AMP):
    """One client's control connection, server side."""

    def __init__(self, host: ISessionHost, clock: IReactorTime, ticket: Ticket) -> None:
        super().__init__()
        self._host = host
        self._clock = clock
        self._ticket = ticket
        self.client_id: str | None = None
        self.client_name: str | None = None
        self.client_version: str | None = None
        self.features: frozenset[str] = frozenset()
        #: The edge's interface addresses, as its Hello reported them.
        self.addresses: frozenset[str] = frozenset()
        self.remote_addr: str | None = None
        self.connected_at: float | None = None
        self._end_reason = "connection_lost"
        self._authenticating = False
        self._received_before_welcome = 0
        self.lost = False

    # -- connection ------------------------------------------------------

    def makeConnection(self, transport: object) -> None:
        # AMP's own makeConnection logs every connect at info; a stranger's
        # bare connect is not worth a line (the gate counts what matters).
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        super().connectionMade()
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        if host is not None:
            self.remote_addr = format_host_port(host, port)
        self._ticket.started(self._abort)

    def handshakeCompleted(self) -> None:
        self._ticket.tls_ready()

    def dataReceived(self, data: bytes) -> None:
        if self.client_id is None:
            self._received_before_welcome += len(data)
            if self._received_before_welcome > MAX_BYTES_BEFORE_WELCOME:
                self._ticket.refuse(
                    "oversized_hello", f"more than {MAX_BYTES_BEFORE_WELCOME} bytes before Hello"
                )
                return
        try:
            super().dataReceived(data)
        except Exception as e:
            # A box AMP cannot take (no command, an answer to nothing, ...).
            self._protocol_error(_describe(e))
            self._abort()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = True
        self._ticket.ended()
        # Not AMP's connectionLost: it logs every close at info.
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None
        if self.client_id is not None:
            self._host.session_ended(self, self._end_reason)

    def _abort(self) -> None:
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def close(self, reason: str) -> None:
        """Drop this session (revoked, replaced, server stopping)."""
        self._end_reason = reason
        if self.transport is not None:
            self.transport.loseConnection()

    def _require_auth(self) -> None:
        if self.client_id is None:
            raise NotAuthenticated("send Hello with a valid token first")

    # -- junk on the wire ------------------------------------------------

    def _protocol_error(self, detail: str) -> None:
        """
        The peer broke the protocol: a stranger is counted (C{protocol_error}
        in C{control.refusals}), an edge gets a warning.  The caller closes.
        """
        if self.client_id is None:
            self._ticket.note("protocol_error", detail)
        else:
            log.warn(
                "client {client_name} ({client_id}) broke the control protocol: {detail}; "
                "closing its session",
                event="client.protocol_error",
                client_id=self.client_id,
                client_name=self.client_name,
                detail=detail[:200],
            )

    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], object] | None:
        responder = super().locateResponder(name)
        if responder is None:
            return None

        def parsed(box: amp.AmpBox) -> object:
            # AMP parses a command's arguments outside the responder's
            # Deferred, and logs a parse failure as a critical traceback:
            # answer it as a fatal error instead (AMP closes after it).
            try:
                return responder(box)
            except Exception as e:
                detail = f"{name.decode('ascii', 'replace')[:40]} arguments: {_describe(e)}"
                self._protocol_error(detail)
                return fail(amp.RemoteAmpError(b"BAD_ARGUMENTS", detail, fatal=True))

        return parsed

    def unhandledError(self, failure: Failure) -> None:
        if failure.check(amp.RemoteAmpError):
            # A command that wanted no answer was refused (unknown, or sent
            # before Hello): nobody to tell but the log.
            self._protocol_error(failure.getErrorMessage())
            if self.transport is not None:
                self.transport.loseConnection()
            return
        super().unhandledError(failure)

    # -- commands from the client ----------------------------------------

    @Enroll.responder
    def enroll(self, code: str) -> Deferred[EnrollAnswer]:
        if not self._ticket.enrollment_allowed():
            self._ticket.note("enrollment_rate_limited")
            raise EnrollmentRefused("enrollment_rate_limited")
        try:
            check_enroll_code(code)
        except EdgeInputError:
            refused: Deferred[EnrollAnswer] = fail(EnrollmentRefused("enrollment_invalid"))
            return refused.addErrback(self._enroll_refused)
        d = Deferred.fromCoroutine(self._host.redeem_enrollment(code))
        return d.addCallbacks(self._enrolled, self._enroll_refused)

    def _enrolled(self, answer: EnrollAnswer) -> EnrollAnswer:
        self._ticket.enrollment_succeeded()
        return answer

    def _enroll_refused(self, failure: Failure) -> Failure:
        if failure.check(EnrollmentRefused):
            reason = str(failure.value)
            self._ticket.enrollment_failed()
            self._ticket.note(reason if reason in REFUSAL_REASONS else "enrollment_invalid")
        return failure

    @Hello.responder
    def hello(
        self,
        token: str,
        protocol_version: str,
        client_version: str,
        features: list[str],
        addresses: list[str] | None = None,
    ) -> Deferred[dict[str, object]]:
        if self.client_id is not None or self._authenticating:
            log.warn(
                "client {client} sent Hello twice; ignored",
                event="client.hello_after_welcome",
                client=self.client_name,
            )
            raise AuthFailed("hello_after_welcome")
        try:
            declared = check_hello(token, protocol_version, client_version, features)
            own = check_hello_addresses(addresses)
        except EdgeInputError as e:
            self._ticket.note("malformed_hello", str(e))
            self._clock.callLater(0, self.close, "auth_failed")
            raise AuthFailed("malformed_hello") from None
        self._authenticating = True

        def authenticated(identity: tuple[str, str]) -> dict[str, object]:
            if self.lost:
                raise AuthFailed("connection_lost")
            self.client_id, self.client_name = identity
            self.client_version = client_version
            self.features = declared
            self.addresses = own
            self.connected_at = self._clock.seconds()
            self._ticket.welcomed()
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
        try:
            entries = check_stats(sent_at_ms, stats)
        except EdgeInputError as e:
            self._ticket.report_ignored(f"{self.client_name} ({self.client_id})", str(e))
            return {}
        self._host.stats_received(self, sent_at_ms, entries)
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


class _ControlTLSFactory(TLSMemoryBIOFactory):
    """TLS around each session, or nothing when the gate refused the connection."""

    def buildProtocol(self, addr: object) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]
        session = self.wrappedFactory.buildProtocol(addr)
        if session is None:
            return None
        return self.protocol(self, session)


class _SessionFactory(Factory):
    """A session for each connection the gate admits; C{None} for the others."""

    def __init__(self, gate: Gate, make_session: Callable[[Ticket], ServerSession]) -> None:
        self._gate = gate
        self._make_session = make_session

    def buildProtocol(self, addr: object) -> ServerSession | None:
        ticket = self._gate.admit(addr)
        if ticket is None:
            return None
        session = self._make_session(ticket)
        session.factory = self
        return session


def control_factory(
    tls_options: IOpenSSLServerConnectionCreator,
    gate: Gate,
    make_session: Callable[[Ticket], ServerSession],
    clock: IReactorTime | None = None,
) -> TLSMemoryBIOFactory:
    """
    The control listener's factory: C{gate} admits (or closes at once,
    before any TLS work) each connection, then TLS with C{tls_options},
    then the session C{make_session} builds for the admitted ticket.
    """
    return _ControlTLSFactory(tls_options, False, _SessionFactory(gate, make_session), clock)
