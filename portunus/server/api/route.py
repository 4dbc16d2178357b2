"""
Route declarations: what the pipeline enforces and what the OpenAPI
document says about a route, written once, above its handler.

Each route module keeps its routes in one L{Routes} table::

    ROUTES = Routes("rules")

    @ROUTES.route(
        "GET", "/v1/rules/{rule_id}", "getRule", "Read a rule",
        answer="RuleView", codes=("rule_not_found", "not_owner"),
    )
    async def get_rule(ctx: ApiContext, call: Call, rule_id: str) -> object: ...

The declaration (an L{Operation}) holds the method, the path, who may
call the route (its L{Access}, from which its L{Gate}s follow), the audit
action, and the rest of its documentation: summary, bodies, answers and
the codes the handler refuses with.  L{portunus.server.api.catalog} lists
the tables; the app mounts exactly those, and
L{portunus.server.api.openapi} documents them from the same list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from portunus.server.api.request import Access, ApiContext, Handler
from portunus.server.api.schemas import Schema

__all__ = [
    "AUTHENTICATION",
    "BODY_SIZE",
    "CSRF",
    "ONBOARDING",
    "PASSWORD_CHANGE",
    "ROLE",
    "Gate",
    "Operation",
    "Route",
    "Routes",
]

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PATH_PARAMETER = re.compile(r"\{([a-z_]+)\}")

H = TypeVar("H", bound=Handler)


@attrs.frozen
class Gate:
    """One step of the pipeline that can refuse a request, and the codes it refuses with."""

    name: str
    codes: tuple[str, ...]


#: A body over the cap is refused before it is read, before the pipeline
#: (L{portunus.server.api.httplimits}); documented on the routes that take one.
BODY_SIZE = Gate("body_size", ("body_too_large",))
#: Before any superadmin can log in, only bearer tokens pass.
ONBOARDING = Gate("onboarding", ("bootstrap_required",))
#: A session cookie, else a bearer token.
AUTHENTICATION = Gate("authentication", ("unauthenticated", "credential_invalid", "user_disabled"))
#: Cookie-authenticated writes carry Origin, X-Portunus-CSRF and a JSON type.
CSRF = Gate(
    "csrf",
    (
        "csrf_origin_required",
        "csrf_origin_mismatch",
        "csrf_header_required",
        "csrf_content_type_required",
    ),
)
#: A session whose user must change their password reaches only the routes
#: that let them do it.
PASSWORD_CHANGE = Gate("password_change", ("password_change_required",))
#: Superadmin routes refuse users.
ROLE = Gate("role", ("role_required",))


@attrs.frozen
class Operation:
    """One route: who may call it, what it takes, what it answers."""

    method: str
    #: OpenAPI form, C{/v1/rules/{rule_id}}; L{klein_path} is Klein's.
    path: str
    operation_id: str
    summary: str
    tag: str
    access: Access = "authenticated"
    #: Names the route in the audit log (C{rule.push}); C{None}: reads.
    action: str | None = None
    #: Allowed while the session's user must change their password.
    before_password_change: bool = False
    status: int = 200
    #: The success body's schema name; C{None}: no body.
    answer: str | None = None
    #: The success body's media type (JSON unless the route answers L{Raw} or streams).
    media_type: str = "application/json"
    #: The request body's schema name.
    body: str | None = None
    body_required: bool = True
    #: The codes the handler (not the pipeline) can refuse with.
    codes: Sequence[str] = ()
    query: Mapping[str, Schema] = attrs.field(factory=dict)
    #: Headers of the success answer, with an example or what they mean.
    headers: Mapping[str, str] = attrs.field(factory=dict)
    description: str | None = None

    @property
    def klein_path(self) -> str:
        """The path as Klein routes it: C{/v1/rules/<rule_id>}."""
        return _PATH_PARAMETER.sub(r"<\1>", self.path)

    @property
    def path_parameters(self) -> list[str]:
        return _PATH_PARAMETER.findall(self.path)

    @property
    def gates(self) -> tuple[Gate, ...]:
        """The pipeline's steps that can refuse this route's requests, in order."""
        gates = [BODY_SIZE] if self.body is not None else []
        if self.access == "public":
            return tuple(gates)
        gates += [ONBOARDING, AUTHENTICATION]
        if self.method in _MUTATING:
            gates.append(CSRF)
        if not self.before_password_change:
            gates.append(PASSWORD_CHANGE)
        if self.access == "superadmin":
            gates.append(ROLE)
        return tuple(gates)

    def error_codes(self) -> list[str]:
        """Every code this route can answer: its gates', its handler's, C{internal}."""
        codes = [code for gate in self.gates for code in gate.codes]
        return list(dict.fromkeys([*codes, *self.codes, "internal"]))


@attrs.frozen
class Route:
    """A declaration and the handler that serves it."""

    operation: Operation
    #: C{handler(service, call, **path_parameters)}.
    handler: Handler


def _context(ctx: ApiContext) -> ApiContext:
    return ctx


class Routes:
    """
    One module's routes, in the order the document lists them.

    Their handlers take a service first: what C{bind} makes of the API's
    L{ApiContext} (by default the context itself).  A table whose C{bind}
    is C{None} needs more than the context has (the audit store, the
    certificate, the metrics); it is served only where C{make_api} is given
    its service, and the server always gives it.
    """

    def __init__(self, tag: str, *, bind: Callable[[ApiContext], object] | None = _context) -> None:
        self.tag = tag
        self.bind = bind
        self.routes: list[Route] = []

    def route(
        self, method: str, path: str, operation_id: str, summary: str, **details: Any
    ) -> Callable[[H], H]:
        """
        Declare C{method path} with the decorated handler; C{details} are
        the other fields of L{Operation} (C{tag} defaults to the table's).
        """
        operation = Operation(method, path, operation_id, summary, **{"tag": self.tag, **details})

        def register(handler: H) -> H:
            self.routes.append(Route(operation, handler))
            return handler

        return register

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)
