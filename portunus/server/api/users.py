"""
C{/v1/users} (superadmins): creating, listing, reading and removing users,
and resetting a user's password.  Removing a user removes their grants and
rules too, and the edges drop those rules.
"""

from __future__ import annotations

from typing import Any

from portunus.errors import PortunusError
from portunus.server.api.request import Answer, ApiContext, Call, read_json, remote_host, timestamp
from portunus.server.api.route import Routes
from portunus.server.api.schemas import NEW_PASSWORD_CODES
from portunus.server.store import UserRecord

__all__ = ["ROUTES", "user_json"]

ROUTES = Routes("users")


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


@ROUTES.route(
    "POST",
    "/v1/users",
    "createUser",
    "Create a user",
    access="superadmin",
    action="user.create",
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
)
async def create(ctx: ApiContext, call: Call) -> object:
    body = read_json(call.request)
    user = await ctx.accounts.create_user(body)
    call.note("user", user.user_id, role=user.role)
    return Answer(201, user_json(user))


@ROUTES.route("GET", "/v1/users", "listUsers", "List users", access="superadmin", answer="UserList")
async def list_users(ctx: ApiContext, call: Call) -> object:
    return [user_json(user) for user in await ctx.accounts.list_users()]


@ROUTES.route(
    "GET",
    "/v1/users/{user_id}",
    "getUser",
    "Read a user",
    access="superadmin",
    answer="User",
    codes=("user_not_found",),
)
async def get_user(ctx: ApiContext, call: Call, user_id: str) -> object:
    return user_json(await ctx.accounts.get_user(user_id))


@ROUTES.route(
    "DELETE",
    "/v1/users/{user_id}",
    "removeUser",
    "Remove a user with their credentials, grants and rules",
    access="superadmin",
    action="user.remove",
    answer="UserRemoval",
    codes=("reserved_user_id", "user_not_found", "cannot_remove_self", "last_superadmin"),
)
async def remove(ctx: ApiContext, call: Call, user_id: str) -> object:
    call.note("user", user_id)
    removal = await ctx.accounts.remove_user(call.who.user_id, user_id)
    await ctx.plane.forget_rules(list(removal.rules))
    removed_rules = [record.rule_id for record in removal.rules]
    call.note(removed_rule_ids=removed_rules, revoked_grant_ids=list(removal.grant_ids))
    return {
        "user_id": user_id,
        "removed_credential_ids": list(removal.credential_ids),
        "revoked_grant_ids": list(removal.grant_ids),
        "removed_rule_ids": removed_rules,
    }


@ROUTES.route(
    "POST",
    "/v1/users/{user_id}/password",
    "resetPassword",
    "Reset a user's password, ending their sessions (throttled)",
    access="superadmin",
    action="user.password_reset",
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
)
async def reset_password(ctx: ApiContext, call: Call, user_id: str) -> object:
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
    result = await ctx.accounts.reset_password(
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
