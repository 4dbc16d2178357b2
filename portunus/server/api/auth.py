"""
C{/v1/auth/*} and C{/v1/users/me*}: onboarding, login, logout, who am I,
and changing one's own password.
"""

from __future__ import annotations

from typing import Any

from portunus.server.api.request import (
    SESSION_COOKIE,
    Answer,
    ApiContext,
    Call,
    read_json,
    remote_host,
)
from portunus.server.api.route import Routes
from portunus.server.api.schemas import NEW_PASSWORD_CODES
from portunus.server.auth.accounts import SESSION_ABSOLUTE_SECS
from portunus.server.auth.principal import Principal

__all__ = ["ROUTES", "me_json"]

ROUTES = Routes("auth")


def me_json(principal: Principal) -> dict[str, Any]:
    return {
        "user_id": principal.user_id,
        "role": principal.role.value,
        "display_name": principal.display_name,
        "auth_method": principal.auth_method.value,
        "password_change_required": principal.password_change_required,
    }


def _set_cookie(ctx: ApiContext, call: Call, value: str, max_age: int) -> None:
    attributes = f"Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    if ctx.secure_cookies(call.request):
        attributes += "; Secure"
    call.request.setHeader(
        b"set-cookie", f"{SESSION_COOKIE.decode()}={value}; {attributes}".encode("ascii")
    )


@ROUTES.route(
    "GET",
    "/v1/auth/status",
    "authStatus",
    "Whether onboarding is still open",
    access="public",
    answer="AuthStatus",
)
async def status(ctx: ApiContext, call: Call) -> object:
    return {"onboarding_required": not ctx.accounts.bootstrapped()}


@ROUTES.route(
    "POST",
    "/v1/auth/onboarding",
    "onboard",
    "Create the first superadmin with the setup token (throttled)",
    access="public",
    action="auth.onboarding",
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
)
async def onboarding(ctx: ApiContext, call: Call) -> object:
    body = read_json(call.request)
    user_id = body.get("user_id")
    if isinstance(user_id, str):
        call.actor = user_id[:64]
    user = await ctx.accounts.onboard(body, remote_host(call.request))
    call.note("user", user.user_id)
    return Answer(
        201,
        {"user_id": user.user_id, "display_name": user.display_name, "role": user.role},
    )


@ROUTES.route(
    "POST",
    "/v1/auth/login",
    "login",
    "Log in with a password; sets the session cookie (throttled)",
    access="public",
    action="auth.login",
    answer="LoggedIn",
    body="Login",
    codes=("invalid_json", "rate_limited", "invalid_login"),
    headers={"Set-Cookie": "portunus_session=...; Path=/; HttpOnly; SameSite=Lax"},
)
async def login(ctx: ApiContext, call: Call) -> object:
    body = read_json(call.request)
    user_id = body.get("user_id")
    if isinstance(user_id, str):
        call.actor = user_id[:64]
    agent = call.request.getHeader(b"user-agent")
    result = await ctx.accounts.login(
        user_id,
        body.get("password"),
        remote_host(call.request),
        agent.decode("latin-1") if agent else None,
    )
    call.note("user", result.user.user_id)
    _set_cookie(ctx, call, result.secret, SESSION_ABSOLUTE_SECS)
    return {
        "user_id": result.user.user_id,
        "role": result.user.role,
        "display_name": result.user.display_name,
        "password_change_required": result.user.password_change_required,
    }


@ROUTES.route(
    "POST",
    "/v1/auth/logout",
    "logout",
    "End this session; expires the cookie",
    action="auth.logout",
    before_password_change=True,
    status=204,
    headers={"Set-Cookie": "portunus_session=; Max-Age=0"},
)
async def logout(ctx: ApiContext, call: Call) -> object:
    await ctx.accounts.logout(call.who)
    _set_cookie(ctx, call, "", 0)
    return Answer(204)


@ROUTES.route(
    "GET",
    "/v1/users/me",
    "me",
    "Who the caller is",
    tag="users",
    before_password_change=True,
    answer="Me",
)
async def me(ctx: ApiContext, call: Call) -> object:
    return me_json(call.who)


@ROUTES.route(
    "POST",
    "/v1/users/me/password",
    "changeOwnPassword",
    "Change one's own password; one's other sessions end (throttled)",
    tag="users",
    action="user.password_change",
    before_password_change=True,
    status=204,
    body="PasswordChange",
    codes=(
        "invalid_json",
        "rate_limited",
        *NEW_PASSWORD_CODES,
        "password_mismatch",
        "password_hash_failed",
    ),
)
async def change_password(ctx: ApiContext, call: Call) -> object:
    call.note("user", call.who.user_id)
    await ctx.accounts.change_own_password(
        call.who, read_json(call.request), remote_host(call.request)
    )
    return Answer(204)
