"""
C{/v1/clients} and C{/v1/client-enrollments}: enrolling, listing,
renaming, revoking and deleting edge clients.
"""

from __future__ import annotations

from typing import Any

from portunus.errors import PortunusError
from portunus.server.api.app import ApiContext
from portunus.server.api.request import Answer, Call, read_json, timestamp
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
    "client_json",
    "install",
    "resolve_client",
    "visible_client_ids",
]


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


async def resolve_client(plane: Any, ref: str) -> ClientView:
    """
    The client C{ref} names: its id, else its name.  A name several
    clients share is C{client_name_ambiguous}: the operator must give the id.
    """
    clients: list[ClientView] = await plane.list_clients()
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
        raise PortunusError(
            "client_not_found",
            f"no client has the id or name {ref!r}; list-clients shows them",
            client=ref,
        )
    return named[0]


async def visible_client_ids(ctx: ApiContext, call: Call) -> set[str] | None:
    """The client ids the caller may see; C{None}: all of them (superadmin or a C{*} grant)."""
    if call.who.is_superadmin:
        return None
    return granted_client_ids(await ctx.accounts.grants_for(call.who.user_id))


def install(ctx: ApiContext) -> None:
    """Add the client routes to C{ctx.app}."""
    plane = ctx.plane

    @ctx.route("/v1/clients", "GET")
    async def list_clients(call: Call) -> object:
        views = await plane.list_clients()
        visible = await visible_client_ids(ctx, call)
        return [client_json(v) for v in views if visible is None or v.client_id in visible]

    @ctx.route("/v1/clients/<client_id>", "GET")
    async def get_client(call: Call, client_id: str) -> object:
        visible = await visible_client_ids(ctx, call)
        if visible is not None and client_id not in visible:
            raise PortunusError(
                "client_not_found",
                f"no client you have a grant on has the id {client_id!r}",
                client_id=client_id,
            )
        return client_json(await plane.get_client(client_id))

    @ctx.route("/v1/client-enrollments", "POST", "superadmin", action="client.enroll")
    async def enroll(call: Call) -> object:
        body = read_json(call.request)
        name, address, ttl = _name(body), _address(body), _ttl(body)
        view = await plane.enroll_client(name, address, ttl)
        call.note("client", view.client_id, client_name=view.client_name)
        return Answer(201, enrollment_json(view))

    @ctx.route("/v1/clients/<client_id>/enrollment", "POST", "superadmin", action="client.reenroll")
    async def reenroll(call: Call, client_id: str) -> object:
        call.note("client", client_id)
        body = read_json(call.request, required=False)
        address, ttl = _address(body), _ttl(body)
        view = await plane.reenroll_client(client_id, address, ttl)
        return Answer(201, enrollment_json(view))

    @ctx.route("/v1/clients/<client_id>", "PATCH", "superadmin", action="client.rename")
    async def rename(call: Call, client_id: str) -> object:
        call.note("client", client_id)
        name = _name(read_json(call.request))
        call.note(client_name=name)
        return client_json(await plane.rename_client(client_id, name))

    @ctx.route("/v1/clients/<client_id>/revoke", "POST", "superadmin", action="client.revoke")
    async def revoke(call: Call, client_id: str) -> object:
        call.note("client", client_id)
        await plane.revoke_client(client_id)
        return Answer(204)

    @ctx.route("/v1/clients/<client_id>", "DELETE", "superadmin", action="client.delete")
    async def delete(call: Call, client_id: str) -> object:
        call.note("client", client_id)
        await plane.delete_client(client_id)
        return Answer(204)
