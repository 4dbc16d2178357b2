"""
The store's accounts half (L{AccountStore}) directly: users, bearer
credentials, console sessions, grants, the onboarding setup token, the
cascades, and the v1 -> v2 migration that introduced them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.rulejson import rule_to_dict
from portunus.server.store import (
    DB_NAME,
    SCHEMA_VERSION,
    AccountStore,
    ClientRecord,
    Store,
    UserRecord,
    open_store,
    run_synchronously,
)
from portunus.server.store.migrations import BOOTSTRAP, MIGRATIONS

T = TypeVar("T")

NOW = 1_700_000_000.0
IDLE = 8 * 3600.0
TOUCH = 60.0
DAY = 86400.0


def make_rule(start: int, end: int | None = None, protocol: Protocol = Protocol.TCP) -> Rule:
    end = start if end is None else end
    return Rule(
        name=f"r{start}",
        protocol=protocol,
        listen=PortRange(start, end),
        targets=[Target("10.0.0.1", PortRange(start, end))],
    )


class AccountStoreTestCase(SynchronousTestCase):
    """A fresh store in a temporary data dir, transactions run inline."""

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = self.open()
        self.accounts: AccountStore = self.store.accounts

    def open(self) -> Store:
        store = open_store(self.data_dir, self.clock, runner=run_synchronously)
        self.addCleanup(lambda: self.successResultOf(store.close()))
        return store

    def ok(self, d: Deferred[T]) -> T:
        return self.successResultOf(d)

    def refused(self, d: Deferred[Any], code: str) -> PortunusError:
        error = self.failureResultOf(d, PortunusError).value
        self.assertEqual(error.code, code)
        return error

    def raw(self) -> sqlite3.Connection:
        conn = sqlite3.connect(os.path.join(self.data_dir, DB_NAME))
        self.addCleanup(conn.close)
        return conn

    def user(
        self,
        user_id: str,
        role: str = "user",
        password_hash: str | None = "$argon2id$fake",
        **kw: Any,
    ) -> UserRecord:
        return self.ok(
            self.accounts.create_user(user_id, role, user_id.title(), password_hash, NOW, **kw)
        )

    def client(self, name: str = "edge-01") -> ClientRecord:
        return self.ok(self.store.create_client(name, None, NOW))

    def grant(
        self,
        user_id: str,
        client_id: str,
        start: int = 8000,
        end: int = 8099,
        protocols: tuple[str, ...] = ("tcp",),
    ) -> str:
        grant = self.ok(
            self.accounts.create_grant(user_id, client_id, start, end, protocols, "", NOW)
        )
        return grant.grant_id

    def rule(
        self,
        client_id: str,
        port: int,
        owner: str | None = None,
        grant_id: str | None = None,
    ) -> int:
        record = self.ok(
            self.store.insert_rule(
                client_id, make_rule(port), NOW, owner_user_id=owner, grant_id=grant_id
            )
        )
        return record.rule_id

    def session(
        self, session_hash: str, user_id: str, at: float = NOW, lifetime: float = 7 * DAY
    ) -> None:
        self.ok(
            self.accounts.create_session(session_hash, user_id, at, at + lifetime, "10.0.0.9", "ua")
        )

    def session_user(self, session_hash: str, at: float) -> UserRecord | None:
        return self.ok(self.accounts.session_user(session_hash, at, IDLE, TOUCH))

    def last_seen(self, session_hash: str) -> float:
        (value,) = (
            self.raw()
            .execute(
                "SELECT last_seen_at FROM web_sessions WHERE session_hash = ?", (session_hash,)
            )
            .fetchone()
        )
        return float(value)


class UserTests(AccountStoreTestCase):
    def test_create_and_get(self) -> None:
        """A created user reads back with every field; hashes never leave the store."""
        created = self.user("bob", password_change_required=True)
        self.assertEqual(
            created,
            UserRecord(
                user_id="bob",
                role="user",
                display_name="Bob",
                disabled=False,
                created_at=NOW,
                password_change_required=True,
                has_password=True,
                grant_count=0,
            ),
        )
        self.assertEqual(self.ok(self.accounts.get_user("bob")), created)
        self.assertNotIn("argon2", repr(created))

    def test_user_already_exists(self) -> None:
        """A second user with the same id is user_already_exists; the first is untouched."""
        self.user("bob")
        self.refused(
            self.accounts.create_user("bob", "superadmin", "Other", None, NOW + 1),
            "user_already_exists",
        )
        self.assertEqual(self.ok(self.accounts.get_user("bob")).role, "user")

    def test_get_unknown(self) -> None:
        """An unknown user is user_not_found."""
        self.refused(self.accounts.get_user("nobody"), "user_not_found")

    def test_list_with_grant_counts(self) -> None:
        """Users list by id with how many grants each holds; get_user counts too."""
        client = self.client()
        self.user("carol")
        self.user("bob")
        self.grant("bob", client.client_id)
        self.grant("bob", "*")
        users = self.ok(self.accounts.list_users())
        self.assertEqual([(u.user_id, u.grant_count) for u in users], [("bob", 2), ("carol", 0)])
        self.assertEqual(self.ok(self.accounts.get_user("bob")).grant_count, 2)

    def test_password_hash(self) -> None:
        """The one read of a hash: None for unknown, disabled and password-less users."""
        self.user("bob", password_hash="$argon2id$bob")
        self.user("ops", role="superadmin", password_hash=None)
        self.user("eve", password_hash="$argon2id$eve")
        conn = self.raw()
        conn.execute("UPDATE users SET disabled = 1 WHERE user_id = 'eve'")
        conn.commit()
        self.assertEqual(self.ok(self.accounts.password_hash("bob")), "$argon2id$bob")
        self.assertIsNone(self.ok(self.accounts.password_hash("ops")))
        self.assertIsNone(self.ok(self.accounts.password_hash("eve")))
        self.assertIsNone(self.ok(self.accounts.password_hash("nobody")))

    def test_reserved_user_is_idempotent(self) -> None:
        """ensure_reserved_user creates the machine superadmin once, without a password."""
        self.ok(self.accounts.ensure_reserved_user("_legacy", "operator token", NOW))
        self.ok(self.accounts.ensure_reserved_user("_legacy", "renamed", NOW + 5))
        user = self.ok(self.accounts.get_user("_legacy"))
        self.assertEqual(
            (user.role, user.display_name, user.has_password, user.created_at),
            ("superadmin", "operator token", False, NOW),
        )


class HumanSuperadminTests(AccountStoreTestCase):
    def exists(self) -> bool:
        return self.ok(self.accounts.human_superadmin_exists())

    def test_empty_store(self) -> None:
        """A new store has no superadmin who can log in."""
        self.assertFalse(self.exists())

    def test_ignores_machine_and_powerless_superadmins(self) -> None:
        """Reserved _ users, password-less and disabled superadmins and plain users do not count."""
        self.ok(self.accounts.ensure_reserved_user("_legacy", "operator token", NOW))
        self.user("_superadmin", role="superadmin", password_hash="$argon2id$x")
        self.user("ops", role="superadmin", password_hash=None)
        self.user("gone", role="superadmin")
        self.user("bob", role="user")
        conn = self.raw()
        conn.execute("UPDATE users SET disabled = 1 WHERE user_id = 'gone'")
        conn.commit()
        self.assertFalse(self.exists())
        self.user("alice", role="superadmin")
        self.assertTrue(self.exists())

    def test_underscore_is_not_a_wildcard(self) -> None:
        """Only a leading underscore marks a reserved id (LIKE escapes the _ wildcard)."""
        self.user("a_dmin", role="superadmin")
        self.assertTrue(self.exists())

    def test_onboarding_insert_is_conditional(self) -> None:
        """only_if_no_superadmin refuses once a human superadmin exists: already_bootstrapped."""
        self.user("alice", role="superadmin")
        self.refused(
            self.accounts.create_user(
                "mallory", "superadmin", "M", "$argon2id$m", NOW, only_if_no_superadmin=True
            ),
            "already_bootstrapped",
        )
        self.refused(self.accounts.get_user("mallory"), "user_not_found")

    def test_onboarding_insert_clears_the_setup_token(self) -> None:
        """Onboarding consumes the setup token, and a new one cannot be set afterwards."""
        self.ok(self.accounts.set_setup_token("hash-1", NOW, NOW + 1800))
        self.assertEqual(self.ok(self.accounts.setup_token()), ("hash-1", NOW + 1800))
        self.ok(
            self.accounts.create_user(
                "alice", "superadmin", "Alice", "$argon2id$a", NOW, only_if_no_superadmin=True
            )
        )
        self.assertIsNone(self.ok(self.accounts.setup_token()))
        self.refused(
            self.accounts.set_setup_token("hash-2", NOW, NOW + 1800), "already_bootstrapped"
        )

    def test_setup_token_is_replaced(self) -> None:
        """There is one setup token; setting another replaces it."""
        self.assertIsNone(self.ok(self.accounts.setup_token()))
        self.ok(self.accounts.set_setup_token("hash-1", NOW, NOW + 1800))
        self.ok(self.accounts.set_setup_token("hash-2", NOW + 60, NOW + 1860))
        self.assertEqual(self.ok(self.accounts.setup_token()), ("hash-2", NOW + 1860))


class CredentialTests(AccountStoreTestCase):
    def test_credential_finds_its_user(self) -> None:
        """A stored credential hash finds its user and notes when it was used."""
        self.ok(self.accounts.ensure_reserved_user("_superadmin", "ops", NOW))
        credential_id = self.ok(
            self.accounts.add_credential("_superadmin", "token-hash", "bootstrap", NOW)
        )
        self.assertEqual(len(credential_id), 26)
        user = self.ok(self.accounts.user_for_credential("token-hash", NOW + 10))
        assert user is not None
        self.assertEqual(user.user_id, "_superadmin")
        (used,) = (
            self.raw()
            .execute(
                "SELECT last_used_at FROM credentials WHERE credential_id = ?", (credential_id,)
            )
            .fetchone()
        )
        self.assertEqual(used, NOW + 10)
        self.assertIsNone(self.ok(self.accounts.user_for_credential("other", NOW)))

    def test_revoked_credential(self) -> None:
        """A revoked credential finds nobody."""
        self.user("bob")
        credential_id = self.ok(self.accounts.add_credential("bob", "h", "ci", NOW))
        conn = self.raw()
        conn.execute(
            "UPDATE credentials SET revoked_at = 1 WHERE credential_id = ?", (credential_id,)
        )
        conn.commit()
        self.assertIsNone(self.ok(self.accounts.user_for_credential("h", NOW)))

    def test_credential_for_unknown_user(self) -> None:
        """A credential needs an existing user: user_not_found."""
        self.refused(self.accounts.add_credential("nobody", "h", "x", NOW), "user_not_found")


class SessionTests(AccountStoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.user("bob")

    def test_live_session(self) -> None:
        """A fresh session finds its user; an unknown hash finds nobody."""
        self.session("s1", "bob")
        user = self.session_user("s1", NOW)
        assert user is not None
        self.assertEqual(user.user_id, "bob")
        self.assertIsNone(self.session_user("nope", NOW))

    def test_idle_timeout(self) -> None:
        """A session idle for the timeout has ended; a moment before it has not."""
        self.session("s1", "bob")
        self.session("s2", "bob")
        self.assertIsNotNone(self.session_user("s1", NOW + IDLE - 1))
        self.assertIsNone(self.session_user("s2", NOW + IDLE))

    def test_absolute_expiry(self) -> None:
        """A session ends at its absolute expiry however recently it was used."""
        self.session("s1", "bob", lifetime=IDLE + 100)
        self.assertIsNotNone(self.session_user("s1", NOW + IDLE - 1))
        self.assertIsNotNone(self.session_user("s1", NOW + IDLE + 99))
        self.assertIsNone(self.session_user("s1", NOW + IDLE + 100))

    def test_revoked(self) -> None:
        """A revoked session has ended; revoking again changes nothing."""
        self.session("s1", "bob")
        self.ok(self.accounts.revoke_session("s1", NOW + 5))
        self.ok(self.accounts.revoke_session("s1", NOW + 9))
        self.assertIsNone(self.session_user("s1", NOW + 10))
        (revoked,) = (
            self.raw()
            .execute("SELECT revoked_at FROM web_sessions WHERE session_hash = 's1'")
            .fetchone()
        )
        self.assertEqual(revoked, NOW + 5)

    def test_touch_after(self) -> None:
        """The idle timer is written only when more than touch_after has passed."""
        self.session("s1", "bob")
        self.session_user("s1", NOW + TOUCH)
        self.assertEqual(self.last_seen("s1"), NOW)
        self.session_user("s1", NOW + TOUCH + 1)
        self.assertEqual(self.last_seen("s1"), NOW + TOUCH + 1)

    def test_touch_restarts_idle(self) -> None:
        """A touched session lives for the idle timeout from the touch."""
        self.session("s1", "bob")
        self.assertIsNotNone(self.session_user("s1", NOW + IDLE - 10))
        self.assertIsNotNone(self.session_user("s1", NOW + 2 * IDLE - 20))
        self.assertIsNone(self.session_user("s1", NOW + 3 * IDLE))

    def test_session_rows(self) -> None:
        """A session keeps its address and user agent for the record."""
        self.session("s1", "bob")
        row = (
            self.raw()
            .execute(
                "SELECT user_id, created_at, absolute_expires_at, remote_addr, user_agent "
                "FROM web_sessions"
            )
            .fetchone()
        )
        self.assertEqual(row, ("bob", NOW, NOW + 7 * DAY, "10.0.0.9", "ua"))

    def test_old_sessions_are_purged(self) -> None:
        """A new session drops those expired or revoked more than a day ago."""
        self.session("old", "bob", lifetime=3600)
        self.session("revoked", "bob")
        self.ok(self.accounts.revoke_session("revoked", NOW + 10))
        self.session("recent", "bob", at=NOW + 3600, lifetime=3600)
        self.session("new", "bob", at=NOW + 3600 + DAY + 11)
        hashes = {row[0] for row in self.raw().execute("SELECT session_hash FROM web_sessions")}
        self.assertEqual(hashes, {"recent", "new"})

    def test_sessions_of_a_disabled_user(self) -> None:
        """session_user reports the user's disabled flag for the caller to refuse."""
        self.session("s1", "bob")
        conn = self.raw()
        conn.execute("UPDATE users SET disabled = 1 WHERE user_id = 'bob'")
        conn.commit()
        user = self.session_user("s1", NOW)
        assert user is not None
        self.assertTrue(user.disabled)


class SetPasswordTests(AccountStoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.user("bob")
        self.user("carol")
        for name in ("b1", "b2", "b3"):
            self.session(name, "bob")
        self.session("c1", "carol")

    def test_revokes_all_sessions(self) -> None:
        """A new password ends every session of the user (only theirs) and says how many."""
        revoked = self.ok(
            self.accounts.set_password("bob", "$argon2id$new", NOW + 1, change_required=True)
        )
        self.assertEqual(revoked, 3)
        for name in ("b1", "b2", "b3"):
            self.assertIsNone(self.session_user(name, NOW + 2))
        self.assertIsNotNone(self.session_user("c1", NOW + 2))
        self.assertEqual(self.ok(self.accounts.password_hash("bob")), "$argon2id$new")
        self.assertTrue(self.ok(self.accounts.get_user("bob")).password_change_required)

    def test_keeps_one_session(self) -> None:
        """keep_session survives the change; the flag is cleared."""
        self.ok(self.accounts.set_password("bob", "$a", NOW, change_required=True))
        self.session("b4", "bob")
        self.session("b5", "bob")
        revoked = self.ok(
            self.accounts.set_password(
                "bob", "$argon2id$new", NOW + 1, change_required=False, keep_session="b4"
            )
        )
        self.assertEqual(revoked, 1)
        self.assertIsNotNone(self.session_user("b4", NOW + 2))
        self.assertIsNone(self.session_user("b5", NOW + 2))
        self.assertFalse(self.ok(self.accounts.get_user("bob")).password_change_required)

    def test_already_revoked_are_not_counted(self) -> None:
        """Sessions that had ended already are not counted again."""
        self.ok(self.accounts.revoke_session("b1", NOW))
        self.assertEqual(
            self.ok(self.accounts.set_password("bob", "$x", NOW + 1, change_required=False)), 2
        )

    def test_unknown_user(self) -> None:
        """Setting the password of a user who does not exist is user_not_found."""
        self.refused(
            self.accounts.set_password("nobody", "$x", NOW, change_required=False),
            "user_not_found",
        )


class GrantTests(AccountStoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.user("bob")
        self.edge = self.client("edge-01")

    def test_create_and_list(self) -> None:
        """A grant reads back with its client's name and protocols; lists filter by user."""
        self.user("carol")
        first = self.grant("bob", self.edge.client_id, 8000, 8099, ("tcp", "udp"))
        self.clock.advance(1)
        star = self.ok(self.accounts.create_grant("carol", "*", 1, 1, ("udp",), "lab", NOW + 1))
        grants = self.ok(self.accounts.list_grants())
        self.assertEqual([g.grant_id for g in grants], [first, star.grant_id])
        bobs = self.ok(self.accounts.list_grants("bob"))
        self.assertEqual(
            [
                (g.client_id, g.client_name, g.protocols, g.listen_port_start, g.listen_port_end)
                for g in bobs
            ],
            [(self.edge.client_id, "edge-01", ("tcp", "udp"), 8000, 8099)],
        )
        self.assertEqual(
            (star.client_id, star.client_name, star.protocols, star.note),
            ("*", "*", ("udp",), "lab"),
        )
        self.assertEqual(self.ok(self.accounts.list_grants("nobody")), [])

    def test_protocol_bits(self) -> None:
        """Protocols are stored as Portunus's bitmask: tcp 1, udp 2."""
        self.grant("bob", "*", protocols=("udp",))
        self.grant("bob", "*", protocols=("tcp", "udp"))
        bits = sorted(row[0] for row in self.raw().execute("SELECT protocols FROM grants"))
        self.assertEqual(bits, [2, 3])

    def test_client_name_follows_renames(self) -> None:
        """The grant shows the client's current name."""
        self.grant("bob", self.edge.client_id)
        self.ok(self.store.rename_client(self.edge.client_id, "edge-new"))
        [grant] = self.ok(self.accounts.list_grants("bob"))
        self.assertEqual(grant.client_name, "edge-new")

    def test_unknown_user(self) -> None:
        """A grant for a user who does not exist is user_not_found."""
        self.refused(
            self.accounts.create_grant("nobody", "*", 1, 2, ("tcp",), "", NOW), "user_not_found"
        )

    def test_covers(self) -> None:
        """A grant covers a push only of its client (or any, for *), protocol and whole range."""
        grant_id = self.grant("bob", self.edge.client_id, 8000, 8099)
        [grant] = self.ok(self.accounts.list_grants("bob"))
        self.assertEqual(grant.grant_id, grant_id)
        self.assertTrue(grant.covers(self.edge.client_id, "tcp", 8000, 8099))
        self.assertFalse(grant.covers(self.edge.client_id, "tcp", 7999, 8000))
        self.assertFalse(grant.covers(self.edge.client_id, "tcp", 8099, 8100))
        self.assertFalse(grant.covers(self.edge.client_id, "udp", 8000, 8000))
        self.assertFalse(grant.covers("other", "tcp", 8000, 8000))

    def test_revoke_returns_its_rules(self) -> None:
        """Revoking a grant deletes the rules pushed under it, and only those, and returns them."""
        g1 = self.grant("bob", self.edge.client_id, 8000, 8099)
        g2 = self.grant("bob", self.edge.client_id, 9000, 9099)
        r1 = self.rule(self.edge.client_id, 8000, "bob", g1)
        r2 = self.rule(self.edge.client_id, 9000, "bob", g2)
        r3 = self.rule(self.edge.client_id, 8001, "bob", g1)
        r4 = self.rule(self.edge.client_id, 8002, "bob")
        grant, rules = self.ok(self.accounts.revoke_grant(g1))
        self.assertEqual(grant.grant_id, g1)
        self.assertEqual([(r.rule_id, r.grant_id) for r in rules], [(r1, g1), (r3, g1)])
        self.assertEqual(rules[0].rule.listen, PortRange(8000, 8000))
        left = [r.rule_id for r in self.ok(self.store.list_rules())]
        self.assertEqual(left, [r2, r4])
        self.assertEqual([g.grant_id for g in self.ok(self.accounts.list_grants())], [g2])

    def test_revoke_unknown(self) -> None:
        """Revoking a grant that does not exist is grant_not_found."""
        self.refused(self.accounts.revoke_grant("01HNOPE"), "grant_not_found")


class InsertRuleTests(AccountStoreTestCase):
    """Store.insert_rule re-checks the owner and grant inside its transaction."""

    def setUp(self) -> None:
        super().setUp()
        self.user("bob")
        self.edge = self.client()
        self.grant_id = self.grant("bob", self.edge.client_id)

    def test_stamps_owner_and_grant(self) -> None:
        """The stored rule names who pushed it under which grant."""
        rule_id = self.rule(self.edge.client_id, 8000, "bob", self.grant_id)
        record = self.ok(self.store.get_rule(rule_id))
        self.assertEqual((record.owner_user_id, record.grant_id), ("bob", self.grant_id))
        self.assertEqual(
            [r.rule_id for r in self.ok(self.store.list_rules(owner_user_id="bob"))], [rule_id]
        )

    def test_grant_revoked_meanwhile(self) -> None:
        """A push whose grant was revoked after the check is client_not_granted; nothing stored."""
        self.ok(self.accounts.revoke_grant(self.grant_id))
        self.refused(
            self.store.insert_rule(
                self.edge.client_id,
                make_rule(8000),
                NOW,
                owner_user_id="bob",
                grant_id=self.grant_id,
            ),
            "client_not_granted",
        )
        self.assertEqual(self.ok(self.store.list_rules()), [])

    def test_owner_removed_meanwhile(self) -> None:
        """A push whose user was removed after the check is user_not_found; nothing stored."""
        self.ok(self.accounts.remove_user("bob", "alice"))
        self.refused(
            self.store.insert_rule(
                self.edge.client_id,
                make_rule(8000),
                NOW,
                owner_user_id="bob",
                grant_id=self.grant_id,
            ),
            "user_not_found",
        )
        self.assertEqual(self.ok(self.store.list_rules()), [])


class RemoveUserTests(AccountStoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.user("alice", role="superadmin")
        self.user("bob")
        self.user("carol")
        self.edge = self.client()

    def test_cascade(self) -> None:
        """Removing a user deletes their sessions, credentials, grants and rules, returning them."""
        g1 = self.grant("bob", self.edge.client_id, 8000, 8099)
        g2 = self.grant("bob", "*", 9000, 9099)
        gc = self.grant("carol", self.edge.client_id, 7000, 7099)
        c1 = self.ok(self.accounts.add_credential("bob", "bob-token", "ci", NOW))
        self.session("bs", "bob")
        self.session("cs", "carol")
        r1 = self.rule(self.edge.client_id, 8000, "bob", g1)
        r2 = self.rule(self.edge.client_id, 9000, "bob", g2)
        r3 = self.rule(self.edge.client_id, 7000, "carol", gc)
        r4 = self.rule(self.edge.client_id, 100, "alice")
        removal = self.ok(self.accounts.remove_user("bob", "alice"))
        self.assertEqual(removal.user.user_id, "bob")
        self.assertEqual(removal.grant_ids, tuple(sorted([g1, g2])))
        self.assertEqual(removal.credential_ids, (c1,))
        self.assertEqual([r.rule_id for r in removal.rules], [r1, r2])
        self.refused(self.accounts.get_user("bob"), "user_not_found")
        self.assertIsNone(self.session_user("bs", NOW))
        self.assertIsNotNone(self.session_user("cs", NOW))
        self.assertIsNone(self.ok(self.accounts.user_for_credential("bob-token", NOW)))
        self.assertEqual([g.grant_id for g in self.ok(self.accounts.list_grants())], [gc])
        self.assertEqual([r.rule_id for r in self.ok(self.store.list_rules())], [r3, r4])
        conn = self.raw()
        for table in ("web_sessions", "credentials", "grants"):
            (count,) = conn.execute(
                f"SELECT count(*) FROM {table} WHERE user_id = 'bob'"
            ).fetchone()
            self.assertEqual(count, 0, table)

    def test_cannot_remove_self(self) -> None:
        """A user cannot remove themself: cannot_remove_self."""
        self.user("dave", role="superadmin")
        self.refused(self.accounts.remove_user("alice", "alice"), "cannot_remove_self")
        self.ok(self.accounts.get_user("alice"))

    def test_last_superadmin(self) -> None:
        """The last superadmin who can log in cannot be removed, by anyone."""
        self.refused(self.accounts.remove_user("alice", "_legacy"), "last_superadmin")
        self.refused(self.accounts.remove_user("alice", None), "last_superadmin")
        self.user("dave", role="superadmin")
        self.ok(self.accounts.remove_user("alice", "dave"))
        self.refused(self.accounts.remove_user("dave", "_legacy"), "last_superadmin")

    def test_machine_superadmins_do_not_count(self) -> None:
        """Reserved and password-less superadmins are not 'other superadmins' to keep one."""
        self.ok(self.accounts.ensure_reserved_user("_legacy", "operator token", NOW))
        self.user("ops", role="superadmin", password_hash=None)
        self.refused(self.accounts.remove_user("alice", "_legacy"), "last_superadmin")
        self.ok(self.accounts.remove_user("ops", "alice"))
        self.ok(self.accounts.remove_user("_legacy", "alice"))

    def test_unknown_user(self) -> None:
        """Removing a user who does not exist is user_not_found."""
        self.refused(self.accounts.remove_user("nobody", "alice"), "user_not_found")


class MigrationTests(SynchronousTestCase):
    def migrated(self, data_dir: str) -> Any:
        """The store in C{data_dir}, opened (so migrated) now: at the current version."""
        clock = Clock()
        clock.advance(NOW)
        store = open_store(data_dir, clock, runner=run_synchronously)
        self.addCleanup(lambda: self.successResultOf(store.close()))
        self.assertEqual(store.schema_version, 3)
        return store

    def test_v1_rules_survive(self) -> None:
        """Migrating a v1 store keeps its clients and rules, with no owner or grant."""
        self.assertEqual(SCHEMA_VERSION, 3)
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        conn = sqlite3.connect(os.path.join(data_dir, DB_NAME))
        conn.executescript(BOOTSTRAP)
        conn.executescript(MIGRATIONS[0])
        conn.execute("INSERT INTO schema_migrations VALUES (1, ?)", (NOW - DAY,))
        conn.execute(
            "INSERT INTO clients (client_id, name, created_at) VALUES ('C1', 'edge-01', ?)",
            (NOW - DAY,),
        )
        for rule_id, port in ((7, 8080), (9, 9090)):
            spec_json = json.dumps(rule_to_dict(make_rule(port)))
            conn.execute(
                "INSERT INTO rules (id, client_id, protocol, listen_start, listen_end, "
                "spec_json, state_kind, created_at, updated_at) "
                "VALUES (?, 'C1', 'tcp', ?, ?, ?, 'active', ?, ?)",
                (rule_id, port, port, spec_json, NOW - DAY, NOW - DAY),
            )
        conn.commit()
        conn.close()

        store = self.migrated(data_dir)
        records = self.successResultOf(store.list_rules())
        self.assertEqual(
            [(r.rule_id, r.rule.listen.start, r.owner_user_id, r.grant_id) for r in records],
            [(7, 8080, None, None), (9, 9090, None, None)],
        )
        self.assertEqual(records[0].client_name, "edge-01")
        self.assertFalse(self.successResultOf(store.accounts.human_superadmin_exists()))
        self.assertEqual(self.successResultOf(store.accounts.list_users()), [])
        # Rules without an owner are nobody's: a user's cascade leaves them alone.
        self.successResultOf(store.accounts.create_user("bob", "user", "Bob", "$argon2id$x", NOW))
        removal = self.successResultOf(store.accounts.remove_user("bob", None))
        self.assertEqual(removal.rules, ())
        self.assertEqual(len(self.successResultOf(store.list_rules())), 2)

    def test_v2_tenant_rules_lose_local_targets(self) -> None:
        """
        Migrating a v2 store gives every grant allow_local_targets = false,
        and the rules pushed under a grant the same (their edges then
        refuse local addresses); a superadmin's rule keeps local targets.
        """
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        conn = sqlite3.connect(os.path.join(data_dir, DB_NAME))
        conn.executescript(BOOTSTRAP)
        for version, delta in enumerate(MIGRATIONS[:2], start=1):
            conn.executescript(delta)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, NOW - DAY))
        conn.execute(
            "INSERT INTO clients (client_id, name, created_at) VALUES ('C1', 'edge-01', ?)",
            (NOW - DAY,),
        )
        conn.execute(
            "INSERT INTO users (user_id, role, display_name, created_at) "
            "VALUES ('bob', 'user', 'Bob', ?)",
            (NOW - DAY,),
        )
        conn.execute(
            "INSERT INTO grants (grant_id, user_id, client_id, listen_port_start, "
            "listen_port_end, protocols, created_at) VALUES ('G1', 'bob', '*', 1, 65535, 1, ?)",
            (NOW - DAY,),
        )
        for rule_id, port, grant in ((7, 8080, "G1"), (9, 9090, None)):
            spec_json = json.dumps(rule_to_dict(make_rule(port)))
            conn.execute(
                "INSERT INTO rules (id, client_id, protocol, listen_start, listen_end, "
                "spec_json, state_kind, created_at, updated_at, owner_user_id, grant_id) "
                "VALUES (?, 'C1', 'tcp', ?, ?, ?, 'active', ?, ?, ?, ?)",
                (rule_id, port, port, spec_json, NOW - DAY, NOW - DAY, "bob", grant),
            )
        conn.commit()
        conn.close()

        store = self.migrated(data_dir)
        records = self.successResultOf(store.list_rules())
        self.assertEqual(
            [(r.rule_id, r.rule.allow_local_targets) for r in records], [(7, False), (9, True)]
        )
        [grant] = self.successResultOf(store.accounts.list_grants())
        self.assertFalse(grant.allow_local_targets)
