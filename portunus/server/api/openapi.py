"""
The operator API as an OpenAPI 3.1 document, served at
C{GET /v1/openapi.json} (public: it describes routes, it holds no secrets).

The document is built from one table, L{OPERATIONS}.  Each operation names
the codes its handler can refuse with; their HTTP statuses come from the
error registry, and the pipeline's own refusals (onboarding, authentication,
CSRF, the password-change gate, the role) are added from the route's access,
so a status is documented exactly where a code path produces it.  Tests hold
the document to the app's routes, to the registry and to every response the
API contract tests receive; CI runs schemathesis against a live server with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from portunus import __version__
from portunus.errors import ERRORS
from portunus.server.api.app import ApiContext
from portunus.server.api.request import SESSION_COOKIE, Access, Call
from portunus.server.api.schemas import (
    AUDIT_LIMIT,
    COMPONENTS,
    FLAG,
    LISTS,
    NEW_PASSWORD_CODES,
    PATH_PARAMETERS,
    RULE_BODY_CODES,
    Schema,
    array,
    integer,
    ref,
    string,
)

__all__ = ["OPERATIONS", "Operation", "document", "install"]

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PATH_PARAMETER = re.compile(r"\{([a-z_]+)\}")


@attrs.frozen
class Operation:
    """One route: who may call it, what it takes, what it answers."""

    method: str
    #: OpenAPI form: C{{rule_id}}, where Klein writes C{<rule_id>}.
    path: str
    operation_id: str
    access: Access
    summary: str
    tag: str
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
    #: Allowed while the session's user must change their password.
    before_password_change: bool = False
    #: Headers of the success answer.
    headers: Mapping[str, str] = attrs.field(factory=dict)
    description: str | None = None


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/v1/health",
        "health",
        "public",
        "Whether the API answers",
        "health",
        answer="Health",
    ),
    Operation(
        "GET",
        "/v1/openapi.json",
        "openapi",
        "public",
        "This document",
        "health",
        answer="OpenApiDocument",
    ),
    Operation(
        "GET",
        "/v1/auth/status",
        "authStatus",
        "public",
        "Whether onboarding is still open",
        "auth",
        answer="AuthStatus",
    ),
    Operation(
        "POST",
        "/v1/auth/onboarding",
        "onboard",
        "public",
        "Create the first superadmin with the setup token (throttled)",
        "auth",
        status=201,
        answer="OnboardedUser",
        body="Onboarding",
        codes=(
            "invalid_json",
            "rate_limited",
            "already_bootstrapped",
            "setup_token_required",
            "setup_token_invalid",
            "reserved_user_id",
            "invalid_user_id",
            "invalid_display_name",
            *NEW_PASSWORD_CODES,
            "password_mismatch",
            "password_hash_failed",
            "user_already_exists",
        ),
    ),
    Operation(
        "POST",
        "/v1/auth/login",
        "login",
        "public",
        "Log in with a password; sets the session cookie (throttled)",
        "auth",
        answer="LoggedIn",
        body="Login",
        codes=("invalid_json", "rate_limited", "invalid_login"),
        headers={"Set-Cookie": "portunus_session=...; Path=/; HttpOnly; SameSite=Lax"},
    ),
    Operation(
        "POST",
        "/v1/auth/logout",
        "logout",
        "authenticated",
        "End this session; expires the cookie",
        "auth",
        status=204,
        before_password_change=True,
        headers={"Set-Cookie": "portunus_session=; Max-Age=0"},
    ),
    Operation(
        "GET",
        "/v1/users/me",
        "me",
        "authenticated",
        "Who the caller is",
        "users",
        answer="Me",
        before_password_change=True,
    ),
    Operation(
        "POST",
        "/v1/users/me/password",
        "changeOwnPassword",
        "authenticated",
        "Change one's own password; one's other sessions end (throttled)",
        "users",
        status=204,
        body="PasswordChange",
        codes=(
            "invalid_json",
            "rate_limited",
            *NEW_PASSWORD_CODES,
            "password_mismatch",
            "password_hash_failed",
        ),
        before_password_change=True,
    ),
    Operation(
        "POST",
        "/v1/users",
        "createUser",
        "superadmin",
        "Create a user",
        "users",
        status=201,
        answer="User",
        body="UserCreate",
        codes=(
            "invalid_json",
            "reserved_user_id",
            "invalid_user_id",
            "invalid_display_name",
            "invalid_role",
            "initial_password_required",
            *NEW_PASSWORD_CODES,
            "validation_failed",
            "password_hash_failed",
            "user_already_exists",
        ),
    ),
    Operation(
        "GET",
        "/v1/users",
        "listUsers",
        "superadmin",
        "List users",
        "users",
        answer="UserList",
    ),
    Operation(
        "GET",
        "/v1/users/{user_id}",
        "getUser",
        "superadmin",
        "Read a user",
        "users",
        answer="User",
        codes=("user_not_found",),
    ),
    Operation(
        "DELETE",
        "/v1/users/{user_id}",
        "removeUser",
        "superadmin",
        "Remove a user with their credentials, grants and rules",
        "users",
        answer="UserRemoval",
        codes=("reserved_user_id", "user_not_found", "cannot_remove_self", "last_superadmin"),
    ),
    Operation(
        "POST",
        "/v1/users/{user_id}/password",
        "resetPassword",
        "superadmin",
        "Reset a user's password, ending their sessions (throttled)",
        "users",
        answer="PasswordResetDone",
        body="PasswordReset",
        body_required=False,
        codes=(
            "invalid_json",
            "validation_failed",
            "rate_limited",
            "reserved_user_id",
            "user_not_found",
            *NEW_PASSWORD_CODES,
            "password_hash_failed",
        ),
    ),
    Operation(
        "POST",
        "/v1/grants",
        "createGrant",
        "superadmin",
        "Let a user push rules on a client's port range",
        "grants",
        status=201,
        answer="Grant",
        body="GrantCreate",
        codes=(
            "invalid_json",
            "user_not_found",
            "invalid_client",
            "client_not_found",
            "client_name_ambiguous",
            "invalid_port_range",
            "invalid_protocol",
            "empty_protocol_set",
            "validation_failed",
        ),
    ),
    Operation(
        "GET",
        "/v1/grants",
        "listGrants",
        "superadmin",
        "List grants",
        "grants",
        answer="GrantList",
        query={"user_id": string("Only this user's grants")},
    ),
    Operation(
        "DELETE",
        "/v1/grants/{grant_id}",
        "revokeGrant",
        "superadmin",
        "Revoke a grant and remove the rules pushed under it",
        "grants",
        answer="GrantRevocation",
        codes=("grant_not_found",),
    ),
    Operation(
        "GET",
        "/v1/clients",
        "listClients",
        "authenticated",
        "List the clients the caller may see, by name then id",
        "clients",
        answer="ClientList",
    ),
    Operation(
        "GET",
        "/v1/clients/{client_id}",
        "getClient",
        "authenticated",
        "Read a client",
        "clients",
        answer="Client",
        codes=("client_not_found",),
    ),
    Operation(
        "POST",
        "/v1/client-enrollments",
        "enrollClient",
        "superadmin",
        "Create a client and its one-time enrollment code",
        "clients",
        status=201,
        answer="Enrollment",
        body="EnrollmentCreate",
        codes=(
            "invalid_json",
            "invalid_name",
            "invalid_client_address",
            "invalid_enrollment_ttl",
        ),
    ),
    Operation(
        "POST",
        "/v1/clients/{client_id}/enrollment",
        "reenrollClient",
        "superadmin",
        "A new enrollment code for an existing client; earlier codes stop working",
        "clients",
        status=201,
        answer="Enrollment",
        body="Reenrollment",
        body_required=False,
        codes=(
            "invalid_json",
            "invalid_client_address",
            "invalid_enrollment_ttl",
            "client_not_found",
            "client_revoked",
        ),
    ),
    Operation(
        "PATCH",
        "/v1/clients/{client_id}",
        "renameClient",
        "superadmin",
        "Rename a client; its live session is kept",
        "clients",
        answer="Client",
        body="ClientRename",
        codes=("invalid_json", "invalid_name", "client_not_found"),
    ),
    Operation(
        "POST",
        "/v1/clients/{client_id}/revoke",
        "revokeClient",
        "superadmin",
        "Revoke a client: its token stops working and its session closes (idempotent)",
        "clients",
        status=204,
        codes=("client_not_found",),
    ),
    Operation(
        "DELETE",
        "/v1/clients/{client_id}",
        "deleteClient",
        "superadmin",
        "Delete a revoked client with its rules",
        "clients",
        status=204,
        codes=("client_not_found", "client_not_revoked"),
    ),
    Operation(
        "POST",
        "/v1/rules",
        "pushRule",
        "authenticated",
        "Push a rule to a client; answers once the client activated it",
        "rules",
        status=201,
        answer="RuleView",
        body="RulePush",
        codes=(
            "invalid_json",
            *RULE_BODY_CODES,
            "exceeds_cap",
            "client_not_found",
            "client_name_ambiguous",
            "client_not_granted",
            "protocol_not_granted",
            "port_outside_grant",
            "client_revoked",
            "client_not_connected",
            "unsupported_protocol",
            "multi_target_unsupported_by_client",
            "sni_unsupported_by_client",
            "proxy_protocol_unsupported_by_client",
            "rate_limit_unsupported_by_client",
            "port_in_use",
            "conflict.sni_route_duplicate",
            "conflict.sni_fallback_duplicate",
            "conflict.legacy_to_sni_unsupported",
            "user_not_found",
            "activation_failed",
            "ack_timeout",
        ),
    ),
    Operation(
        "GET",
        "/v1/rules",
        "listRules",
        "authenticated",
        "List rules by id: a superadmin's all (or one owner's), a user's own",
        "rules",
        answer="RuleViewList",
        codes=("client_not_found", "client_name_ambiguous"),
        query={
            "client": string("Only this client's rules (its id or name)"),
            "owner": string("Only this user's rules (superadmins; ignored for users)"),
        },
    ),
    Operation(
        "GET",
        "/v1/rules/{rule_id}",
        "getRule",
        "authenticated",
        "Read a rule",
        "rules",
        answer="RuleView",
        codes=("rule_not_found", "not_owner"),
    ),
    Operation(
        "DELETE",
        "/v1/rules/{rule_id}",
        "removeRule",
        "authenticated",
        "Remove a rule; the client stops accepting and drains",
        "rules",
        status=204,
        codes=("rule_not_found", "not_owner"),
    ),
    Operation(
        "GET",
        "/v1/rules/{rule_id}/stats",
        "ruleStats",
        "authenticated",
        "The counters the client last reported for a rule",
        "rules",
        answer="RuleStats",
        codes=("rule_not_found", "not_owner"),
        query={"per_port": FLAG},
    ),
    Operation(
        "GET",
        "/v1/rules/{rule_id}/stats/stream",
        "ruleStatsStream",
        "authenticated",
        "A rule's stats as server-sent events",
        "rules",
        answer="EventStream",
        media_type="text/event-stream",
        codes=("rule_not_found", "not_owner", "rate_limited"),
        query={"per_target": FLAG},
        headers={"Cache-Control": "no-cache"},
        description="The stream opens with an `event: stats` carrying the last snapshot "
        "(the JSON of GET /v1/rules/{rule_id}/stats, without per_port), then one `stats` "
        "event per report of the client, a `: keepalive` comment every 30 s, and "
        "`event: removed` when the rule goes away. Streams are limited in all and per "
        "user (rate_limited).",
    ),
    Operation(
        "GET",
        "/v1/audit",
        "listAudit",
        "superadmin",
        "Read the audit log, newest first",
        "audit",
        answer="AuditAnswer",
        codes=("invalid_limit", "invalid_outcome", "invalid_time_range", "invalid_cursor"),
        query={
            "limit": AUDIT_LIMIT,
            "outcome": string(enum=["allow", "deny"]),
            "actor": string("Only this actor's entries"),
            "since": string("RFC 3339; pages the answer", format="date-time"),
            "until": string("RFC 3339; pages the answer", format="date-time"),
            "cursor": string("A next_cursor, to page to older entries"),
        },
        description="Without since, until or cursor: an array of the newest entries; "
        "with any of them: a page `{entries, next_cursor, count}`.",
    ),
    Operation(
        "GET",
        "/v1/audit/export",
        "exportAudit",
        "superadmin",
        "The audit log as NDJSON, oldest first (at most 50000 entries)",
        "audit",
        answer="Ndjson",
        media_type="application/x-ndjson",
        codes=("invalid_outcome", "invalid_time_range"),
        query={
            "outcome": string(enum=["allow", "deny"]),
            "actor": string("Only this actor's entries"),
            "since": string("RFC 3339", format="date-time"),
            "until": string("RFC 3339", format="date-time"),
        },
        headers={
            "Content-Disposition": 'attachment; filename="portunus-audit-<time>.ndjson"',
            "X-Portunus-Export-Truncated": "true, when the 50000 entries cap cut the export",
        },
        description="One AuditEntry JSON object per line.",
    ),
    Operation(
        "GET",
        "/v1/settings/advertised-endpoint",
        "getAdvertisedEndpoint",
        "superadmin",
        "The host:port enrollment URIs name, and where it comes from",
        "settings",
        answer="AdvertisedEndpoint",
    ),
    Operation(
        "PUT",
        "/v1/settings/advertised-endpoint",
        "setAdvertisedEndpoint",
        "superadmin",
        'Override the host:port enrollment URIs name (null or "" clears it)',
        "settings",
        answer="AdvertisedEndpoint",
        body="AdvertisedEndpointChange",
        codes=("invalid_json", "validation_failed", "endpoint_invalid", "endpoint_not_in_cert_san"),
    ),
    Operation(
        "GET",
        "/v1/metrics",
        "metrics",
        "superadmin",
        "The Prometheus metrics, as the metrics listener serves them",
        "metrics",
        answer="Text",
        media_type="text/plain",
    ),
)


def pipeline_codes(operation: Operation) -> list[str]:
    """The codes the shared pipeline can answer before the handler runs."""
    if operation.access == "public":
        return []
    codes = ["bootstrap_required", "unauthenticated", "credential_invalid", "user_disabled"]
    if operation.method in _MUTATING:
        codes += [
            "csrf_origin_required",
            "csrf_origin_mismatch",
            "csrf_header_required",
            "csrf_content_type_required",
        ]
    if not operation.before_password_change:
        codes.append("password_change_required")
    if operation.access == "superadmin":
        codes.append("role_required")
    return codes


def operation_codes(operation: Operation) -> list[str]:
    """Every code an operation can answer: the pipeline's, the handler's, C{internal}."""
    codes = [*pipeline_codes(operation), *operation.codes, "internal"]
    return list(dict.fromkeys(codes))


def _error_response(status: int, codes: Sequence[str]) -> Schema:
    lines = [f"- `{code}`: {ERRORS[code].hint}" for code in codes]
    response: Schema = {
        "description": "Refused:\n" + "\n".join(lines),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        ref("Error"),
                        {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
                    ]
                }
            }
        },
    }
    if "unauthenticated" in codes:
        response["headers"] = {
            "WWW-Authenticate": {
                "description": 'Bearer realm="portunus", when no credentials were sent',
                "schema": string(),
            }
        }
    if "rate_limited" in codes:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the next attempt may pass (rate_limited)",
                "schema": integer(1),
            }
        }
    return response


def _operation(operation: Operation) -> Schema:
    success: Schema = {"description": operation.summary}
    if operation.answer is not None:
        item = LISTS.get(operation.answer)
        schema = array(ref(item)) if item is not None else ref(operation.answer)
        success["content"] = {operation.media_type: {"schema": schema}}
    if operation.headers:
        success["headers"] = {
            name: {"description": example, "schema": string()}
            for name, example in operation.headers.items()
        }
    responses: dict[str, Schema] = {str(operation.status): success}
    by_status: dict[int, list[str]] = {}
    for code in operation_codes(operation):
        by_status.setdefault(ERRORS[code].http_status, []).append(code)
    for status in sorted(by_status):
        responses[str(status)] = _error_response(status, by_status[status])

    parameters: list[Schema] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": PATH_PARAMETERS[name],
        }
        for name in _PATH_PARAMETER.findall(operation.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in operation.query.items()
    ]
    result: Schema = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "description": _access_text(operation),
    }
    if operation.access == "public":
        result["security"] = []
    if parameters:
        result["parameters"] = parameters
    if operation.body is not None:
        result["requestBody"] = {
            "required": operation.body_required,
            "content": {"application/json": {"schema": ref(operation.body)}},
        }
    result["responses"] = responses
    return result


def _access_text(operation: Operation) -> str:
    text = {
        "public": "No authentication.",
        "authenticated": "Any authenticated user.",
        "superadmin": "Superadmins only.",
    }[operation.access]
    if operation.description:
        text += " " + operation.description
    return text


@functools.cache
def _document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Portunus operator API",
            "version": __version__,
            "description": "The control plane's operator API. Errors are "
            '`{"error": {"code", "message", ...}}` with a code from the error registry; '
            "times are RFC 3339 UTC. docs/api.md explains the pipeline every request "
            "passes (onboarding, authentication, CSRF, password change, role, audit).",
        },
        "servers": [{"url": "http://127.0.0.1:7080", "description": "The default listener"}],
        "tags": [
            {"name": name} for name in dict.fromkeys(operation.tag for operation in OPERATIONS)
        ],
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator token (operator_token in server.toml, else "
                    "the data dir's operator.token) or a token bootstrap-superadmin printed",
                },
                "cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE.decode("ascii"),
                    "description": "The console session POST /v1/auth/login sets; writes "
                    "also need Origin, X-Portunus-CSRF: 1 and a JSON content type",
                },
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (built once; callers must not change it)."""
    return _document()


def install(ctx: ApiContext) -> None:
    """Add C{GET /v1/openapi.json} to C{ctx.app}."""

    @ctx.route("/v1/openapi.json", "GET", "public")
    async def openapi(call: Call) -> object:
        return document()
