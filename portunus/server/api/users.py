"""
C{/v1/users} (superadmins): creating, listing, reading and removing users,
and resetting a user's password.  Removing a user removes their grants and
rules too, and the edges drop those rules.
"""

from __future__ import annotations

from typing import Any

from portunus.errors import PortunusError
from portunus.server.api.app import ApiContext
from portunus.server.api.request import Answer, Call, read_json, remote_host, timestamp
from portunus.server.store import UserRecord

__all__ = ["install", "user_json"]


def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "display_name": user.display_name,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": timestamp(user.created_at),
        "password_change_required": user.password_change_required,
        "grant_count": user.grant_count,
    }


def install(ctx: ApiContext) -> None:
    accounts = ctx.accounts

    @ctx.route("/v1/users", "POST", "superadmin", action="user.create")
    async def create(call: Call) -> object:
        body = read_json(call.request)
        user = await accounts.create_user(body)
        call.note("user", user.user_id, role=user.role)
        return Answer(201, user_json(user))

    @ctx.route("/v1/users", "GET", "superadmin")
    async def list_users(call: Call) -> object:
        return [user_json(user) for user in await accounts.list_users()]

    @ctx.route("/v1/users/<user_id>", "GET", "superadmin")
    async def get_user(call: Call, user_id: str) -> object:
        return user_json(await accounts.get_user(user_id))

    @ctx.route("/v1/users/<user_id>", "DELETE", "superadmin", action="user.remove")
    async def remove(call: Call, user_id: str) -> object:
        call.note("user", user_id)
        removal = await accounts.remove_user(call.who.user_id, user_id)
        await ctx.plane.forget_rules(list(removal.rules))
        removed_rules = [record.rule_id for record in removal.rules]
        call.note(removed_rule_ids=removed_rules, revoked_grant_ids=list(removal.grant_ids))
        return {
            "user_id": user_id,
            "removed_credential_ids": list(removal.credential_ids),
            "revoked_grant_ids": list(removal.grant_ids),
            "removed_rule_ids": removed_rules,
        }

    @ctx.route("/v1/users/<user_id>/password", "POST", "superadmin", action="user.password_reset")
    async def reset_password(call: Call, user_id: str) -> object:
        call.note("user", user_id)
        body = read_json(call.request, required=False)
        temporary = body.get("temporary_password", False)
        if not isinstance(temporary, bool):
            raise PortunusError(
                "validation_failed",
                "temporary_password: use true to generate one, or give new_password",
                field="temporary_password",
            )
        new_password = body.get("new_password")
        if new_password is None and not temporary:
            temporary = True
        result = await accounts.reset_password(
            user_id, new_password, temporary, remote_host(call.request)
        )
        call.note(sessions_revoked=result.sessions_revoked, temporary=temporary)
        answer: dict[str, Any] = {
            "user_id": result.user_id,
            "sessions_revoked": result.sessions_revoked,
        }
        if result.temporary_password is not None:
            answer["temporary_password"] = result.temporary_password
        return answer
