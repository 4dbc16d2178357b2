"""
The schemas of the operator API's OpenAPI document: the request and answer
bodies (L{COMPONENTS}), the path parameters, the error codes several
routes share, and the helpers the route declarations use for their query
parameters.  The routes name their bodies here; L{portunus.server.api.openapi}
puts the document together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portunus.bounds import (
    ACK_TIMEOUT_SECS,
    AUDIT_PAGE_LIMIT,
    ENROLLMENT_TTL_SECS,
    HEALTH_CHECK_INTERVAL_SECS,
    PORT,
    RATE_LIMIT_CAP,
    TARGET_PRIORITY,
    TARGET_WEIGHT,
    UDP_FLOW_IDLE_SECS,
    UDP_MAX_FLOWS,
)
from portunus.errors import ERRORS
from portunus.model import Balance, Protocol, ProxyProtocolVersion
from portunus.rulespec import MAX_RULE_NAME_LENGTH, MAX_TARGETS, RATE_LIMIT_KEYS
from portunus.server.clientspec import MAX_NAME_LENGTH

__all__ = [
    "AUDIT_LIMIT",
    "COMPONENTS",
    "FLAG",
    "LISTS",
    "NEW_PASSWORD_CODES",
    "PATH_PARAMETERS",
    "RULE_BODY_CODES",
    "Schema",
    "array",
    "integer",
    "ref",
    "string",
]

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    result = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        result["enum"] = [*schema["enum"], None]
    return result


def json_object(
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


def array(items: Schema, **constraints: Any) -> Schema:
    return {"type": "array", "items": items, **constraints}


def string(description: str | None = None, **constraints: Any) -> Schema:
    schema: Schema = {"type": "string", **constraints}
    if description is not None:
        schema["description"] = description
    return schema


def integer(low: int | None = None, high: int | None = None, description: str = "") -> Schema:
    schema: Schema = {"type": "integer"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    if description:
        schema["description"] = description
    return schema


# Bounded numbers and lengths: every limit the schemas state on a value a
# user sends, in one place.  Numbers come from the table of bounds
# (portunus/bounds.py); MAX_TARGETS, MAX_RULE_NAME_LENGTH and the clientspec
# limits are imported where the handlers' checks define them.
_PORT = PORT.schema()
_UDP_MAX_FLOWS = UDP_MAX_FLOWS.schema()
_UDP_FLOW_IDLE_SECS = UDP_FLOW_IDLE_SECS.schema()
_HEALTH_CHECK_INTERVAL_SECS = HEALTH_CHECK_INTERVAL_SECS.schema()
_ACK_TIMEOUT_SECS = ACK_TIMEOUT_SECS.schema()
_TARGET_PRIORITY = TARGET_PRIORITY.schema()
_TARGET_WEIGHT = TARGET_WEIGHT.schema()
_RATE_LIMIT_CAP = RATE_LIMIT_CAP.schema()
_GRANT_NOTE = string(maxLength=256, default="")
_DISPLAY_NAME = string("1 to 64 characters without control characters", maxLength=64)
_NEW_PASSWORD = string("at least 12 characters, at most 1024 bytes of UTF-8", minLength=12)
_TTL = ENROLLMENT_TTL_SECS.schema()
_USER_ID = string(
    "1 to 32 of a-z, 0-9, _ and -, starting with a letter", pattern=r"^[a-z][a-z0-9_-]{0,31}$"
)
_CLIENT_NAME = string(
    f"1 to {MAX_NAME_LENGTH} printable characters, no leading or trailing spaces",
    minLength=1,
    maxLength=MAX_NAME_LENGTH,
)
AUDIT_LIMIT = AUDIT_PAGE_LIMIT.schema()

_BOOLEAN: Schema = {"type": "boolean"}
FLAG = string("1, true or yes: include them", default="false")
_TIME: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
_MAYBE_TIME: Schema = {**_TIME, "type": ["string", "null"]}
_PORT_OR_RANGE: Schema = {
    "description": 'A port (8080 or "8080") or a range ("8000-8010").',
    "anyOf": [
        _PORT,
        string(pattern=r"^\s*[0-9]{1,10}\s*(-\s*[0-9]{1,10}\s*)?$"),
    ],
}
_PORTS_OUT = string('"80" or "8000-8010"', pattern=r"^[0-9]+(-[0-9]+)?$")
_PROTOCOL = string(enum=[p.value for p in Protocol])
_BALANCE = string(enum=[b.value for b in Balance])
_PROXY_VERSION = string(enum=[v.value for v in ProxyProtocolVersion])
_ROLE = string(enum=["superadmin", "user"])
_CLIENT_ADDRESS: Schema = {
    "type": ["string", "null"],
    "description": "The bare host name or IP the client dials, without a port; "
    "absent or null: the server's advertised endpoint.",
}
_RATE_LIMIT = {
    **json_object(
        {},
        {key: _RATE_LIMIT_CAP for key in RATE_LIMIT_KEYS},
        closed=True,
        description="At least one cap; a burst needs its rate.",
    ),
    "minProperties": 1,
}

COMPONENTS: dict[str, Schema] = {
    "Error": json_object(
        {
            "error": json_object(
                {
                    "code": string("A stable code from the error registry", enum=sorted(ERRORS)),
                    "message": string("What went wrong and what to do"),
                },
                {
                    "field": string("The request field at fault"),
                    "issues": array(ref("Issue")),
                    "reason": string(),
                    "correlation_id": string("Names the server log's traceback"),
                    "allowed": array(string(), description="The methods of this path"),
                    "retry_after": integer(1, description="Seconds until a retry may pass"),
                },
                closed=False,
                description="Further fields depend on the code.",
            )
        },
        closed=True,
    ),
    "Issue": json_object(
        {"field": string(), "code": string(), "message": string()},
        closed=True,
        description="One problem with one field of a rule body.",
    ),
    "Health": json_object({"status": string(const="ok")}, closed=True),
    "AuthStatus": json_object({"onboarding_required": _BOOLEAN}, closed=True),
    "Onboarding": json_object(
        {
            "user_id": _USER_ID,
            "password": _NEW_PASSWORD,
            "password_confirm": string("The password again"),
            "setup_token": string("The setup token, as onboarding-token prints it", minLength=1),
        },
        {"display_name": {**_DISPLAY_NAME, "description": "Default: the user id"}},
        closed=False,
    ),
    "OnboardedUser": json_object(
        {"user_id": string(), "display_name": string(), "role": _ROLE}, closed=True
    ),
    "Login": json_object({"user_id": string(), "password": string()}, closed=False),
    "LoggedIn": json_object(
        {
            "user_id": string(),
            "role": _ROLE,
            "display_name": string(),
            "password_change_required": _BOOLEAN,
        },
        closed=True,
    ),
    "Me": json_object(
        {
            "user_id": string(),
            "role": _ROLE,
            "display_name": string(),
            "auth_method": string(enum=["bearer", "session"]),
            "password_change_required": _BOOLEAN,
        },
        closed=True,
    ),
    "PasswordChange": json_object(
        {
            "current_password": string(),
            "new_password": _NEW_PASSWORD,
            "new_password_confirm": string("The new password again"),
        },
        closed=False,
    ),
    "UserCreate": json_object(
        {"user_id": _USER_ID, "initial_password": _NEW_PASSWORD},
        {
            "display_name": {**_DISPLAY_NAME, "description": "Default: the user id"},
            "role": {**_ROLE, "default": "user"},
            "password_change_required": {**_BOOLEAN, "default": False},
        },
        closed=False,
    ),
    "User": json_object(
        {
            "user_id": string(),
            "display_name": string(),
            "role": _ROLE,
            "disabled": _BOOLEAN,
            "created_at": _TIME,
            "password_change_required": _BOOLEAN,
            "grant_count": integer(0),
        },
        closed=True,
    ),
    "UserRemoval": json_object(
        {
            "user_id": string(),
            "removed_credential_ids": array(string()),
            "revoked_grant_ids": array(string()),
            "removed_rule_ids": array(integer()),
        },
        closed=True,
    ),
    "PasswordReset": json_object(
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
    "PasswordResetDone": json_object(
        {"user_id": string(), "sessions_revoked": integer(0)},
        {"temporary_password": string("Shown once")},
        closed=True,
    ),
    "GrantCreate": json_object(
        {
            "user_id": string(minLength=1),
            "client": string('A client id or name, or "*" for every client', minLength=1),
            "listen_port_start": _PORT,
        },
        {
            "listen_port_end": {**_PORT, "description": "Default: listen_port_start"},
            "protocols": array(_PROTOCOL, minItems=1, default=["tcp"]),
            "note": _GRANT_NOTE,
            "allow_local_targets": {
                **_BOOLEAN,
                "default": False,
                "description": "Rules pushed under it may target loopback, link-local and "
                "the edge's own addresses",
            },
        },
        closed=False,
    ),
    "Grant": json_object(
        {
            "grant_id": string(),
            "user_id": string(),
            "client": string('The client\'s name, else its id; "*" for every client'),
            "client_id": string(),
            "listen_port_start": _PORT,
            "listen_port_end": _PORT,
            "protocols": array(_PROTOCOL),
            "note": string(),
            "allow_local_targets": _BOOLEAN,
            "created_at": _TIME,
        },
        closed=True,
    ),
    "GrantRevocation": json_object(
        {"grant_id": string(), "removed_rule_ids": array(integer())}, closed=True
    ),
    "Client": json_object(
        {
            "client_id": string(),
            "client_name": string(),
            "state": string(enum=["connected", "disconnected", "revoked"]),
            "connected": _BOOLEAN,
            "remote_addr": nullable(string()),
            "connected_at": _MAYBE_TIME,
            "created_at": _MAYBE_TIME,
            "revoked_at": _MAYBE_TIME,
            "client_version": nullable(string()),
            "features": array(string()),
        },
        closed=True,
    ),
    "EnrollmentCreate": json_object(
        {"name": _CLIENT_NAME},
        {"address": _CLIENT_ADDRESS, "ttl_secs": _TTL},
        closed=False,
    ),
    "Reenrollment": json_object({}, {"address": _CLIENT_ADDRESS, "ttl_secs": _TTL}, closed=False),
    "Enrollment": json_object(
        {
            "client_id": string(),
            "client_name": string(),
            "uri": string("portunus://HOST:PORT/enroll?pin=sha256:...&code=..., shown once"),
            "expires_at": _TIME,
            "command": string("The portunus-client command that redeems the code"),
        },
        closed=True,
    ),
    "ClientRename": json_object({"name": _CLIENT_NAME}, closed=False),
    "RulePush": json_object(
        {
            "client": string("The client's id, or its name", minLength=1),
            "listen": _PORT_OR_RANGE,
            "targets": array(ref("TargetIn"), minItems=1, maxItems=MAX_TARGETS),
        },
        {
            "name": string(
                'Default "rule"; no control characters',
                minLength=1,
                maxLength=MAX_RULE_NAME_LENGTH,
            ),
            "protocol": {**_PROTOCOL, "default": "tcp"},
            "prefer_ipv6": _BOOLEAN,
            "udp_max_flows": _UDP_MAX_FLOWS,
            "udp_flow_idle_secs": _UDP_FLOW_IDLE_SECS,
            "listen_addresses": array(string("An IPv4 or IPv6 literal"), minItems=1),
            "balance": {**_BALANCE, "default": "failover"},
            "health_check_interval_secs": _HEALTH_CHECK_INTERVAL_SECS,
            "sni_pattern": string('An exact host or "*.example.com"'),
            "sni_fallback": _BOOLEAN,
            "accept_proxy_protocol": _BOOLEAN,
            "trusted_sources": array(string("A CIDR"), minItems=1),
            "rate_limit": ref("RateLimit"),
            "ack_timeout_secs": _ACK_TIMEOUT_SECS,
        },
        closed=True,
        description="Unknown keys are refused (validation_failed).",
    ),
    "TargetIn": json_object(
        {"host": string("An IP address or a DNS name"), "port": _PORT_OR_RANGE},
        {
            "priority": _TARGET_PRIORITY,
            "proxy_protocol": _PROXY_VERSION,
            "weight": _TARGET_WEIGHT,
        },
        closed=True,
    ),
    "RateLimit": _RATE_LIMIT,
    "Rule": json_object(
        {
            "id": integer(),
            "name": string(),
            "protocol": _PROTOCOL,
            "listen": _PORTS_OUT,
            "targets": array(ref("TargetOut")),
        },
        {
            "listen_addresses": array(string()),
            "prefer_ipv6": _BOOLEAN,
            "udp_max_flows": integer(),
            "udp_flow_idle_secs": integer(),
            "balance": _BALANCE,
            "health_check_interval_secs": integer(),
            "sni_pattern": string(),
            "sni_fallback": _BOOLEAN,
            "accept_proxy_protocol": _BOOLEAN,
            "trusted_sources": array(string()),
            "rate_limit": json_object({}, {k: integer() for k in RATE_LIMIT_KEYS}, closed=True),
            "allow_local_targets": {
                **_BOOLEAN,
                "description": "false: the edge refuses local target addresses (a tenant's "
                "rule whose grant does not allow them)",
            },
        },
        closed=True,
        description="The rule's canonical JSON: optional fields only when not at their default.",
    ),
    "TargetOut": json_object(
        {"host": string(), "ports": _PORTS_OUT},
        {"priority": integer(), "proxy_protocol": _PROXY_VERSION, "weight": integer()},
        closed=True,
    ),
    "RuleView": json_object(
        {
            "rule": ref("Rule"),
            "client_id": string(),
            "client_name": string(),
            "state": string(enum=["pending", "active", "failed"]),
            "state_reason": nullable(string("Why a rule failed (port_in_use:8080 ...)")),
            "created_at": _MAYBE_TIME,
            "updated_at": _MAYBE_TIME,
            "owner": nullable(string("The user who pushed it")),
        },
        closed=True,
    ),
    "RuleStats": json_object(
        {
            "rule_id": integer(),
            "client_id": string(),
            "updated_at": {**_MAYBE_TIME, "description": "null before the client's first report"},
        },
        {
            "bytes_in": integer(0),
            "bytes_out": integer(0),
            "active_connections": integer(0),
            "total_connections": integer(0),
            "ports": {
                "type": "object",
                "description": "A range rule's counters per listen port",
                "additionalProperties": {"type": "object"},
            },
            "per_port": array({"type": "object"}),
            "per_target": array({"type": "object"}),
        },
        closed=False,
        description="The counters the client last reported; newer clients report more.",
    ),
    "AuditEntry": json_object(
        {
            "seq": integer(1),
            "timestamp": _TIME,
            "actor": string("A user id, or _anonymous before authentication"),
            "role": nullable(_ROLE),
            "method": nullable(string()),
            "path": nullable(string()),
            "outcome": string(enum=["allow", "deny"]),
            "reason": nullable(string("ok, or the code that ended the request")),
            "action": nullable(string("rule.push, user.create ...")),
            "resource_kind": nullable(string()),
            "resource_value": nullable(string()),
            "correlation_id": nullable(string()),
            "details": {"type": ["object", "null"]},
        },
        closed=True,
    ),
    "AuditPage": json_object(
        {
            "entries": array(ref("AuditEntry")),
            "next_cursor": nullable(string("null on the last page")),
            "count": integer(0),
        },
        closed=True,
    ),
    "AuditAnswer": {"oneOf": [array(ref("AuditEntry")), ref("AuditPage")]},
    "AdvertisedEndpointChange": json_object(
        {"advertised_endpoint": nullable(string("host or host:port; null or empty clears"))},
        closed=True,
    ),
    "AdvertisedEndpoint": json_object(
        {
            "override": nullable(string("Set through the API")),
            "effective": string("What enrollment URIs name now"),
            "source": string(enum=["override", "seed", "loopback"]),
            "diagnostic": nullable(string("What to fix, when something is off")),
            "cert_sans": array(string(), description="The names the certificate covers"),
        },
        closed=True,
    ),
    "EventStream": string("text/event-stream events"),
    "Ndjson": string("One JSON object per line"),
    "Text": string(),
    "OpenApiDocument": json_object(
        {"openapi": string(), "info": {"type": "object"}, "paths": {"type": "object"}},
        closed=False,
    ),
}

LISTS = {
    "UserList": "User",
    "GrantList": "Grant",
    "ClientList": "Client",
    "RuleViewList": "RuleView",
}

PATH_PARAMETERS = {
    "user_id": string("The user's id", minLength=1),
    "grant_id": string("The grant's id", minLength=1),
    "client_id": string("The client's id (not its name)", minLength=1),
    "rule_id": integer(0, description="The rule's id; anything else names no rule (404)"),
}

RULE_BODY_CODES = (
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
NEW_PASSWORD_CODES = ("password_invalid", "password_too_short", "password_too_long")
