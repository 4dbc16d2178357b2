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
from portunus.model import Balance, Protocol, ProxyProtocolVersion
from portunus.rulespec import MAX_RULE_NAME_LENGTH, MAX_TARGETS, RATE_LIMIT_KEYS
from portunus.server.api.app import ApiContext
from portunus.server.api.request import SESSION_COOKIE, Access, Call
from portunus.server.clientspec import DEFAULT_TTL_SECS, MAX_NAME_LENGTH, MAX_TTL_SECS

__all__ = ["OPERATIONS", "Operation", "document", "install"]

Schema = dict[str, Any]

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PATH_PARAMETER = re.compile(r"\{([a-z_]+)\}")


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    result = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        result["enum"] = [*schema["enum"], None]
    return result


def _object(
    required: Mapping[str, Schema],
    optional: Mapping[str, Schema] | None = None,
    *,
    closed: bool,
    description: str | None = None,
) -> Schema:
    """
    An object schema.  C{closed}: unknown keys are refused (a request the
    handler checks strictly) or never sent (an answer the code builds).
    """
    schema: Schema = {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "additionalProperties": not closed,
    }
    if required:
        schema["required"] = list(required)
    if description is not None:
        schema["description"] = description
    return schema


def _array(items: Schema, **constraints: Any) -> Schema:
    return {"type": "array", "items": items, **constraints}


def _string(description: str | None = None, **constraints: Any) -> Schema:
    schema: Schema = {"type": "string", **constraints}
    if description is not None:
        schema["description"] = description
    return schema


def _integer(low: int | None = None, high: int | None = None, description: str = "") -> Schema:
    schema: Schema = {"type": "integer"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    if description:
        schema["description"] = description
    return schema


_BOOLEAN: Schema = {"type": "boolean"}
_FLAG = _string("1, true or yes: include them", default="false")
_TIME: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
_MAYBE_TIME: Schema = {**_TIME, "type": ["string", "null"]}
_PORT = _integer(1, 65535)
_PORT_OR_RANGE: Schema = {
    "description": 'A port (8080 or "8080") or a range ("8000-8010").',
    "anyOf": [
        _PORT,
        _string(pattern=r"^\s*[0-9]{1,10}\s*(-\s*[0-9]{1,10}\s*)?$"),
    ],
}
_PORTS_OUT = _string('"80" or "8000-8010"', pattern=r"^[0-9]+(-[0-9]+)?$")
_PROTOCOL = _string(enum=[p.value for p in Protocol])
_BALANCE = _string(enum=[b.value for b in Balance])
_PROXY_VERSION = _string(enum=[v.value for v in ProxyProtocolVersion])
_ROLE = _string(enum=["superadmin", "user"])
_USER_ID = _string(
    "1 to 32 of a-z, 0-9, _ and -, starting with a letter", pattern=r"^[a-z][a-z0-9_-]{0,31}$"
)
_DISPLAY_NAME = _string("1 to 64 characters without control characters", maxLength=64)
_NEW_PASSWORD = _string("at least 12 characters, at most 1024 bytes of UTF-8", minLength=12)
_CLIENT_NAME = _string(
    f"1 to {MAX_NAME_LENGTH} printable characters, no leading or trailing spaces",
    minLength=1,
    maxLength=MAX_NAME_LENGTH,
)
_CLIENT_ADDRESS: Schema = {
    "type": ["string", "null"],
    "description": "The bare host name or IP the client dials, without a port; "
    "absent or null: the server's advertised endpoint.",
}
_TTL = _integer(1, MAX_TTL_SECS, f"seconds the code stays valid (default {DEFAULT_TTL_SECS})")
_RATE_LIMIT = {
    **_object(
        {},
        {key: _integer(1, 10**12) for key in RATE_LIMIT_KEYS},
        closed=True,
        description="At least one cap; a burst needs its rate.",
    ),
    "minProperties": 1,
}

_SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": _string("A stable code from the error registry", enum=sorted(ERRORS)),
                    "message": _string("What went wrong and what to do"),
                },
                {
                    "field": _string("The request field at fault"),
                    "issues": _array(_ref("Issue")),
                    "reason": _string(),
                    "correlation_id": _string("Names the server log's traceback"),
                    "allowed": _array(_string(), description="The methods of this path"),
                    "retry_after": _integer(1, description="Seconds until a retry may pass"),
                },
                closed=False,
                description="Further fields depend on the code.",
            )
        },
        closed=True,
    ),
    "Issue": _object(
        {"field": _string(), "code": _string(), "message": _string()},
        closed=True,
        description="One problem with one field of a rule body.",
    ),
    "Health": _object({"status": _string(const="ok")}, closed=True),
    "AuthStatus": _object({"onboarding_required": _BOOLEAN}, closed=True),
    "Onboarding": _object(
        {
            "user_id": _USER_ID,
            "password": _NEW_PASSWORD,
            "password_confirm": _string("The password again"),
            "setup_token": _string("The setup token the server logged", minLength=1),
        },
        {"display_name": {**_DISPLAY_NAME, "description": "Default: the user id"}},
        closed=False,
    ),
    "OnboardedUser": _object(
        {"user_id": _string(), "display_name": _string(), "role": _ROLE}, closed=True
    ),
    "Login": _object({"user_id": _string(), "password": _string()}, closed=False),
    "LoggedIn": _object(
        {
            "user_id": _string(),
            "role": _ROLE,
            "display_name": _string(),
            "password_change_required": _BOOLEAN,
        },
        closed=True,
    ),
    "Me": _object(
        {
            "user_id": _string(),
            "role": _ROLE,
            "display_name": _string(),
            "auth_method": _string(enum=["bearer", "session"]),
            "password_change_required": _BOOLEAN,
        },
        closed=True,
    ),
    "PasswordChange": _object(
        {
            "current_password": _string(),
            "new_password": _NEW_PASSWORD,
            "new_password_confirm": _string("The new password again"),
        },
        closed=False,
    ),
    "UserCreate": _object(
        {"user_id": _USER_ID, "initial_password": _NEW_PASSWORD},
        {
            "display_name": {**_DISPLAY_NAME, "description": "Default: the user id"},
            "role": {**_ROLE, "default": "user"},
            "password_change_required": {**_BOOLEAN, "default": False},
        },
        closed=False,
    ),
    "User": _object(
        {
            "user_id": _string(),
            "display_name": _string(),
            "role": _ROLE,
            "disabled": _BOOLEAN,
            "created_at": _TIME,
            "password_change_required": _BOOLEAN,
            "grant_count": _integer(0),
        },
        closed=True,
    ),
    "UserRemoval": _object(
        {
            "user_id": _string(),
            "removed_credential_ids": _array(_string()),
            "revoked_grant_ids": _array(_string()),
            "removed_rule_ids": _array(_integer()),
        },
        closed=True,
    ),
    "PasswordReset": _object(
        {},
        {
            "new_password": {**_NEW_PASSWORD, "type": ["string", "null"]},
            "temporary_password": {
                **_BOOLEAN,
                "description": "true (or no new_password): generate a temporary password "
                "the user must change",
            },
        },
        closed=False,
    ),
    "PasswordResetDone": _object(
        {"user_id": _string(), "sessions_revoked": _integer(0)},
        {"temporary_password": _string("Shown once")},
        closed=True,
    ),
    "GrantCreate": _object(
        {
            "user_id": _string(minLength=1),
            "client": _string('A client id or name, or "*" for every client', minLength=1),
            "listen_port_start": _PORT,
        },
        {
            "listen_port_end": {**_PORT, "description": "Default: listen_port_start"},
            "protocols": _array(_PROTOCOL, minItems=1, default=["tcp"]),
            "note": _string(maxLength=256, default=""),
        },
        closed=False,
    ),
    "Grant": _object(
        {
            "grant_id": _string(),
            "user_id": _string(),
            "client": _string('The client\'s name, else its id; "*" for every client'),
            "client_id": _string(),
            "listen_port_start": _PORT,
            "listen_port_end": _PORT,
            "protocols": _array(_PROTOCOL),
            "note": _string(),
            "created_at": _TIME,
        },
        closed=True,
    ),
    "GrantRevocation": _object(
        {"grant_id": _string(), "removed_rule_ids": _array(_integer())}, closed=True
    ),
    "Client": _object(
        {
            "client_id": _string(),
            "client_name": _string(),
            "state": _string(enum=["connected", "disconnected", "revoked"]),
            "connected": _BOOLEAN,
            "remote_addr": _nullable(_string()),
            "connected_at": _MAYBE_TIME,
            "created_at": _MAYBE_TIME,
            "revoked_at": _MAYBE_TIME,
            "client_version": _nullable(_string()),
            "features": _array(_string()),
        },
        closed=True,
    ),
    "EnrollmentCreate": _object(
        {"name": _CLIENT_NAME},
        {"address": _CLIENT_ADDRESS, "ttl_secs": _TTL},
        closed=False,
    ),
    "Reenrollment": _object({}, {"address": _CLIENT_ADDRESS, "ttl_secs": _TTL}, closed=False),
    "Enrollment": _object(
        {
            "client_id": _string(),
            "client_name": _string(),
            "uri": _string("portunus://HOST:PORT/enroll?pin=sha256:...&code=..., shown once"),
            "expires_at": _TIME,
            "command": _string("The portunus-client command that redeems the code"),
        },
        closed=True,
    ),
    "ClientRename": _object({"name": _CLIENT_NAME}, closed=False),
    "RulePush": _object(
        {
            "client": _string("The client's id, or its name", minLength=1),
            "listen": _PORT_OR_RANGE,
            "targets": _array(_ref("TargetIn"), minItems=1, maxItems=MAX_TARGETS),
        },
        {
            "name": _string(
                'Default "rule"; no control characters',
                minLength=1,
                maxLength=MAX_RULE_NAME_LENGTH,
            ),
            "protocol": {**_PROTOCOL, "default": "tcp"},
            "prefer_ipv6": _BOOLEAN,
            "udp_max_flows": _integer(1, 65535),
            "udp_flow_idle_secs": _integer(30, 300),
            "listen_addresses": _array(_string("An IPv4 or IPv6 literal"), minItems=1),
            "balance": {**_BALANCE, "default": "failover"},
            "health_check_interval_secs": _integer(1, 3600),
            "sni_pattern": _string('An exact host or "*.example.com"'),
            "sni_fallback": _BOOLEAN,
            "accept_proxy_protocol": _BOOLEAN,
            "trusted_sources": _array(_string("A CIDR"), minItems=1),
            "rate_limit": _ref("RateLimit"),
            "ack_timeout_secs": {"type": "number", "minimum": 0.1, "maximum": 60, "default": 2},
        },
        closed=True,
        description="Unknown keys are refused (validation_failed).",
    ),
    "TargetIn": _object(
        {"host": _string("An IP address or a DNS name"), "port": _PORT_OR_RANGE},
        {
            "priority": _integer(0, 65535),
            "proxy_protocol": _PROXY_VERSION,
            "weight": _integer(1, 1000),
        },
        closed=True,
    ),
    "RateLimit": _RATE_LIMIT,
    "Rule": _object(
        {
            "id": _integer(),
            "name": _string(),
            "protocol": _PROTOCOL,
            "listen": _PORTS_OUT,
            "targets": _array(_ref("TargetOut")),
        },
        {
            "listen_addresses": _array(_string()),
            "prefer_ipv6": _BOOLEAN,
            "udp_max_flows": _integer(),
            "udp_flow_idle_secs": _integer(),
            "balance": _BALANCE,
            "health_check_interval_secs": _integer(),
            "sni_pattern": _string(),
            "sni_fallback": _BOOLEAN,
            "accept_proxy_protocol": _BOOLEAN,
            "trusted_sources": _array(_string()),
            "rate_limit": _object({}, {k: _integer() for k in RATE_LIMIT_KEYS}, closed=True),
        },
        closed=True,
        description="The rule's canonical JSON: optional fields only when not at their default.",
    ),
    "TargetOut": _object(
        {"host": _string(), "ports": _PORTS_OUT},
        {"priority": _integer(), "proxy_protocol": _PROXY_VERSION, "weight": _integer()},
        closed=True,
    ),
    "RuleView": _object(
        {
            "rule": _ref("Rule"),
            "client_id": _string(),
            "client_name": _string(),
            "state": _string(enum=["pending", "active", "failed"]),
            "state_reason": _nullable(_string("Why a rule failed (port_in_use:8080 ...)")),
            "created_at": _MAYBE_TIME,
            "updated_at": _MAYBE_TIME,
            "owner": _nullable(_string("The user who pushed it")),
        },
        closed=True,
    ),
    "RuleStats": _object(
        {
            "rule_id": _integer(),
            "client_id": _string(),
            "updated_at": {**_MAYBE_TIME, "description": "null before the client's first report"},
        },
        {
            "bytes_in": _integer(0),
            "bytes_out": _integer(0),
            "active_connections": _integer(0),
            "total_connections": _integer(0),
            "ports": {
                "type": "object",
                "description": "A range rule's counters per listen port",
                "additionalProperties": {"type": "object"},
            },
            "per_port": _array({"type": "object"}),
            "per_target": _array({"type": "object"}),
        },
        closed=False,
        description="The counters the client last reported; newer clients report more.",
    ),
    "AuditEntry": _object(
        {
            "seq": _integer(1),
            "timestamp": _TIME,
            "actor": _string("A user id, or _anonymous before authentication"),
            "role": _nullable(_ROLE),
            "method": _nullable(_string()),
            "path": _nullable(_string()),
            "outcome": _string(enum=["allow", "deny"]),
            "reason": _nullable(_string("ok, or the code that ended the request")),
            "action": _nullable(_string("rule.push, user.create ...")),
            "resource_kind": _nullable(_string()),
            "resource_value": _nullable(_string()),
            "correlation_id": _nullable(_string()),
            "details": {"type": ["object", "null"]},
        },
        closed=True,
    ),
    "AuditPage": _object(
        {
            "entries": _array(_ref("AuditEntry")),
            "next_cursor": _nullable(_string("null on the last page")),
            "count": _integer(0),
        },
        closed=True,
    ),
    "AuditAnswer": {"oneOf": [_array(_ref("AuditEntry")), _ref("AuditPage")]},
    "AdvertisedEndpointChange": _object(
        {"advertised_endpoint": _nullable(_string("host or host:port; null or empty clears"))},
        closed=True,
    ),
    "AdvertisedEndpoint": _object(
        {
            "override": _nullable(_string("Set through the API")),
            "effective": _string("What enrollment URIs name now"),
            "source": _string(enum=["override", "seed", "loopback"]),
            "diagnostic": _nullable(_string("What to fix, when something is off")),
            "cert_sans": _array(_string(), description="The names the certificate covers"),
        },
        closed=True,
    ),
    "EventStream": _string("text/event-stream events"),
    "Ndjson": _string("One JSON object per line"),
    "Text": _string(),
    "OpenApiDocument": _object(
        {"openapi": _string(), "info": {"type": "object"}, "paths": {"type": "object"}},
        closed=False,
    ),
}


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


_RULE_BODY_CODES = (
    "validation_failed",
    "invalid_name",
    "invalid_protocol",
    "invalid_target",
    "range_invalid",
    "range_inverted",
    "mismatched_range",
    "rule_shape_missing",
    "targets_empty",
    "targets_too_many",
    "health_check_interval_out_of_range",
    "validation.sni_pattern_malformed",
    "validation.sni_on_unsupported_rule",
    "validation.rate_limit_cap_zero",
    "validation.rate_limit_burst_without_rate",
    "validation.rate_limit_burst_range",
    "validation.rate_limit_no_caps_provided",
)
_NEW_PASSWORD_CODES = ("password_invalid", "password_too_short", "password_too_long")

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
            *_NEW_PASSWORD_CODES,
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
            *_NEW_PASSWORD_CODES,
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
            *_NEW_PASSWORD_CODES,
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
            *_NEW_PASSWORD_CODES,
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
        query={"user_id": _string("Only this user's grants")},
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
            *_RULE_BODY_CODES,
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
            "client": _string("Only this client's rules (its id or name)"),
            "owner": _string("Only this user's rules (superadmins; ignored for users)"),
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
        query={"per_port": _FLAG},
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
        query={"per_target": _FLAG},
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
            "limit": _integer(1, 1000, "Entries per answer (default 100)"),
            "outcome": _string(enum=["allow", "deny"]),
            "actor": _string("Only this actor's entries"),
            "since": _string("RFC 3339; pages the answer", format="date-time"),
            "until": _string("RFC 3339; pages the answer", format="date-time"),
            "cursor": _string("A next_cursor, to page to older entries"),
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
            "outcome": _string(enum=["allow", "deny"]),
            "actor": _string("Only this actor's entries"),
            "since": _string("RFC 3339", format="date-time"),
            "until": _string("RFC 3339", format="date-time"),
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

_LISTS = {
    "UserList": "User",
    "GrantList": "Grant",
    "ClientList": "Client",
    "RuleViewList": "RuleView",
}

_PATH_PARAMETERS = {
    "user_id": _string("The user's id", minLength=1),
    "grant_id": _string("The grant's id", minLength=1),
    "client_id": _string("The client's id (not its name)", minLength=1),
    "rule_id": _integer(0, description="The rule's id; anything else names no rule (404)"),
}


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
                        _ref("Error"),
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
                "schema": _string(),
            }
        }
    if "rate_limited" in codes:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the next attempt may pass (rate_limited)",
                "schema": _integer(1),
            }
        }
    return response


def _operation(operation: Operation) -> Schema:
    success: Schema = {"description": operation.summary}
    if operation.answer is not None:
        item = _LISTS.get(operation.answer)
        schema = _array(_ref(item)) if item is not None else _ref(operation.answer)
        success["content"] = {operation.media_type: {"schema": schema}}
    if operation.headers:
        success["headers"] = {
            name: {"description": example, "schema": _string()}
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
            "schema": _PATH_PARAMETERS[name],
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
            "content": {"application/json": {"schema": _ref(operation.body)}},
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
            "schemas": _SCHEMAS,
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
