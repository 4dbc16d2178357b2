"""
The accounts service: onboarding, logins and console sessions, bearer
credentials, users and their passwords.

It is what the API pipeline authenticates against (it provides
L{portunus.server.api.app.Authenticator}) and what the account routes and
offline CLI commands call.  Field checks live here too, so the API and the
CLI refuse the same values with the same codes.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from portunus.control.enrollment import hash_secret, new_secret
from portunus.errors import PortunusError
from portunus.fields import BAD_CHARACTERS, has_bad_characters
from portunus.server.auth.passwords import (
    Passwords,
    check_confirmation,
    check_password_policy,
    new_temporary_password,
)
from portunus.server.auth.principal import (
    LEGACY_USER,
    SUPERADMIN_USER,
    AuthMethod,
    Principal,
    Role,
)
from portunus.server.auth.setupfile import SetupTokenFile
from portunus.server.auth.throttle import Attempt, Throttle
from portunus.server.store import (
    AccountStore,
    GrantRecord,
    RuleRecord,
    UserRecord,
    UserRemoval,
)

__all__ = [
    "SESSION_ABSOLUTE_SECS",
    "SESSION_IDLE_SECS",
    "SETUP_TOKEN_TTL_SECS",
    "Accounts",
    "Login",
    "PasswordReset",
    "check_display_name",
    "check_role",
    "check_user_id",
]

log = Logger(namespace="portunus.server.auth")

#: A console session ends after 8 hours without a request ...
SESSION_IDLE_SECS = 8 * 3600
#: ... and 7 days after login whatever happens.
SESSION_ABSOLUTE_SECS = 7 * 86400
#: The idle timer is written at most once a minute per session.
SESSION_TOUCH_SECS = 60
#: The onboarding setup token's lifetime.
SETUP_TOKEN_TTL_SECS = 30 * 60

_USER_ID = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: The throttle's subject for onboarding attempts (there is no user yet).
_ONBOARDING_SUBJECT = "_onboarding"


def check_user_id(value: object, field: str = "user_id") -> str:
    """A new user's id: C{invalid_user_id}, C{reserved_user_id}."""
    if isinstance(value, str) and value.startswith("_"):
        raise PortunusError(
            "reserved_user_id",
            f"{field}: ids starting with _ are reserved for the server; pick another",
            field=field,
        )
    if not isinstance(value, str) or not _USER_ID.fullmatch(value):
        raise PortunusError(
            "invalid_user_id",
            f"{field}: use 1 to 32 of a-z, 0-9, _ and -, starting with a letter (got {value!r})",
            field=field,
        )
    return value


def check_display_name(value: object, field: str = "display_name") -> str:
    """A display name: 1 to 64 printable characters (L{has_bad_characters})."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise PortunusError(
            "invalid_display_name",
            f"{field}: use 1 to 64 characters without control or format characters",
            field=field,
        )
    if has_bad_characters(value):
        raise PortunusError("invalid_display_name", f"{field} {BAD_CHARACTERS}", field=field)
    return value.strip()


def check_role(value: object, field: str = "role") -> Role:
    try:
        return Role(str(value))
    except ValueError:
        raise PortunusError(
            "invalid_role", f'{field}: use "superadmin" or "user" (got {value!r})', field=field
        ) from None


def _principal(user: UserRecord, method: AuthMethod, session: str | None = None) -> Principal:
    return Principal(
        user_id=user.user_id,
        role=Role(user.role),
        auth_method=method,
        display_name=user.display_name,
        password_change_required=user.password_change_required and method is AuthMethod.SESSION,
        session_hash=session,
    )


@attrs.frozen
class Login:
    """A successful login: the cookie's secret (shown once) and who logged in."""

    secret: str = attrs.field(repr=False)
    user: UserRecord


@attrs.frozen
class PasswordReset:
    user_id: str
    sessions_revoked: int
    #: The generated temporary password, when one was asked for (shown once).
    temporary_password: str | None = attrs.field(default=None, repr=False)


class Accounts:
    """Users, sessions and credentials over the store's L{AccountStore}."""

    def __init__(
        self,
        store: AccountStore,
        passwords: Passwords,
        throttle: Throttle,
        clock: IReactorTime,
        *,
        operator_token: str | None = None,
        make_secret: Callable[[], str] = new_secret,
        setup_file: SetupTokenFile | None = None,
    ) -> None:
        """
        @param setup_file: where the setup token is kept while onboarding
            is open (the server's C{onboarding.token}); C{None}: nowhere.
        """
        self._store = store
        self._passwords = passwords
        self._throttle = throttle
        self._clock = clock
        self._operator_token = operator_token
        self._make_secret = make_secret
        self.setup_file = setup_file
        self._bootstrapped = False

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> str | None:
        """
        Load whether onboarding is over and, while it is not, rotate the
        setup token and return it (also written to the setup file).  The
        operator token's reserved user is created on first use of it.
        """
        if self._operator_token:
            await self._store.ensure_reserved_user(
                LEGACY_USER, "operator token", self._clock.seconds()
            )
        self._bootstrapped = await self._store.human_superadmin_exists()
        if self._bootstrapped:
            # Left over, e.g. from before a restore of an onboarded state.
            self._onboarding_closed()
            return None
        return await self.rotate_setup_token()

    def bootstrapped(self) -> bool:
        return self._bootstrapped

    async def rotate_setup_token(self) -> str:
        """
        A new onboarding setup token (the old one stops working), written
        to the setup file.  It is never logged: the log names the file.
        """
        token = self._make_secret()
        now = self._clock.seconds()
        await self._store.set_setup_token(hash_secret(token), now, now + SETUP_TOKEN_TTL_SECS)
        where = None if self.setup_file is None else self.setup_file.path
        if self.setup_file is not None:
            try:
                self.setup_file.publish(token)
            except OSError as e:
                log.error(
                    "cannot write the onboarding setup token to {path}: {reason}; "
                    "fix the data dir's permissions and restart the server",
                    event="operator.onboarding_file_failed",
                    path=where,
                    reason=e.strerror or str(e),
                )
                where = None
        log.info(
            "onboarding setup token rotated; it expires in 30 minutes",
            event="operator.onboarding_setup_token_rotated",
            path=where,
        )
        return token

    def _onboarding_closed(self) -> None:
        self._bootstrapped = True
        if self.setup_file is not None:
            try:
                self.setup_file.retract()
            except OSError as e:
                log.error(
                    "onboarding is closed but {path} could not be removed ({reason}); "
                    "delete it by hand",
                    event="operator.onboarding_file_failed",
                    path=self.setup_file.path,
                    reason=e.strerror or str(e),
                )

    # -- authentication (the pipeline) -----------------------------------

    def authenticate_bearer(self, token: str) -> Deferred[Principal]:
        return ensureDeferred(self._bearer(token))

    async def _bearer(self, token: str) -> Principal:
        if self._operator_token and hmac.compare_digest(
            token.encode("utf-8"), self._operator_token.encode("utf-8")
        ):
            return Principal(LEGACY_USER, Role.SUPERADMIN, AuthMethod.BEARER, "operator token")
        user = await self._store.user_for_credential(hash_secret(token), self._clock.seconds())
        if user is None:
            raise PortunusError(
                "credential_invalid",
                "the bearer token is not known to this server; check PORTUNUS_OPERATOR_TOKEN "
                "against operator_token in server.toml or the operator.token file in the data dir",
                reason="token_not_found",
            )
        if user.disabled:
            raise PortunusError("user_disabled", f"user {user.user_id!r} is disabled")
        return _principal(user, AuthMethod.BEARER)

    def authenticate_session(self, secret: str, remote: str | None) -> Deferred[Principal]:
        return ensureDeferred(self._session(secret))

    async def _session(self, secret: str) -> Principal:
        session_hash = hash_secret(secret)
        user = await self._store.session_user(
            session_hash, self._clock.seconds(), SESSION_IDLE_SECS, SESSION_TOUCH_SECS
        )
        if user is None:
            raise PortunusError(
                "credential_invalid", "your session has ended; log in again", reason="session"
            )
        if user.disabled:
            raise PortunusError("user_disabled", f"user {user.user_id!r} is disabled")
        return _principal(user, AuthMethod.SESSION, session_hash)

    # -- onboarding, login, logout ----------------------------------------

    async def onboard(self, body: dict[str, Any], remote: str | None) -> UserRecord:
        """
        Create the first superadmin from an onboarding body (C{user_id},
        C{display_name}, C{password}, C{password_confirm}, C{setup_token}).
        """
        with self._throttle.attempt("onboarding", _ONBOARDING_SUBJECT, remote) as attempt:
            if self._bootstrapped:
                raise PortunusError("already_bootstrapped", "a superadmin exists already; log in")
            token = body.get("setup_token")
            if not isinstance(token, str) or not token:
                raise PortunusError(
                    "setup_token_required",
                    "setup_token: send the onboarding setup token (portunus-server "
                    "onboarding-token prints it; the server keeps it in onboarding.token in its "
                    "data dir)",
                    field="setup_token",
                )
            stored = await self._store.setup_token()
            now = self._clock.seconds()
            if (
                stored is None
                or now >= stored[1]
                or not hmac.compare_digest(hash_secret(token), stored[0])
            ):
                attempt.failed()
                raise PortunusError(
                    "setup_token_invalid",
                    "setup_token: wrong or expired (a new one replaces it every 30 minutes); "
                    "run portunus-server onboarding-token for the current one",
                    field="setup_token",
                )
            return await self._create_first_superadmin(body, now, attempt)

    async def _create_first_superadmin(
        self, body: dict[str, Any], now: float, attempt: Attempt
    ) -> UserRecord:
        user_id = check_user_id(body.get("user_id"))
        display_name = check_display_name(body.get("display_name", user_id))
        password = check_password_policy(body.get("password"), "password")
        check_confirmation(password, body.get("password_confirm"), "password_confirm")
        password_hash = await self._passwords.hash(password)
        user = await self._store.create_user(
            user_id, Role.SUPERADMIN, display_name, password_hash, now, only_if_no_superadmin=True
        )
        attempt.succeeded()
        self._onboarding_closed()
        log.info(
            "first superadmin {user_id} created; onboarding is closed",
            event="operator.user_added",
            user_id=user_id,
            role="superadmin",
        )
        return user

    async def login(
        self, user_id: object, password: object, remote: str | None, user_agent: str | None
    ) -> Login:
        """
        Check a password and open a session.  Every failure is the same
        C{invalid_login}, taking the same time for unknown users.  The
        guess is reserved with the throttle before the password is checked.
        """
        subject = user_id if isinstance(user_id, str) and _USER_ID.fullmatch(user_id) else None
        with self._throttle.attempt("login", subject or "_unknown", remote) as attempt:
            password_hash = await self._store.password_hash(subject) if subject else None
            given = password if isinstance(password, str) else ""
            if not await self._passwords.verify(password_hash, given) or subject is None:
                attempt.failed()
                raise PortunusError("invalid_login", "the user id or password is wrong")
            attempt.succeeded()
        user = await self._store.get_user(subject)
        secret = self._make_secret()
        now = self._clock.seconds()
        await self._store.create_session(
            hash_secret(secret),
            subject,
            now,
            now + SESSION_ABSOLUTE_SECS,
            remote,
            (user_agent or "")[:256] or None,
        )
        return Login(secret, user)

    async def logout(self, principal: Principal) -> None:
        if principal.session_hash is not None:
            await self._store.revoke_session(principal.session_hash, self._clock.seconds())

    # -- passwords --------------------------------------------------------

    async def change_own_password(
        self, principal: Principal, body: dict[str, Any], remote: str | None = None
    ) -> None:
        """
        C{current_password}, C{new_password}, C{new_password_confirm}; other
        sessions end.  Wrong current passwords are throttled like logins, so
        a stolen session cannot be used to guess the password.
        """
        with self._throttle.attempt("password_change", principal.user_id, remote) as attempt:
            current = body.get("current_password")
            password_hash = await self._store.password_hash(principal.user_id)
            if (
                password_hash is None
                or not isinstance(current, str)
                or not await self._passwords.verify(password_hash, current)
            ):
                attempt.failed()
                raise PortunusError(
                    "password_invalid",
                    "current_password: that is not your current password",
                    field="current_password",
                )
            new = check_password_policy(body.get("new_password"), "new_password")
            check_confirmation(new, body.get("new_password_confirm"), "new_password_confirm")
            new_hash = await self._passwords.hash(new)
            await self._store.set_password(
                principal.user_id,
                new_hash,
                self._clock.seconds(),
                change_required=False,
                keep_session=principal.session_hash,
            )
            attempt.succeeded()

    async def reset_password(
        self,
        user_id: str,
        new_password: object,
        temporary: bool,
        remote: str | None,
    ) -> PasswordReset:
        """
        Set C{user_id}'s password (given, or a generated temporary one the
        user must change) and end all their sessions.
        """
        with self._throttle.attempt("password_reset", user_id, remote) as attempt:
            if user_id.startswith("_"):
                raise PortunusError(
                    "reserved_user_id",
                    f"{user_id!r} is a reserved machine user without a password",
                )
            try:
                await self._store.get_user(user_id)
            except PortunusError:
                attempt.failed()
                raise
        if temporary or new_password is None:
            password = new_temporary_password()
            shown: str | None = password
            change_required = True
        else:
            password = check_password_policy(new_password, "new_password")
            shown = None
            change_required = False
        password_hash = await self._passwords.hash(password)
        revoked = await self._store.set_password(
            user_id, password_hash, self._clock.seconds(), change_required=change_required
        )
        log.info(
            "password of {user_id} reset; {sessions_revoked} session(s) ended",
            event="operator.password_reset",
            user_id=user_id,
            sessions_revoked=revoked,
            temporary=shown is not None,
        )
        return PasswordReset(user_id, revoked, shown)

    # -- users ------------------------------------------------------------

    async def create_user(self, body: dict[str, Any]) -> UserRecord:
        """A user from a create body (C{user_id}, C{display_name}, C{role}, C{initial_password})."""
        user_id = check_user_id(body.get("user_id"))
        display_name = check_display_name(body.get("display_name", user_id))
        role = check_role(body.get("role", "user"))
        initial = body.get("initial_password")
        if initial is None or initial == "":
            raise PortunusError(
                "initial_password_required",
                "initial_password: give the new user a password of at least 12 characters",
                field="initial_password",
            )
        password = check_password_policy(initial, "initial_password")
        change_required = body.get("password_change_required", False)
        if not isinstance(change_required, bool):
            raise PortunusError(
                "validation_failed",
                "password_change_required: use true or false",
                field="password_change_required",
            )
        password_hash = await self._passwords.hash(password)
        user = await self._store.create_user(
            user_id,
            role,
            display_name,
            password_hash,
            self._clock.seconds(),
            password_change_required=change_required,
        )
        if role is Role.SUPERADMIN:
            self._onboarding_closed()
        log.info(
            "user {user_id} added ({role})",
            event="operator.user_added",
            user_id=user_id,
            role=str(role),
        )
        return user

    async def remove_user(self, actor: str | None, user_id: str) -> UserRemoval:
        """
        Remove C{user_id} with their grants, rules and credentials.  The
        operator token's user stays while the token is configured: the token
        authenticates without the store, so it would go on working as a user
        who no longer exists (and whose pushes then fail).
        """
        if user_id == LEGACY_USER and self._operator_token and actor != user_id:
            raise PortunusError(
                "reserved_user_id",
                f"{user_id!r} is the operator token's user and stays while operator_token is "
                "set; remove operator_token from server.toml and restart to retire it",
                user_id=user_id,
            )
        removal = await self._store.remove_user(user_id, actor)
        log.info(
            "user {user_id} removed with {rules} rule(s) and {grants} grant(s)",
            event="operator.user_removed",
            user_id=user_id,
            rules=len(removal.rules),
            grants=len(removal.grant_ids),
        )
        return removal

    async def issue_superadmin_token(self, display_name: str) -> str:
        """
        Create the reserved C{_superadmin} with a new bearer token, printed
        once by C{bootstrap-superadmin}; C{already_bootstrapped} if a
        superadmin (other than the operator token's) exists.
        """
        now = self._clock.seconds()
        if self._bootstrapped:
            raise PortunusError(
                "already_bootstrapped", "a superadmin who can log in exists already"
            )
        user = await self._store.create_user(
            SUPERADMIN_USER, Role.SUPERADMIN, display_name, None, now
        )
        token = self._make_secret()
        await self._store.add_credential(user.user_id, hash_secret(token), "bootstrap", now)
        return token

    def get_user(self, user_id: str) -> Deferred[UserRecord]:
        return self._store.get_user(user_id)

    def list_users(self) -> Deferred[list[UserRecord]]:
        return self._store.list_users()

    # -- grants -----------------------------------------------------------

    def grants_for(self, user_id: str) -> Deferred[list[GrantRecord]]:
        return self._store.list_grants(user_id)

    def list_grants(self, user_id: str | None) -> Deferred[list[GrantRecord]]:
        return self._store.list_grants(user_id)

    async def create_grant(
        self,
        user_id: str,
        client_id: str,
        start: int,
        end: int,
        protocols: list[str],
        note: str,
        allow_local_targets: bool = False,
    ) -> GrantRecord:
        grant = await self._store.create_grant(
            user_id,
            client_id,
            start,
            end,
            protocols,
            note,
            self._clock.seconds(),
            allow_local_targets,
        )
        log.info(
            "grant {grant_id} added for {user_id}",
            event="operator.grant_added",
            grant_id=grant.grant_id,
            user_id=user_id,
            client_id=client_id,
            ports=f"{start}-{end}",
            protocols=",".join(protocols),
            allow_local_targets=allow_local_targets,
        )
        return grant

    async def revoke_grant(self, grant_id: str) -> tuple[GrantRecord, list[RuleRecord]]:
        grant, rules = await self._store.revoke_grant(grant_id)
        log.info(
            "grant {grant_id} revoked with {rules} rule(s)",
            event="operator.grant_revoked",
            grant_id=grant_id,
            rules=len(rules),
        )
        return grant, rules
