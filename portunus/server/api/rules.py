"""
C{/v1/rules}: pushing, listing, reading, removing rules and their stats.

A pushed body is validated by L{portunus.rulespec.parse_rule_body}, the
same field checks the standalone TOML parser uses, so a rule means the
same thing whichever surface wrote it.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from portunus.errors import ERRORS, PortunusError
from portunus.rulejson import rule_to_dict
from portunus.rulespec import FieldIssue, parse_rule_body
from portunus.server.api.clients import resolve_client
from portunus.server.api.request import Answer, ApiContext, Call, read_json, timestamp
from portunus.server.api.route import Routes
from portunus.server.api.schemas import FLAG, RULE_BODY_CODES, string
from portunus.server.auth.rbac import covering_grant, require_owner
from portunus.server.plane import IControlPlane, RuleView

__all__ = [
    "ROUTES",
    "flag",
    "owned_rule",
    "rule_view_json",
    "stats_json",
    "validation_error",
]

ROUTES = Routes("rules")


def rule_view_json(view: RuleView) -> dict[str, Any]:
    """The JSON of one rule with its client and state."""
    return {
        "rule": rule_to_dict(view.rule),
        "client_id": view.client_id,
        "client_name": view.client_name,
        "state": view.state,
        "state_reason": view.state_reason,
        "created_at": timestamp(view.created_at),
        "updated_at": timestamp(view.updated_at),
        "owner": view.owner_user_id,
    }


def validation_error(issues: list[FieldIssue]) -> PortunusError:
    """
    One error for a body with C{issues}: the first issue's code, message
    and field, and every issue under C{issues} so one round trip shows
    all there is to fix.
    """
    first = issues[0]
    code = first.code if first.code in ERRORS else "validation_failed"
    message = f"{first.field}: {first.message}"
    if len(issues) > 1:
        message += f" (and {len(issues) - 1} more problem(s), listed under issues)"
    return PortunusError(
        code, message, field=first.field, issues=[issue.to_json() for issue in issues]
    )


#: Rule ids are SQLite integers; a larger number names no rule.
_MAX_RULE_ID = 2**63 - 1


def _rule_id(text: str) -> int:
    try:
        rule_id = int(text)
    except ValueError:
        rule_id = -1
    if not 0 <= rule_id <= _MAX_RULE_ID or str(rule_id) != text:
        raise PortunusError(
            "rule_not_found", f"{text!r} is not a rule id; list-rules shows them", rule_id=text
        )
    return rule_id


def flag(request: IRequest, name: bytes) -> bool:
    """Whether the query sets C{name} to C{1}, C{true} or C{yes}."""
    values = (request.args or {}).get(name) or [b""]
    return values[-1].lower() in (b"1", b"true", b"yes")


async def owned_rule(plane: IControlPlane, call: Call, text: str) -> RuleView:
    """
    The rule C{text} names, if the caller owns it or is a superadmin:
    C{rule_not_found}, C{not_owner}.
    """
    view = await plane.get_rule(_rule_id(text))
    call.note("rule", view.rule.id)
    require_owner(call.who, view.owner_user_id, view.rule.id)
    return view


def stats_json(
    data: dict[str, Any], rule_id: int, *, per_port: bool, per_target: bool = True
) -> dict[str, Any]:
    """
    The answer of C{GET /v1/rules/<id>/stats} for the plane's stats entry
    C{data}: C{updated_at} as RFC 3339, the per-port and per-target rows
    only when asked for.
    """
    data = dict(data)
    data["rule_id"] = rule_id
    updated = data.get("updated_at")
    if isinstance(updated, int | float) and not isinstance(updated, bool):
        data["updated_at"] = timestamp(updated)
    # Edges report per-port counters keyed by port (C{ports}); the API
    # answers them as C{per_port} rows, in port order, when asked.
    ports = data.pop("ports", None)
    if isinstance(ports, dict) and "per_port" not in data:
        rows = [dict(counters, port=int(port)) for port, counters in ports.items()]
        data["per_port"] = sorted(rows, key=lambda row: row["port"])
    if not per_port:
        data.pop("per_port", None)
    if per_target:
        # Edges report targets only for rules with several of them.
        data.setdefault("per_target", [])
    else:
        data.pop("per_target", None)
    return data


@ROUTES.route(
    "POST",
    "/v1/rules",
    "pushRule",
    "Push a rule to a client; answers once the client activated it",
    action="rule.push",
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
        "validation.target_is_listener",
        "local_target_not_granted",
        "local_target_policy_unsupported_by_client",
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
)
async def push(ctx: ApiContext, call: Call) -> object:
    parsed = parse_rule_body(read_json(call.request))
    if isinstance(parsed, list):
        raise validation_error(parsed)
    client = await resolve_client(ctx, call, parsed.client)
    rule = parsed.rule
    call.note("client", client.client_id, listen=str(rule.listen), protocol=rule.protocol.value)
    grant_id = None
    local_targets = True
    if not call.who.is_superadmin:
        grants = await ctx.accounts.grants_for(call.who.user_id)
        grant = covering_grant(
            grants, client.client_id, rule.protocol.value, rule.listen.start, rule.listen.end
        )
        grant_id = grant.grant_id
        local_targets = grant.allow_local_targets
    view = await ctx.plane.push_rule(
        client.client_id,
        rule,
        parsed.ack_timeout,
        owner_user_id=call.who.user_id,
        grant_id=grant_id,
        allow_local_targets=local_targets,
    )
    call.note("rule", view.rule.id)
    return Answer(201, rule_view_json(view))


@ROUTES.route(
    "GET",
    "/v1/rules",
    "listRules",
    "List rules by id: a superadmin's all (or one owner's), a user's own",
    answer="RuleViewList",
    codes=("client_not_found", "client_name_ambiguous"),
    query={
        "client": string("Only this client's rules (its id or name)"),
        "owner": string("Only this user's rules (superadmins; ignored for users)"),
    },
)
async def list_rules(ctx: ApiContext, call: Call) -> object:
    args = call.request.args or {}
    client_id = None
    refs = args.get(b"client")
    if refs:
        ref = refs[-1].decode("utf-8", "replace")
        client_id = (await resolve_client(ctx, call, ref)).client_id
    owner: str | None = call.who.user_id
    if call.who.is_superadmin:
        owners = args.get(b"owner")
        owner = owners[-1].decode("utf-8", "replace") if owners else None
    views = await ctx.plane.list_rules(client_id, owner)
    return [rule_view_json(view) for view in views]


@ROUTES.route(
    "GET",
    "/v1/rules/{rule_id}",
    "getRule",
    "Read a rule",
    answer="RuleView",
    codes=("rule_not_found", "not_owner"),
)
async def get_rule(ctx: ApiContext, call: Call, rule_id: str) -> object:
    return rule_view_json(await owned_rule(ctx.plane, call, rule_id))


@ROUTES.route(
    "DELETE",
    "/v1/rules/{rule_id}",
    "removeRule",
    "Remove a rule; the client stops accepting and drains",
    action="rule.remove",
    status=204,
    codes=("rule_not_found", "not_owner"),
)
async def remove(ctx: ApiContext, call: Call, rule_id: str) -> object:
    view = await owned_rule(ctx.plane, call, rule_id)
    await ctx.plane.remove_rule(view.rule.id)
    return Answer(204)


@ROUTES.route(
    "GET",
    "/v1/rules/{rule_id}/stats",
    "ruleStats",
    "The counters the client last reported for a rule",
    answer="RuleStats",
    codes=("rule_not_found", "not_owner"),
    query={"per_port": FLAG},
)
async def stats(ctx: ApiContext, call: Call, rule_id: str) -> object:
    view = await owned_rule(ctx.plane, call, rule_id)
    data = await ctx.plane.rule_stats(view.rule.id)
    # As Portunus: per-target state always, the per-port rows on request.
    return stats_json(data, view.rule.id, per_port=flag(call.request, b"per_port"))
