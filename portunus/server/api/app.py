"""
The operator HTTP API: one Klein app under C{/v1}.

Routes are thin: each turns a request into calls on the
L{portunus.server.plane.IControlPlane} (or the accounts service) and their
results into JSON.  Each is declared once (L{portunus.server.api.route}),
and the route modules' tables are listed once
(L{portunus.server.api.catalog}): this module mounts exactly those, the
OpenAPI document describes exactly those.  Everything every route shares
lives here, in one seam that every C{/v1} request passes, with no second
path; steps 1 to 5 are the gates a route's declaration says it passes:

  1. bootstrap: while no superadmin can log in, only machine bearer tokens
     get through; everything else is 503 C{bootstrap_required};
  2. authenticate: the C{portunus_session} cookie if present (and then
     only it), else C{Authorization: Bearer};
  3. CSRF for cookie-authenticated writes;
  4. the password-change gate for sessions of users who must change theirs;
  5. the route's role (C{superadmin} routes refuse users: C{role_required});
  6. the handler, which checks ownership and grants itself;
  7. audit: every write, and every denial at any step (including a
     handler's 403), of an authenticated caller becomes an audit entry,
     and so does a successful login or onboarding; a request refused
     before anyone authenticated is only counted (the audit's tally: a
     metric and a summary line a minute), so a flood of them cannot fill
     the audit log.  Every request is counted.

The error envelope is C{{"error": {"code", "message", ...}}} with the
registry's HTTP status; the 500 path logs the traceback under a
correlation id and shows the client only that id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from portunus.errors import PortunusError
from portunus.server.api import health
from portunus.server.api.catalog import ROUTE_TABLES
from portunus.server.api.console import Console, is_api_path
from portunus.server.api.openapi import document
from portunus.server.api.request import (
    SESSION_COOKIE,
    Answer,
    ApiContext,
    Call,
    Raw,
    RequestObserver,
    Stream,
    remote_host,
)
from portunus.server.api.route import (
    AUTHENTICATION,
    CSRF,
    PASSWORD_CHANGE,
    ROLE,
    Operation,
    Route,
    Routes,
)
from portunus.server.audit.entry import AuditEntry, AuditSink
from portunus.server.auth.csrf import MUTATING_METHODS, check_csrf
from portunus.server.auth.principal import ANONYMOUS, Principal
from portunus.server.plane import IControlPlane

__all__ = ["make_api"]

#: HTTP statuses whose requests the audit log records as denied.
_DENIED_STATUSES = frozenset({401, 403, 429, 503})

log = Logger(namespace="portunus.server.api")


def _envelope(request: IRequest, error: PortunusError) -> bytes:
    request.setResponseCode(error.error.http_status)
    request.setHeader(b"content-type", b"application/json")
    if error.code == "unauthenticated":
        request.setHeader(b"www-authenticate", b'Bearer realm="portunus"')
    retry_after = error.fields.get("retry_after")
    if isinstance(retry_after, int):
        request.setHeader(b"retry-after", str(retry_after).encode("ascii"))
    return json.dumps(error.to_json()).encode("utf-8")


@attrs.frozen
class _Pipeline:
    """The Klein app and the seam every route is mounted behind."""

    ctx: ApiContext
    app: Klein = attrs.field(factory=Klein)

    def mount(self, routes: Routes, service: object) -> None:
        """Serve every route of C{routes}, each handler called with C{service} first."""
        for route in routes:
            self._add(route, service)

    def _add(self, route: Route, service: object) -> None:
        operation = route.operation

        def endpoint(request: IRequest, **kwargs: Any) -> Deferred[bytes]:
            return ensureDeferred(self._serve(request, route, service, kwargs))

        endpoint_name = f"{operation.method} {operation.path}"
        self.app.route(operation.klein_path, methods=[operation.method], endpoint=endpoint_name)(
            endpoint
        )

    async def _principal(self, call: Call, operation: Operation) -> Principal:
        """
        Steps 1 to 5 of the pipeline, the gates of C{operation}; a refusal
        raises its error.  The principal is set on C{call} as soon as it is
        known, so a later refusal (CSRF, password change, role) is audited
        under its name.
        """
        accounts = self.ctx.accounts
        request = call.request
        cookie = request.getCookie(SESSION_COOKIE)
        header = request.getHeader(b"authorization")
        bearer: str | None = None
        if cookie is None and header is not None:
            scheme, _, token = header.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip().decode("latin-1")
        if not accounts.bootstrapped():
            # Machine tokens keep automation working on a fresh server;
            # everyone else is sent to onboarding.
            if bearer is not None:
                call.principal = await accounts.authenticate_bearer(bearer)
                return _check_role(call.principal, operation)
            raise PortunusError(
                "bootstrap_required",
                "no superadmin exists yet: open the console and onboard with the setup token "
                "portunus-server onboarding-token prints (the server keeps it in "
                "onboarding.token in its data dir)",
            )
        if cookie is not None:
            remote = remote_host(request)
            principal = await accounts.authenticate_session(cookie.decode("latin-1"), remote)
            call.principal = principal
            if CSRF in operation.gates:
                check_csrf(request, self.ctx.public_origin)
            if principal.password_change_required and PASSWORD_CHANGE in operation.gates:
                raise PortunusError(
                    "password_change_required",
                    "change your password first: POST /v1/users/me/password",
                )
            return _check_role(principal, operation)
        if bearer is None:
            raise PortunusError(
                "unauthenticated",
                "log in, or send Authorization: Bearer <token> (the operator token from "
                "server.toml or the operator.token file in the server's data dir)",
                reason="missing_token",
            )
        call.principal = await accounts.authenticate_bearer(bearer)
        return _check_role(call.principal, operation)

    async def _serve(
        self, request: IRequest, route: Route, service: object, kwargs: dict[str, Any]
    ) -> bytes:
        operation = route.operation
        started = self.ctx.clock.seconds()
        call = Call(request, None, uuid.uuid4().hex, action=operation.action)
        status = 200
        try:
            if AUTHENTICATION in operation.gates:
                call.principal = await self._principal(call, operation)
            result = await route.handler(service, call, **kwargs)
        except PortunusError as e:
            body = _envelope(request, e)
            reason = e.code
            status = e.error.http_status
        except Exception:
            log.failure(
                "unexpected error answering {method} {path} ({correlation_id})",
                event="api.internal_error",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
                correlation_id=call.correlation_id,
            )
            body = _envelope(
                request,
                PortunusError(
                    "internal",
                    f"internal error; the server log has details under correlation id "
                    f"{call.correlation_id}",
                    correlation_id=call.correlation_id,
                ),
            )
            reason = "internal"
            status = 500
        else:
            if isinstance(result, Stream):
                request.setResponseCode(200)
                request.setHeader(b"content-type", result.content_type.encode("ascii"))
                for name, value in result.headers:
                    request.setHeader(name.encode("ascii"), value.encode("ascii"))
                await self._finish(call, "allow", "ok", 200, started)
                try:
                    await result.run(request)
                except CancelledError:
                    pass
                except Exception:
                    log.failure("stream {path} failed", path=request.path.decode("latin-1"))
                return b""
            answer = result if isinstance(result, Answer | Raw) else Answer(200, result)
            status = answer.status
            request.setResponseCode(answer.status)
            if isinstance(answer, Raw):
                request.setHeader(b"content-type", answer.content_type.encode("ascii"))
                body = answer.body
            elif answer.body is None:
                body = b""
            else:
                request.setHeader(b"content-type", b"application/json")
                body = json.dumps(answer.body).encode("utf-8")
            reason = "ok"
        outcome = "deny" if status in _DENIED_STATUSES else "allow"
        await self._finish(call, outcome, reason, status, started)
        return body

    async def _finish(
        self, call: Call, outcome: str, reason: str, status: int, started: float
    ) -> None:
        """
        Log, count and audit a request that is answered: an entry for an
        authenticated write or denial (waiting for it to be written when
        the audit queue is full), a tally for a refusal before anyone
        authenticated.
        """
        request = call.request
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1")
        principal = call.principal
        actor = principal.user_id if principal is not None else (call.actor or ANONYMOUS)
        fields = {
            "method": method,
            "path": path,
            "actor": actor,
            "role": principal.role.value if principal is not None else None,
            "auth_method": principal.auth_method.value if principal is not None else None,
            "outcome": outcome,
            "reason": reason,
            "status": status,
            "correlation_id": call.correlation_id,
            "duration_ms": round((self.ctx.clock.seconds() - started) * 1000, 3),
        }
        self.ctx.observer.request_done(outcome, reason)
        if principal is None and status >= 400:
            # Anyone can send these as fast as they like: counted, and
            # logged one by one only at debug.
            log.debug("{method} {path} refused: {reason}", event="operator.deny", **fields)
            self.ctx.audit.unauthenticated(reason, remote_host(request))
            return
        if outcome == "deny":
            log.warn("{method} {path} denied: {reason}", event="operator.deny", **fields)
        else:
            log.debug("{method} {path} -> {reason}", event="operator.allow", **fields)
        if outcome == "deny" or request.method in MUTATING_METHODS:
            await self.ctx.audit.record(
                AuditEntry(
                    ts=self.ctx.clock.seconds(),
                    actor=actor,
                    outcome="deny" if outcome == "deny" else "allow",
                    role=fields["role"],
                    method=method,
                    path=path,
                    reason=reason,
                    action=call.action,
                    resource_kind=call.resource_kind,
                    resource_value=call.resource_value,
                    correlation_id=call.correlation_id,
                    details=call.details,
                )
            )


def _check_role(principal: Principal, operation: Operation) -> Principal:
    if ROLE in operation.gates and not principal.is_superadmin:
        raise PortunusError("role_required", "only a superadmin may do this")
    return principal


def make_api(
    plane: IControlPlane,
    accounts: Any,
    clock: IReactorTime,
    audit: AuditSink,
    *,
    observer: RequestObserver | None = None,
    public_origin: str | None = None,
    services: Mapping[Routes, object] | None = None,
) -> Klein:
    """
    The operator API's Klein app over C{plane} (an
    L{portunus.server.plane.IControlPlane}) and C{accounts} (an
    L{portunus.server.auth.accounts.Accounts}).  Audit entries go to
    C{audit}; every request's outcome to C{observer} (the metrics).

    Every table of L{ROUTE_TABLES} is served, its handlers given what its
    C{bind} makes of the context, or its entry in C{services}: the tables
    that need more than the plane (audit queries, settings, metrics) are
    served only when C{services} has theirs.
    """
    ctx = ApiContext(plane, accounts, clock, audit, public_origin=public_origin)
    if observer is not None:
        ctx.observer = observer
    given: dict[Routes, object] = {health.ROUTES: document(), **(services or {})}
    strays = [routes.tag for routes in given if routes not in ROUTE_TABLES]
    if strays:
        raise ValueError(
            f"route tables {strays} are not in catalog.ROUTE_TABLES, so the OpenAPI "
            "document would not describe them; add them there"
        )
    pipeline = _Pipeline(ctx)
    for routes in ROUTE_TABLES:
        if routes in given:
            pipeline.mount(routes, given[routes])
        elif routes.bind is not None:
            pipeline.mount(routes, routes.bind(ctx))
    app = pipeline.app
    web = Console.load()

    @app.handle_errors(NotFound)
    def not_found(request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("latin-1")
        if not is_api_path(path):
            # Every path outside /v1 is the console's (index.html fallback).
            return web.render(request)
        return _envelope(
            request,
            PortunusError("not_found", f"no route {path}; see docs/api.md", path=path),
        )

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, MethodNotAllowed)
        allowed = sorted(error.valid_methods or ())
        if allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        return _envelope(
            request,
            PortunusError(
                "method_not_allowed",
                f"{request.method.decode('latin-1')} is not allowed here; use "
                f"{', '.join(allowed) or 'another route'}",
                allowed=allowed,
            ),
        )

    return app
