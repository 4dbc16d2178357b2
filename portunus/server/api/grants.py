"""
C{/v1/grants} (superadmins): what a user may push.  A grant names a client
(or C{*}), a listen-port range and protocols, and whether the rules pushed
under it may target local addresses (C{allow_local_targets}, default
false); revoking one removes the rules pushed under it, and the edges drop
them.
"""

from __future__ import annotations

from typing import Any

from portunus.bounds import PORT
from portunus.errors import PortunusError
from portunus.fields import has_bad_characters
from portunus.server.api.clients import resolve_client
from portunus.server.api.request import Answer, ApiContext, Call, read_json, timestamp
from portunus.server.api.route import Routes
from portunus.server.api.schemas import string
from portunus.server.store import GrantRecord

__all__ = ["ROUTES", "grant_json"]

ROUTES = Routes("grants")

_PROTOCOLS = ("tcp", "udp")


def grant_json(grant: GrantRecord) -> dict[str, Any]:
    return {
        "grant_id": grant.grant_id,
        "user_id": grant.user_id,
        "client": grant.client_name if grant.client_name is not None else grant.client_id,
        "client_id": grant.client_id,
        "listen_port_start": grant.listen_port_start,
        "listen_port_end": grant.listen_port_end,
        "protocols": list(grant.protocols),
        "note": grant.note,
        "allow_local_targets": grant.allow_local_targets,
        "created_at": timestamp(grant.created_at),
    }


def _port(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if value not in PORT:
        raise PortunusError(
            "invalid_port_range", f"{key}: use a port from {PORT.span()} (got {value!r})", field=key
        )
    assert isinstance(value, int)
    return value


def _protocols(body: dict[str, Any]) -> list[str]:
    value = body.get("protocols", ["tcp"])
    if not isinstance(value, list) or any(p not in _PROTOCOLS for p in value):
        raise PortunusError(
            "invalid_protocol",
            f'protocols: use a list of "tcp" and/or "udp" (got {value!r})',
            field="protocols",
        )
    if not value:
        raise PortunusError(
            "empty_protocol_set", 'protocols: list at least one of "tcp", "udp"', field="protocols"
        )
    return sorted(set(value), key=_PROTOCOLS.index)


@ROUTES.route(
    "POST",
    "/v1/grants",
    "createGrant",
    "Let a user push rules on a client's port range",
    access="superadmin",
    action="grant.create",
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
)
async def create(ctx: ApiContext, call: Call) -> object:
    body = read_json(call.request)
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise PortunusError("user_not_found", "user_id: name the user to grant", field="user_id")
    client = body.get("client")
    if not isinstance(client, str) or not client:
        raise PortunusError(
            "invalid_client", 'client: name a client, its id, or "*" for all', field="client"
        )
    client_id = "*" if client == "*" else (await resolve_client(ctx, call, client)).client_id
    start = _port(body, "listen_port_start")
    end = _port(body, "listen_port_end") if "listen_port_end" in body else start
    if end < start:
        raise PortunusError(
            "invalid_port_range",
            f"listen_port_end ({end}) is below listen_port_start ({start})",
            field="listen_port_end",
        )
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 256 or has_bad_characters(note):
        raise PortunusError(
            "validation_failed",
            "note: use text of at most 256 characters, without control or format characters",
            field="note",
        )
    local = body.get("allow_local_targets", False)
    if not isinstance(local, bool):
        raise PortunusError(
            "validation_failed",
            f"allow_local_targets: use true or false (got {local!r:.40})",
            field="allow_local_targets",
        )
    grant = await ctx.accounts.create_grant(
        user_id, client_id, start, end, _protocols(body), note, local
    )
    call.note("grant", grant.grant_id, user_id=user_id, client_id=client_id)
    return Answer(201, grant_json(grant))


@ROUTES.route(
    "GET",
    "/v1/grants",
    "listGrants",
    "List grants",
    access="superadmin",
    answer="GrantList",
    query={"user_id": string("Only this user's grants")},
)
async def list_grants(ctx: ApiContext, call: Call) -> object:
    values = (call.request.args or {}).get(b"user_id")
    user_id = values[-1].decode("utf-8", "replace") if values else None
    return [grant_json(g) for g in await ctx.accounts.list_grants(user_id)]


@ROUTES.route(
    "DELETE",
    "/v1/grants/{grant_id}",
    "revokeGrant",
    "Revoke a grant and remove the rules pushed under it",
    access="superadmin",
    action="grant.revoke",
    answer="GrantRevocation",
    codes=("grant_not_found",),
)
async def revoke(ctx: ApiContext, call: Call, grant_id: str) -> object:
    call.note("grant", grant_id)
    grant, rules = await ctx.accounts.revoke_grant(grant_id)
    await ctx.plane.forget_rules(rules)
    removed = [record.rule_id for record in rules]
    call.note(removed_rule_ids=removed)
    return {"grant_id": grant.grant_id, "removed_rule_ids": removed}
