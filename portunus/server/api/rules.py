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
from portunus.server.api.app import Answer, ApiContext, read_json, timestamp
from portunus.server.api.clients import resolve_client
from portunus.server.plane import RuleView

__all__ = ["install", "rule_view_json", "validation_error"]


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


def _rule_id(text: str) -> int:
    try:
        rule_id = int(text)
    except ValueError:
        rule_id = -1
    if rule_id < 0 or str(rule_id) != text:
        raise PortunusError(
            "rule_not_found", f"{text!r} is not a rule id; list-rules shows them", rule_id=text
        )
    return rule_id


def _flag(request: IRequest, name: bytes) -> bool:
    values = (request.args or {}).get(name) or [b""]
    return values[-1].lower() in (b"1", b"true", b"yes")


def install(ctx: ApiContext) -> None:
    """Add the rule routes to C{ctx.app}."""
    plane = ctx.plane

    @ctx.route("/v1/rules", "POST")
    async def push(request: IRequest) -> object:
        parsed = parse_rule_body(read_json(request))
        if isinstance(parsed, list):
            raise validation_error(parsed)
        client = await resolve_client(plane, parsed.client)
        view = await plane.push_rule(client.client_id, parsed.rule, parsed.ack_timeout)
        return Answer(201, rule_view_json(view))

    @ctx.route("/v1/rules", "GET")
    async def list_rules(request: IRequest) -> object:
        refs = (request.args or {}).get(b"client")
        client_id = None
        if refs:
            ref = refs[-1].decode("utf-8", "replace")
            client_id = (await resolve_client(plane, ref)).client_id
        views = await plane.list_rules(client_id)
        return [rule_view_json(view) for view in views]

    @ctx.route("/v1/rules/<rule_id>", "GET")
    async def get_rule(request: IRequest, rule_id: str) -> object:
        return rule_view_json(await plane.get_rule(_rule_id(rule_id)))

    @ctx.route("/v1/rules/<rule_id>", "DELETE")
    async def remove(request: IRequest, rule_id: str) -> object:
        await plane.remove_rule(_rule_id(rule_id))
        return Answer(204)

    @ctx.route("/v1/rules/<rule_id>/stats", "GET")
    async def stats(request: IRequest, rule_id: str) -> object:
        number = _rule_id(rule_id)
        data = dict(await plane.rule_stats(number))
        data["rule_id"] = number
        updated = data.get("updated_at")
        if isinstance(updated, int | float) and not isinstance(updated, bool):
            data["updated_at"] = timestamp(updated)
        # As Portunus: per-target state always, the per-port rows on request.
        if not _flag(request, b"per_port"):
            data.pop("per_port", None)
        return data
