"""
Users, their bearer credentials and console sessions, grants and the
onboarding setup token: the named transactions behind accounts and RBAC.

Password hashes and token hashes go in and are compared here, but never
come out in a record; L{AccountStore.password_hash} is the one read of a
hash, for the verifier.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred

from portunus.errors import PortunusError
from portunus.server.store._ids import new_ulid
from portunus.server.store._records import RuleRecord
from portunus.server.store._rulerows import delete_rules_where
from portunus.server.store._runner import Transact

__all__ = [
    "AccountStore",
    "GrantRecord",
    "UserRecord",
    "UserRemoval",
]

T = TypeVar("T")

#: Grant protocol bitmask, as Portunus stores it.
PROTOCOL_BITS = {"tcp": 1, "udp": 2}

_USER_COLUMNS = (
    "u.user_id, u.role, u.display_name, u.disabled, u.created_at, "
    "u.password_change_required, u.password_hash IS NOT NULL"
)
#: Every user read: the columns above and how many grants the user holds.
_USER_SELECT = (
    f"SELECT {_USER_COLUMNS}, (SELECT count(*) FROM grants g WHERE g.user_id = u.user_id) "
    "FROM users u"
)
_GRANT_COLUMNS = (
    "g.grant_id, g.user_id, g.client_id, c.name, g.listen_port_start, g.listen_port_end, "
    "g.protocols, g.note, g.created_at, g.allow_local_targets"
)
_GRANT_SELECT = (
    f"SELECT {_GRANT_COLUMNS} FROM grants g LEFT JOIN clients c ON c.client_id = g.client_id"
)
#: A superadmin who can log in: onboarding is over once one exists.
_HUMAN_SUPERADMIN = (
    "role = 'superadmin' AND disabled = 0 AND password_hash IS NOT NULL "
    "AND user_id NOT LIKE '\\_%' ESCAPE '\\'"
)


@attrs.frozen
class UserRecord:
    user_id: str
    role: str
    display_name: str
    disabled: bool
    created_at: float
    password_change_required: bool
    #: The user can log in with a password (reserved machine users cannot).
    has_password: bool
    #: How many grants the user holds.
    grant_count: int = 0


@attrs.frozen
class GrantRecord:
    grant_id: str
    user_id: str
    #: A client id, or C{*} for every client.
    client_id: str
    #: The client's current name (C{*} for all; C{None} if it was deleted).
    client_name: str | None
    listen_port_start: int
    listen_port_end: int
    protocols: tuple[str, ...]
    note: str
    created_at: float
    #: Rules pushed under it may target loopback, link-local and the
    #: edge's own addresses.
    allow_local_targets: bool = False

    def covers(self, client_id: str, protocol: str, start: int, end: int) -> bool:
        return (
            self.client_id in ("*", client_id)
            and protocol in self.protocols
            and self.listen_port_start <= start
            and end <= self.listen_port_end
        )


@attrs.frozen
class UserRemoval:
    """What removing a user took with it."""

    user: UserRecord
    grant_ids: tuple[str, ...]
    credential_ids: tuple[str, ...]
    rules: tuple[RuleRecord, ...]


def _user(row: Sequence[Any]) -> UserRecord:
    user_id, role, name, disabled, created, change, has_password = row[:7]
    count = row[7] if len(row) > 7 else 0
    return UserRecord(
        user_id, role, name, bool(disabled), created, bool(change), bool(has_password), count
    )


def _grant(row: Sequence[Any]) -> GrantRecord:
    grant_id, user_id, client_id, name, start, end, bits, note, created, local = row
    protocols = tuple(p for p, bit in PROTOCOL_BITS.items() if bits & bit)
    return GrantRecord(
        grant_id,
        user_id,
        client_id,
        "*" if client_id == "*" else name,
        start,
        end,
        protocols,
        note,
        created,
        bool(local),
    )


def _user_not_found(user_id: str) -> PortunusError:
    return PortunusError("user_not_found", f"no user has the id {user_id!r}", user_id=user_id)


def _fetch_user(conn: sqlite3.Connection, user_id: str) -> UserRecord:
    row = conn.execute(f"{_USER_SELECT} WHERE u.user_id = ?", (user_id,)).fetchone()
    if row is None:
        raise _user_not_found(user_id)
    return _user(row)


def _human_superadmins(conn: sqlite3.Connection) -> int:
    (count,) = conn.execute(f"SELECT count(*) FROM users WHERE {_HUMAN_SUPERADMIN}").fetchone()
    return int(count)


def _revoke_sessions(
    conn: sqlite3.Connection, user_id: str, now: float, keep: str | None = None
) -> int:
    cursor = conn.execute(
        "UPDATE web_sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL "
        "AND session_hash IS NOT ?",
        (now, user_id, keep),
    )
    return cursor.rowcount


class AccountStore:
    """
    The accounts half of the store; reach it as C{store.accounts}.  Each
    method is one named transaction run by the store's runner.
    """

    def __init__(
        self,
        run: Transact,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._run = run
        self._randbytes = randbytes

    # -- users ------------------------------------------------------------

    def human_superadmin_exists(self) -> Deferred[bool]:
        """A superadmin who can log in exists: onboarding is over."""
        return self._run(
            "human_superadmin_exists", lambda conn: _human_superadmins(conn) > 0, write=False
        )

    def create_user(
        self,
        user_id: str,
        role: str,
        display_name: str,
        password_hash: str | None,
        now: float,
        *,
        password_change_required: bool = False,
        only_if_no_superadmin: bool = False,
    ) -> Deferred[UserRecord]:
        """
        A new user; C{user_already_exists}.  With C{only_if_no_superadmin}
        (onboarding) the insert happens only while no superadmin can log in,
        else C{already_bootstrapped}, atomically.
        """

        def txn(conn: sqlite3.Connection) -> UserRecord:
            if only_if_no_superadmin and _human_superadmins(conn) > 0:
                raise PortunusError(
                    "already_bootstrapped",
                    "a superadmin exists already; log in instead",
                )
            try:
                conn.execute(
                    "INSERT INTO users (user_id, role, display_name, created_at, password_hash, "
                    "password_change_required) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        user_id,
                        role,
                        display_name,
                        now,
                        password_hash,
                        int(password_change_required),
                    ),
                )
            except sqlite3.IntegrityError as e:
                if "UNIQUE" not in str(e):
                    raise
                raise PortunusError(
                    "user_already_exists",
                    f"a user with the id {user_id!r} exists already",
                    user_id=user_id,
                ) from None
            if only_if_no_superadmin:
                conn.execute("DELETE FROM onboarding_setup")
            return _fetch_user(conn, user_id)

        return self._run("create_user", txn, write=True)

    def ensure_reserved_user(self, user_id: str, display_name: str, now: float) -> Deferred[None]:
        """Create the reserved machine superadmin C{user_id} unless it exists."""

        def txn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO users (user_id, role, display_name, created_at) "
                "VALUES (?, 'superadmin', ?, ?) ON CONFLICT (user_id) DO NOTHING",
                (user_id, display_name, now),
            )

        return self._run("ensure_reserved_user", txn, write=True)

    def get_user(self, user_id: str) -> Deferred[UserRecord]:
        """The user; C{user_not_found}."""
        return self._run("get_user", lambda conn: _fetch_user(conn, user_id), write=False)

    def list_users(self) -> Deferred[list[UserRecord]]:
        """Every user with their grant count, ordered by id."""

        def txn(conn: sqlite3.Connection) -> list[UserRecord]:
            rows = conn.execute(f"{_USER_SELECT} ORDER BY u.user_id").fetchall()
            return [_user(row) for row in rows]

        return self._run("list_users", txn, write=False)

    def password_hash(self, user_id: str) -> Deferred[str | None]:
        """The user's password hash; C{None} for unknown, disabled or password-less users."""

        def txn(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT password_hash FROM users WHERE user_id = ? AND disabled = 0", (user_id,)
            ).fetchone()
            return None if row is None else row[0]

        return self._run("password_hash", txn, write=False)

    def set_password(
        self,
        user_id: str,
        password_hash: str,
        now: float,
        *,
        change_required: bool,
        keep_session: str | None = None,
    ) -> Deferred[int]:
        """
        Replace the user's password and revoke their sessions (all but
        C{keep_session}); returns how many were revoked.  C{user_not_found}.
        """

        def txn(conn: sqlite3.Connection) -> int:
            _fetch_user(conn, user_id)
            conn.execute(
                "UPDATE users SET password_hash = ?, password_change_required = ? "
                "WHERE user_id = ?",
                (password_hash, int(change_required), user_id),
            )
            return _revoke_sessions(conn, user_id, now, keep_session)

        return self._run("set_password", txn, write=True)

    def remove_user(self, user_id: str, actor: str | None) -> Deferred[UserRemoval]:
        """
        Delete the user with their sessions, credentials, grants and rules,
        in one transaction.  Refuses C{cannot_remove_self} (C{actor} is the
        user) and C{last_superadmin}; C{user_not_found}.
        """

        def txn(conn: sqlite3.Connection) -> UserRemoval:
            user = _fetch_user(conn, user_id)
            if actor == user_id:
                raise PortunusError(
                    "cannot_remove_self", "you cannot remove yourself", user_id=user_id
                )
            human = user.role == "superadmin" and user.has_password and not user.disabled
            if human and not user_id.startswith("_") and _human_superadmins(conn) <= 1:
                raise PortunusError(
                    "last_superadmin",
                    f"{user_id!r} is the last superadmin who can log in",
                    user_id=user_id,
                )
            grants = [
                r[0]
                for r in conn.execute(
                    "SELECT grant_id FROM grants WHERE user_id = ? ORDER BY grant_id", (user_id,)
                )
            ]
            credentials = [
                r[0]
                for r in conn.execute(
                    "SELECT credential_id FROM credentials WHERE user_id = ? "
                    "ORDER BY credential_id",
                    (user_id,),
                )
            ]
            rules = delete_rules_where(conn, "owner_user_id", user_id)
            conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            return UserRemoval(user, tuple(grants), tuple(credentials), tuple(rules))

        return self._run("remove_user", txn, write=True)

    # -- bearer credentials ----------------------------------------------

    def add_credential(
        self, user_id: str, token_hash: str, label: str, now: float
    ) -> Deferred[str]:
        """Store a bearer credential for the user; returns its id."""
        credential_id = new_ulid(now, self._randbytes)

        def txn(conn: sqlite3.Connection) -> str:
            _fetch_user(conn, user_id)
            conn.execute(
                "INSERT INTO credentials (credential_id, user_id, token_hash, label, issued_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (credential_id, user_id, token_hash, label, now),
            )
            return credential_id

        return self._run("add_credential", txn, write=True)

    def user_for_credential(self, token_hash: str, now: float) -> Deferred[UserRecord | None]:
        """The user holding this live credential (noting its use), else C{None}."""

        def txn(conn: sqlite3.Connection) -> UserRecord | None:
            row = conn.execute(
                "SELECT credential_id, user_id FROM credentials "
                "WHERE token_hash = ? AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE credentials SET last_used_at = ? WHERE credential_id = ?", (now, row[0])
            )
            return _fetch_user(conn, row[1])

        return self._run("user_for_credential", txn, write=True)

    # -- console sessions -------------------------------------------------

    def create_session(
        self,
        session_hash: str,
        user_id: str,
        now: float,
        absolute_expires_at: float,
        remote_addr: str | None,
        user_agent: str | None,
    ) -> Deferred[None]:
        def txn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO web_sessions (session_hash, user_id, created_at, last_seen_at, "
                "absolute_expires_at, remote_addr, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_hash, user_id, now, now, absolute_expires_at, remote_addr, user_agent),
            )
            # Expired and revoked sessions are kept a day for forensics, then dropped.
            conn.execute(
                "DELETE FROM web_sessions WHERE absolute_expires_at < ? "
                "OR (revoked_at IS NOT NULL AND revoked_at < ?)",
                (now - 86400, now - 86400),
            )

        return self._run("create_session", txn, write=True)

    def session_user(
        self, session_hash: str, now: float, idle_timeout: float, touch_after: float
    ) -> Deferred[UserRecord | None]:
        """
        The user of a live session, or C{None} when the session is unknown,
        revoked, idle for C{idle_timeout} or past its absolute expiry.  The
        idle timer restarts when more than C{touch_after} seconds passed
        since it last did (so most requests only read).
        """

        def txn(conn: sqlite3.Connection) -> UserRecord | None:
            row = conn.execute(
                "SELECT user_id, last_seen_at, absolute_expires_at, revoked_at "
                "FROM web_sessions WHERE session_hash = ?",
                (session_hash,),
            ).fetchone()
            if row is None:
                return None
            user_id, last_seen, absolute, revoked = row
            if revoked is not None or now >= absolute or now - last_seen >= idle_timeout:
                return None
            if now - last_seen > touch_after:
                conn.execute(
                    "UPDATE web_sessions SET last_seen_at = ? WHERE session_hash = ?",
                    (now, session_hash),
                )
            return _fetch_user(conn, user_id)

        return self._run("session_user", txn, write=True)

    def revoke_session(self, session_hash: str, now: float) -> Deferred[None]:
        def txn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE web_sessions SET revoked_at = ? "
                "WHERE session_hash = ? AND revoked_at IS NULL",
                (now, session_hash),
            )

        return self._run("revoke_session", txn, write=True)

    # -- onboarding -------------------------------------------------------

    def set_setup_token(self, token_hash: str, now: float, expires_at: float) -> Deferred[None]:
        """Replace the onboarding setup token (there is at most one)."""

        def txn(conn: sqlite3.Connection) -> None:
            if _human_superadmins(conn) > 0:
                raise PortunusError(
                    "already_bootstrapped",
                    "a superadmin exists already, so onboarding is closed",
                )
            conn.execute(
                "INSERT INTO onboarding_setup (id, token_hash, issued_at, expires_at) "
                "VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "token_hash = excluded.token_hash, issued_at = excluded.issued_at, "
                "expires_at = excluded.expires_at",
                (token_hash, now, expires_at),
            )

        return self._run("set_setup_token", txn, write=True)

    def setup_token(self) -> Deferred[tuple[str, float] | None]:
        """The setup token's hash and expiry, C{None} when there is none."""

        def txn(conn: sqlite3.Connection) -> tuple[str, float] | None:
            row = conn.execute(
                "SELECT token_hash, expires_at FROM onboarding_setup WHERE id = 1"
            ).fetchone()
            return None if row is None else (str(row[0]), float(row[1]))

        return self._run("setup_token", txn, write=False)

    # -- grants -----------------------------------------------------------

    def create_grant(
        self,
        user_id: str,
        client_id: str,
        start: int,
        end: int,
        protocols: Sequence[str],
        note: str,
        now: float,
        allow_local_targets: bool = False,
    ) -> Deferred[GrantRecord]:
        """
        A grant for the user on C{client_id} (or C{*}), which the caller has
        resolved to an existing client; C{user_not_found}.
        """
        grant_id = new_ulid(now, self._randbytes)
        bits = 0
        for protocol in protocols:
            bits |= PROTOCOL_BITS[protocol]
        local = int(allow_local_targets)

        def txn(conn: sqlite3.Connection) -> GrantRecord:
            _fetch_user(conn, user_id)
            conn.execute(
                "INSERT INTO grants (grant_id, user_id, client_id, listen_port_start, "
                "listen_port_end, protocols, note, created_at, allow_local_targets) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (grant_id, user_id, client_id, start, end, bits, note, now, local),
            )
            return _grant(
                conn.execute(f"{_GRANT_SELECT} WHERE g.grant_id = ?", (grant_id,)).fetchone()
            )

        return self._run("create_grant", txn, write=True)

    def list_grants(self, user_id: str | None = None) -> Deferred[list[GrantRecord]]:
        """Every grant, or one user's, oldest first."""

        def txn(conn: sqlite3.Connection) -> list[GrantRecord]:
            if user_id is None:
                rows = conn.execute(f"{_GRANT_SELECT} ORDER BY g.grant_id").fetchall()
            else:
                rows = conn.execute(
                    f"{_GRANT_SELECT} WHERE g.user_id = ? ORDER BY g.grant_id", (user_id,)
                ).fetchall()
            return [_grant(row) for row in rows]

        return self._run("list_grants", txn, write=False)

    def revoke_grant(self, grant_id: str) -> Deferred[tuple[GrantRecord, list[RuleRecord]]]:
        """Delete the grant and the rules pushed under it; C{grant_not_found}."""

        def txn(conn: sqlite3.Connection) -> tuple[GrantRecord, list[RuleRecord]]:
            row = conn.execute(f"{_GRANT_SELECT} WHERE g.grant_id = ?", (grant_id,)).fetchone()
            if row is None:
                raise PortunusError(
                    "grant_not_found", f"no grant has the id {grant_id!r}", grant_id=grant_id
                )
            rules = delete_rules_where(conn, "grant_id", grant_id)
            conn.execute("DELETE FROM grants WHERE grant_id = ?", (grant_id,))
            return _grant(row), rules

        return self._run("revoke_grant", txn, write=True)
