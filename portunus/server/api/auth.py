"""
C{/v1/auth/*} and C{/v1/users/me*}: onboarding, login, logout, who am I,
and changing one's own password.
"""

from __future__ import annotations

from typing import Any

from portunus.server.api.app import ApiContext
from portunus.server.api.request import SESSION_COOKIE, Answer, Call, read_json, remote_host
from portunus.server.auth.accounts import SESSION_ABSOLUTE_SECS
from portunus.server.auth.principal import Principal

__all__ = ["install", "me_json"]


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


def install(ctx: ApiContext) -> None:
    accounts = ctx.accounts

    @ctx.route("/v1/auth/status", "GET", "public")
    async def status(call: Call) -> object:
        return {"onboarding_required": not accounts.bootstrapped()}

    @ctx.route("/v1/auth/onboarding", "POST", "public", action="auth.onboarding")
    async def onboarding(call: Call) -> object:
        body = read_json(call.request)
        user_id = body.get("user_id")
        if isinstance(user_id, str):
            call.actor = user_id[:64]
        user = await accounts.onboard(body, remote_host(call.request))
        call.note("user", user.user_id)
        return Answer(
            201,
            {"user_id": user.user_id, "display_name": user.display_name, "role": user.role},
        )

    @ctx.route("/v1/auth/login", "POST", "public", action="auth.login")
    async def login(call: Call) -> object:
        body = read_json(call.request)
        user_id = body.get("user_id")
        if isinstance(user_id, str):
            call.actor = user_id[:64]
        agent = call.request.getHeader(b"user-agent")
        result = await accounts.login(
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

    @ctx.route("/v1/auth/logout", "POST", action="auth.logout", before_password_change=True)
    async def logout(call: Call) -> object:
        await accounts.logout(call.who)
        _set_cookie(ctx, call, "", 0)
        return Answer(204)

    @ctx.route("/v1/users/me", "GET", before_password_change=True)
    async def me(call: Call) -> object:
        return me_json(call.who)

    @ctx.route(
        "/v1/users/me/password",
        "POST",
        action="user.password_change",
        before_password_change=True,
    )
    async def change_password(call: Call) -> object:
        call.note("user", call.who.user_id)
        await accounts.change_own_password(
            call.who, read_json(call.request), remote_host(call.request)
        )
        return Answer(204)
