"""
The operator HTTP API: one Klein app under C{/v1}.

Routes are thin: each turns a request into calls on the
L{portunus.server.plane.IControlPlane} and their results into JSON.
Everything every route shares lives here, in one seam: bearer
authentication, JSON bodies, the error envelope
(C{{"error": {"code", "message", ...}}} with the registry's HTTP status),
JSON 404/405 answers and the 500 path, which logs the traceback under a
correlation id and shows the client only that id.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from portunus.errors import PortunusError

__all__ = [
    "Answer",
    "ApiContext",
    "make_api",
    "read_json",
    "timestamp",
]

log = Logger(namespace="portunus.server.api")

#: Request bodies larger than this are refused before parsing.
MAX_BODY_BYTES = 1 << 20

Handler = Callable[..., Awaitable[Any]]


@attrs.frozen
class Answer:
    """A handler's result: a status and a JSON body (C{None}: no body)."""

    status: int
    body: object = None


def timestamp(seconds: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC (C{2026-01-02T03:04:05Z}), None kept."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _envelope(request: IRequest, error: PortunusError) -> bytes:
    request.setResponseCode(error.error.http_status)
    request.setHeader(b"content-type", b"application/json")
    if error.code == "unauthenticated":
        request.setHeader(b"www-authenticate", b'Bearer realm="portunus"')
    return json.dumps(error.to_json()).encode("utf-8")


def read_json(request: IRequest, required: bool = True) -> dict[str, Any]:
    """
    The request's JSON object body.  An absent body is C{{}} unless
    C{required}; anything else that is not a JSON object sent as
    C{application/json} is C{invalid_json}.
    """
    content = request.content
    data = content.read(MAX_BODY_BYTES + 1) if content is not None else b""
    if len(data) > MAX_BODY_BYTES:
        raise PortunusError(
            "invalid_json", f"the body is larger than {MAX_BODY_BYTES} bytes; send less"
        )
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
    if not isinstance(body, dict):
        raise PortunusError("invalid_json", "the body must be a JSON object")
    return body


@attrs.define
class ApiContext:
    """What every route handler needs: the plane and the shared seam."""

    plane: Any
    operator_token: str | None
    clock: IReactorTime
    app: Klein = attrs.field(factory=Klein)

    def route(self, path: str, method: str, public: bool = False) -> Callable[[Handler], Handler]:
        """
        Register C{handler(request, **path_args)} (a coroutine function
        returning an L{Answer} or a JSON value, answered 200) under the
        seam: authentication unless C{public}, errors as envelopes.
        """

        def register(handler: Handler) -> Handler:
            def endpoint(request: IRequest, **kwargs: Any) -> Deferred[bytes]:
                return ensureDeferred(self._serve(request, handler, kwargs, public))

            self.app.route(path, methods=[method], endpoint=f"{method} {path}")(endpoint)
            return handler

        return register

    def _authenticate(self, request: IRequest) -> None:
        if not self.operator_token:
            raise PortunusError(
                "unauthenticated",
                "this server has no operator token configured; set operator_token in "
                "server.toml in the server's data dir (portunus-server gen-token makes one) "
                "and restart it",
                reason="no_token_configured",
            )
        header = request.getHeader(b"authorization")
        if header is None:
            raise PortunusError(
                "unauthenticated",
                "missing_token: send Authorization: Bearer <operator_token>",
                reason="missing_token",
            )
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise PortunusError(
                "unauthenticated",
                "missing_token: the Authorization header must be Bearer <operator_token>",
                reason="missing_token",
            )
        if not hmac.compare_digest(token.strip(), self.operator_token.encode("utf-8")):
            raise PortunusError(
                "unauthenticated",
                "the bearer token is not this server's operator_token; "
                "check PORTUNUS_OPERATOR_TOKEN against operator_token in server.toml, or the "
                "operator.token file in the server's data dir",
                reason="invalid_token",
            )

    async def _serve(
        self, request: IRequest, handler: Handler, kwargs: dict[str, Any], public: bool
    ) -> bytes:
        started = self.clock.seconds()
        try:
            if not public:
                self._authenticate(request)
            result = await handler(request, **kwargs)
        except PortunusError as e:
            body = _envelope(request, e)
            outcome = e.code
        except Exception:
            correlation_id = uuid.uuid4().hex
            log.failure(
                "unexpected error answering {method} {path} ({correlation_id})",
                event="api.internal_error",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
                correlation_id=correlation_id,
            )
            body = _envelope(
                request,
                PortunusError(
                    "internal",
                    f"internal error; the server log has details under correlation id "
                    f"{correlation_id}",
                    correlation_id=correlation_id,
                ),
            )
            outcome = "internal"
        else:
            answer = result if isinstance(result, Answer) else Answer(200, result)
            request.setResponseCode(answer.status)
            if answer.body is None:
                body = b""
            else:
                request.setHeader(b"content-type", b"application/json")
                body = json.dumps(answer.body).encode("utf-8")
            outcome = "ok"
        log.debug(
            "{method} {path} -> {outcome}",
            event="api.request",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            outcome=outcome,
            duration_ms=round((self.clock.seconds() - started) * 1000, 3),
        )
        return body


def make_api(plane: Any, operator_token: str | None, clock: IReactorTime) -> Klein:
    """
    The operator API's Klein app over C{plane} (an
    L{portunus.server.plane.IControlPlane}).  C{operator_token} is the
    bearer every C{/v1} route but C{/v1/health} requires; C{None} refuses
    them all with a message saying how to set one.
    """
    from portunus.server.api import clients, rules

    ctx = ApiContext(plane, operator_token, clock)

    @ctx.route("/v1/health", "GET", public=True)
    async def health(request: IRequest) -> object:
        return {"status": "ok"}

    clients.install(ctx)
    rules.install(ctx)

    @ctx.app.handle_errors(NotFound)
    def not_found(request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("latin-1")
        return _envelope(
            request,
            PortunusError("not_found", f"no route {path}; see docs/api.md", path=path),
        )

    @ctx.app.handle_errors(MethodNotAllowed)
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

    return ctx.app
