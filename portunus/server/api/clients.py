"""
C{/v1/clients} and C{/v1/client-enrollments}: enrolling, listing,
renaming, revoking and deleting edge clients.
"""

from __future__ import annotations

from typing import Any

from portunus.errors import PortunusError
from portunus.server.api.request import Answer, ApiContext, Call, read_json, timestamp
from portunus.server.api.route import Routes
from portunus.server.auth.rbac import granted_client_ids
from portunus.server.clientspec import (
    DEFAULT_TTL_SECS,
    MAX_NAME_LENGTH,
    MAX_TTL_SECS,
    check_client_address,
    check_client_name,
    check_enrollment_ttl,
)
from portunus.server.plane import ClientView, EnrollmentView

__all__ = [
    "DEFAULT_TTL_SECS",
    "MAX_NAME_LENGTH",
    "MAX_TTL_SECS",
    "ROUTES",
    "client_json",
    "resolve_client",
    "visible_client_ids",
]

ROUTES = Routes("clients")


def client_json(view: ClientView) -> dict[str, Any]:
    """The JSON of one client, as every client route answers it."""
    return {
        "client_id": view.client_id,
        "client_name": view.name,
        "state": view.state,
        "connected": view.state == "connected",
        "remote_addr": view.remote_addr,
        "connected_at": timestamp(view.connected_at),
        "created_at": timestamp(view.created_at),
        "revoked_at": timestamp(view.revoked_at),
        "client_version": view.client_version,
        "features": list(view.features),
    }


def enrollment_json(view: EnrollmentView) -> dict[str, Any]:
    return {
        "client_id": view.client_id,
        "client_name": view.client_name,
        "uri": view.uri,
        "expires_at": timestamp(view.expires_at),
        "command": f"portunus-client enroll '{view.uri}'",
    }


def _name(body: dict[str, Any], key: str = "name") -> str:
    raw = body.get(key)
    if raw is None:
        raise PortunusError("invalid_name", f"{key} is missing; give the client a name", field=key)
    return check_client_name(raw, key)


def _address(body: dict[str, Any]) -> str | None:
    return check_client_address(body.get("address"))


def _ttl(body: dict[str, Any]) -> int:
    return check_enrollment_ttl(body.get("ttl_secs", DEFAULT_TTL_SECS))


async def visible_client_ids(ctx: ApiContext, call: Call) -> set[str] | None:
    """The client ids the caller may see; C{None}: all of them (superadmin or a C{*} grant)."""
    if call.who.is_superadmin:
        return None
    return granted_client_ids(await ctx.accounts.grants_for(call.who.user_id))


async def resolve_client(ctx: ApiContext, call: Call, ref: str) -> ClientView:
    """
    The client C{ref} names, its id, else its name, among the clients the
    caller may see.  A user cannot tell a client they have no grant on
    from one that does not exist: both are the same C{client_not_found},
    after the same work; a name several of the caller's clients share is
    C{client_name_ambiguous}, listing only those.
    """
    visible = await visible_client_ids(ctx, call)
    clients = [
        view
        for view in await ctx.plane.list_clients()
        if visible is None or view.client_id in visible
    ]
    for view in clients:
        if view.client_id == ref:
            return view
    named = [view for view in clients if view.name == ref]
    if len(named) > 1:
        ids = ", ".join(view.client_id for view in named)
        raise PortunusError(
            "client_name_ambiguous",
            f"{len(named)} clients are called {ref!r} ({ids}); give the client id instead",
            client=ref,
            client_ids=[view.client_id for view in named],
        )
    if not named:
        whose = "" if visible is None else " you have a grant on"
        raise PortunusError(
            "client_not_found",
            f"no client{whose} has the id or name {ref!r}; list-clients shows them",
            client=ref,
        )
    return named[0]


@ROUTES.route(
    "GET",
    "/v1/clients",
    "listClients",
    "List the clients the caller may see, by name then id",
    answer="ClientList",
)
async def list_clients(ctx: ApiContext, call: Call) -> object:
    views = await ctx.plane.list_clients()
    visible = await visible_client_ids(ctx, call)
    return [client_json(v) for v in views if visible is None or v.client_id in visible]


@ROUTES.route(
    "GET",
    "/v1/clients/{client_id}",
    "getClient",
    "Read a client",
    answer="Client",
    codes=("client_not_found",),
)
async def get_client(ctx: ApiContext, call: Call, client_id: str) -> object:
    visible = await visible_client_ids(ctx, call)
    if visible is not None and client_id not in visible:
        raise PortunusError(
            "client_not_found",
            f"no client you have a grant on has the id {client_id!r}",
            client_id=client_id,
        )
    return client_json(await ctx.plane.get_client(client_id))


@ROUTES.route(
    "POST",
    "/v1/client-enrollments",
    "enrollClient",
    "Create a client and its one-time enrollment code",
    access="superadmin",
    action="client.enroll",
    status=201,
    answer="Enrollment",
    body="EnrollmentCreate",
    codes=("invalid_json", "invalid_name", "invalid_client_address", "invalid_enrollment_ttl"),
)
async def enroll(ctx: ApiContext, call: Call) -> object:
    body = read_json(call.request)
    name, address, ttl = _name(body), _address(body), _ttl(body)
    view = await ctx.plane.enroll_client(name, address, ttl)
    call.note("client", view.client_id, client_name=view.client_name)
    return Answer(201, enrollment_json(view))


@ROUTES.route(
    "POST",
    "/v1/clients/{client_id}/enrollment",
    "reenrollClient",
    "A new enrollment code for an existing client; earlier codes stop working",
    access="superadmin",
    action="client.reenroll",
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
)
async def reenroll(ctx: ApiContext, call: Call, client_id: str) -> object:
    call.note("client", client_id)
    body = read_json(call.request, required=False)
    address, ttl = _address(body), _ttl(body)
    view = await ctx.plane.reenroll_client(client_id, address, ttl)
    return Answer(201, enrollment_json(view))


@ROUTES.route(
    "PATCH",
    "/v1/clients/{client_id}",
    "renameClient",
    "Rename a client; its live session is kept",
    access="superadmin",
    action="client.rename",
    answer="Client",
    body="ClientRename",
    codes=("invalid_json", "invalid_name", "client_not_found"),
)
async def rename(ctx: ApiContext, call: Call, client_id: str) -> object:
    call.note("client", client_id)
    name = _name(read_json(call.request))
    call.note(client_name=name)
    return client_json(await ctx.plane.rename_client(client_id, name))


@ROUTES.route(
    "POST",
    "/v1/clients/{client_id}/revoke",
    "revokeClient",
    "Revoke a client: its token stops working and its session closes (idempotent)",
    access="superadmin",
    action="client.revoke",
    status=204,
    codes=("client_not_found",),
)
async def revoke(ctx: ApiContext, call: Call, client_id: str) -> object:
    call.note("client", client_id)
    await ctx.plane.revoke_client(client_id)
    return Answer(204)


@ROUTES.route(
    "DELETE",
    "/v1/clients/{client_id}",
    "deleteClient",
    "Delete a revoked client with its rules",
    access="superadmin",
    action="client.delete",
    status=204,
    codes=("client_not_found", "client_not_revoked"),
)
async def delete(ctx: ApiContext, call: Call, client_id: str) -> object:
    call.note("client", client_id)
    await ctx.plane.delete_client(client_id)
    return Answer(204)
