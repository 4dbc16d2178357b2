"""
What the operator API's route handlers share: what they serve from
(L{ApiContext}), a request as a handler sees it (L{Call}), what a handler
answers (L{Answer}, L{Raw}, L{Stream}), how it reads a JSON body, and
what the pipeline asks of the accounts service.

This module imports nothing else of the API, so every route module and the
pipeline in L{portunus.server.api.app} can import it without a circle.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from portunus.errors import PortunusError
from portunus.server.audit.entry import AuditSink
from portunus.server.auth.principal import Principal
from portunus.server.plane import IControlPlane

__all__ = [
    "SESSION_COOKIE",
    "Access",
    "Answer",
    "ApiContext",
    "Authenticator",
    "Call",
    "Handler",
    "Raw",
    "RequestObserver",
    "Stream",
    "read_json",
    "remote_host",
    "timestamp",
]

#: The console's session cookie.
SESSION_COOKIE = b"portunus_session"

#: Who may call a route: anyone, any authenticated user, superadmins only.
Access = Literal["public", "authenticated", "superadmin"]

#: A route handler: a coroutine function answering an L{Answer}, L{Raw},
#: L{Stream} or a JSON value (answered 200).
Handler = Callable[..., Awaitable[Any]]


@attrs.frozen
class Answer:
    """A handler's result: a status and a JSON body (C{None}: no body)."""

    status: int
    body: object = None


@attrs.frozen
class Raw:
    """A handler's result sent as is: a status, a media type and the bytes."""

    status: int
    content_type: str
    body: bytes


@attrs.frozen
class Stream:
    """
    A handler's result written over time (server-sent events): 200 with
    C{content_type} and C{headers}, then C{run(request)} writes until the
    Deferred it returns fires, and the request finishes.  The request is
    logged and counted when the stream starts; a client that goes away
    cancels that Deferred.
    """

    run: Callable[[IRequest], Deferred[None]]
    content_type: str = "text/event-stream"
    headers: tuple[tuple[str, str], ...] = ()


def timestamp(seconds: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC (C{2026-01-02T03:04:05Z}), None kept."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def read_json(request: IRequest, required: bool = True) -> dict[str, Any]:
    """
    The request's JSON object body.  An absent body is C{{}} unless
    C{required}; anything else that is not a JSON object sent as
    C{application/json} is C{invalid_json}.  The body's size was bounded
    before it was read (L{portunus.server.api.httplimits}).
    """
    content = request.content
    data = content.read() if content is not None else b""
    if not data.strip():
        if required:
            raise PortunusError("invalid_json", "the body is empty; send a JSON object")
        return {}
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/json":
        raise PortunusError(
            "invalid_json",
            "send the body with Content-Type: application/json, not "
            f"{kind.decode('latin-1') or 'none'}",
        )
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PortunusError("invalid_json", f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise PortunusError("invalid_json", "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise PortunusError("invalid_json", "the body must be a JSON object")
    try:
        # An escaped lone surrogate ("\ud800") decodes to a str that the
        # store, the hasher and the logs cannot encode.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PortunusError(
            "invalid_json", "the body holds an unpaired UTF-16 surrogate escape; send text"
        ) from None
    return body


def remote_host(request: IRequest) -> str | None:
    """The peer's IP address (the throttle and sessions key on it)."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else None


class Authenticator(Protocol):
    """What the pipeline asks of the accounts service."""

    def bootstrapped(self) -> bool:
        """A superadmin who can log in exists (onboarding is over)."""

    def authenticate_bearer(self, token: str) -> Deferred[Principal]:
        """
        The principal behind a bearer token: C{credential_invalid},
        C{user_disabled}.
        """

    def authenticate_session(self, secret: str, remote: str | None) -> Deferred[Principal]:
        """
        The principal behind a session cookie's secret, refreshing its
        idle timer: C{credential_invalid} (unknown, revoked, idle or past
        its absolute lifetime), C{user_disabled}.
        """


class RequestObserver(Protocol):
    """Told the outcome of every C{/v1} request (the metrics count them)."""

    def request_done(self, outcome: str, reason: str) -> None: ...


@attrs.define
class Call:
    """
    One request as a handler sees it: the request, who makes it (C{None}
    only on public routes) and what the audit entry should say about it.
    """

    request: IRequest
    principal: Principal | None
    correlation_id: str
    #: The audit action (C{rule.push} ...); the route's by default.
    action: str | None = None
    resource_kind: str | None = None
    resource_value: str | None = None
    details: dict[str, Any] | None = None
    #: Public routes name their actor once known (login: the user id tried).
    actor: str | None = None

    @property
    def who(self) -> Principal:
        """The authenticated principal (routes that are not public)."""
        assert self.principal is not None, "who on a public route"
        return self.principal

    def note(self, kind: str | None = None, value: object = None, **details: Any) -> None:
        """Say which resource the request touched (and safe details) for the audit."""
        if kind is not None:
            self.resource_kind = kind
        if value is not None:
            self.resource_value = str(value)
        if details:
            self.details = {**(self.details or {}), **details}


class _Unobserved:
    def request_done(self, outcome: str, reason: str) -> None:
        pass


@attrs.define
class ApiContext:
    """What the routes serve from: the plane, the accounts, the clock, the audit."""

    plane: IControlPlane
    #: The accounts service (L{portunus.server.auth.accounts.Accounts});
    #: the pipeline uses only its L{Authenticator} part.
    accounts: Any
    clock: IReactorTime
    audit: AuditSink
    observer: RequestObserver = attrs.field(factory=_Unobserved)
    #: C{operator_http_public_origin}: the exact Origin browsers send when
    #: the server sits behind a proxy; C{None}: compare with C{Host}.
    public_origin: str | None = None

    def secure_cookies(self, request: IRequest) -> bool:
        """Whether cookies should carry C{Secure}: the console is served over https."""
        if request.isSecure():
            return True
        forwarded = (request.getHeader(b"x-forwarded-proto") or b"").strip().lower()
        origin = self.public_origin or ""
        return forwarded == b"https" or origin.lower().startswith("https://")
