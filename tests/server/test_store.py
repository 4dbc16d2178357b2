"""
The server's store: schema, locking, clients, enrollment, rules, settings.

Most tests run transactions inline (L{run_synchronously}) so they are
deterministic; L{ThreadPoolStoreTests} runs the real worker thread on the
real reactor.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, RateLimit, Rule, Target
from portunus.server.store import (
    DB_NAME,
    LOCK_NAME,
    SCHEMA_VERSION,
    ClientRecord,
    RuleRecord,
    RuleState,
    Store,
    open_store,
    run_synchronously,
)

T = TypeVar("T")

TABLES = {"schema_migrations", "clients", "client_enrollments", "rules", "server_settings"}


def make_rule(start: int = 100, end: int = 110, *, protocol: Protocol = Protocol.TCP) -> Rule:
    return Rule(
        name=f"r{start}",
        protocol=protocol,
        listen=PortRange(start, end),
        targets=[Target("10.0.0.1", PortRange(start + 1000, end + 1000))],
    )


class StoreTestCase(SynchronousTestCase):
    """Opens stores on a fresh data dir with transactions run inline."""

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def open(self) -> Store:
        store = open_store(self.data_dir, self.clock, runner=run_synchronously)
        self.addCleanup(self.close, store)
        return store

    def close(self, store: Store) -> None:
        self.successResultOf(store.close())

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

    def enrolled_client(
        self, store: Store, name: str = "edge-01", token_hash: str = "token-1"
    ) -> ClientRecord:
        client = self.ok(store.create_client(name, None, self.clock.seconds()))
        now = self.clock.seconds()
        self.ok(
            store.create_enrollment(client.client_id, f"code-{name}", now, now + 600, None, None)
        )
        return self.ok(store.redeem_enrollment(f"code-{name}", now, token_hash)).client


class OpenTests(StoreTestCase):
    def test_migrates_an_empty_data_dir(self) -> None:
        """A new data dir gets every table, STRICT, and the version recorded."""
        store = self.open()
        self.assertEqual(store.schema_version, SCHEMA_VERSION)
        conn = self.raw()
        strict = dict(conn.execute("SELECT name, strict FROM pragma_table_list").fetchall())
        for table in TABLES:
            self.assertEqual(strict.get(table), 1, table)
        self.assertEqual(
            conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall(),
            [(v, 1_700_000_000.0) for v in range(1, SCHEMA_VERSION + 1)],
        )

    def test_connection_pragmas(self) -> None:
        """The store's connection runs with the PRAGMAs Portunus uses."""
        store = self.open()
        conn = store._conn
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone(), ("wal",))
        self.assertEqual(conn.execute("PRAGMA synchronous").fetchone(), (1,))
        self.assertEqual(conn.execute("PRAGMA foreign_keys").fetchone(), (1,))
        self.assertEqual(conn.execute("PRAGMA busy_timeout").fetchone(), (5000,))
        self.assertEqual(conn.execute("PRAGMA temp_store").fetchone(), (2,))

    def test_reopen_is_a_no_op(self) -> None:
        """Opening a current database applies nothing and keeps its rows."""
        store = self.open()
        self.ok(store.set_setting("k", "v"))
        self.close(store)
        self.clock.advance(100)
        store = self.open()
        self.assertEqual(self.ok(store.get_setting("k")), "v")
        self.assertEqual(
            self.raw()
            .execute("SELECT count(*), max(applied_at) FROM schema_migrations")
            .fetchone(),
            (SCHEMA_VERSION, 1_700_000_000.0),
        )

    def test_newer_schema_is_refused(self) -> None:
        """
        A database from newer code is refused with exit 78, left untouched,
        and the lock is released for the next attempt.
        """
        self.close(open_store(self.data_dir, self.clock, runner=run_synchronously))
        conn = self.raw()
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (SCHEMA_VERSION + 1,))
        conn.commit()
        with self.assertRaises(PortunusError) as caught:
            open_store(self.data_dir, self.clock, runner=run_synchronously)
        error = caught.exception
        self.assertEqual(error.code, "startup.schema_version_too_new")
        self.assertEqual(error.error.exit_code, 78)
        self.assertIn("upgrade the server", error.message)
        self.assertIn("restore a backup", error.message)
        self.assertEqual(error.fields["found"], SCHEMA_VERSION + 1)
        self.assertEqual(
            conn.execute("SELECT max(version) FROM schema_migrations").fetchone(),
            (SCHEMA_VERSION + 1,),
        )
        # The refusal released the lock: fixing the file lets the server start.
        conn.execute("DELETE FROM schema_migrations WHERE version > ?", (SCHEMA_VERSION,))
        conn.commit()
        self.open()

    def test_second_opener_refused_until_close(self) -> None:
        """While a store holds the data dir another opener gets store_in_use."""
        first = open_store(self.data_dir, self.clock, runner=run_synchronously)
        with self.assertRaises(PortunusError) as caught:
            open_store(self.data_dir, self.clock, runner=run_synchronously)
        error = caught.exception
        self.assertEqual(error.code, "startup.store_in_use")
        self.assertEqual(error.error.exit_code, 75)
        lock_file = os.path.join(self.data_dir, LOCK_NAME)
        self.assertIn(lock_file, error.message)
        self.assertIn("another Portunus server", error.message)
        self.assertIn(self.data_dir, error.message)
        self.assertEqual(error.fields["lock_file"], lock_file)
        self.close(first)
        self.open()

    def test_not_a_database(self) -> None:
        """A state.db that is not SQLite is refused, not overwritten."""
        os.makedirs(self.data_dir)
        path = os.path.join(self.data_dir, DB_NAME)
        with open(path, "wb") as f:
            f.write(b"x" * 4096)
        with self.assertRaises(PortunusError) as caught:
            open_store(self.data_dir, self.clock, runner=run_synchronously)
        self.assertEqual(caught.exception.code, "startup.store_open_failed")
        self.assertIn(path, caught.exception.message)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"x" * 4096)

    def test_unusable_data_dir(self) -> None:
        """A data dir that cannot be created is a clean refusal, not a traceback."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        with self.assertRaises(PortunusError) as caught:
            open_store(os.path.join(blocker, "data"), self.clock, runner=run_synchronously)
        self.assertEqual(caught.exception.code, "startup.store_open_failed")

    def test_database_is_private(self) -> None:
        """state.db holds token hashes: only its owner may read it."""
        self.open()
        mode = os.stat(os.path.join(self.data_dir, DB_NAME)).st_mode & 0o777
        self.assertEqual(mode, 0o600)

    def test_transactions_after_close_fail(self) -> None:
        """A closed store refuses work instead of touching a closed connection."""
        store = open_store(self.data_dir, self.clock, runner=run_synchronously)
        self.close(store)
        self.failureResultOf(store.list_clients(), RuntimeError)
        self.ok(store.close())

    def test_rules_survive_reopen_with_state(self) -> None:
        """Rules, their specs and states come back after close and reopen."""
        store = self.open()
        client = self.ok(store.create_client("edge", "10.1.1.1", 5.0))
        rich = Rule(
            name="rich",
            protocol=Protocol.UDP,
            listen=PortRange(5000, 5001),
            targets=[
                Target("a.example", PortRange(6000, 6001), priority=1),
                Target("10.0.0.9", PortRange(7000, 7001)),
            ],
            udp_max_flows=10,
            rate_limit=RateLimit(bandwidth_in_bps=1000),
        )
        first = self.ok(store.insert_rule(client.client_id, rich, 10.0))
        second = self.ok(store.insert_rule(client.client_id, make_rule(), 11.0))
        self.ok(store.set_rule_state(first.rule_id, RuleState.ACTIVE, None, 12.0))
        self.ok(store.set_rule_state(second.rule_id, "failed", "port_in_use:100", 13.0))
        before = self.ok(store.list_rules())
        self.close(store)
        store = self.open()
        after = self.ok(store.list_rules())
        self.assertEqual(after, before)
        self.assertEqual([r.state for r in after], [RuleState.ACTIVE, RuleState.FAILED])
        self.assertEqual(after[0].rule, attrs.evolve(rich, id=first.rule_id))
        self.assertEqual(after[1].state_reason, "port_in_use:100")


class ClientTests(StoreTestCase):
    def test_create_and_get(self) -> None:
        """A new client gets a ULID, the given fields, and no token."""
        store = self.open()
        client = self.ok(store.create_client("edge-01", "192.0.2.7", 1_700_000_000.5))
        self.assertEqual(len(client.client_id), 26)
        self.assertTrue(client.client_id.isalnum() and client.client_id.isupper())
        self.assertEqual(
            (client.name, client.address, client.created_at),
            ("edge-01", "192.0.2.7", 1_700_000_000.5),
        )
        self.assertFalse(client.revoked)
        self.assertFalse(client.enrolled)
        self.assertEqual(self.ok(store.get_client(client.client_id)), client)

    def test_ids_sort_by_creation_time(self) -> None:
        """ULIDs of later clients sort after earlier ones."""
        store = self.open()
        ids = [self.ok(store.create_client("c", None, t)).client_id for t in (1.0, 2.0, 3.0)]
        self.assertEqual(sorted(ids), ids)
        self.assertEqual(len(set(ids)), 3)

    def test_unknown_client(self) -> None:
        """Every by-id client call refuses an unknown id with client_not_found."""
        store = self.open()
        error = self.refused(store.get_client("nope"), "client_not_found")
        self.assertEqual((error.error.http_status, error.error.exit_code), (404, 8))
        self.assertEqual(error.fields["client_id"], "nope")
        self.refused(store.rename_client("nope", "x"), "client_not_found")
        self.refused(store.revoke_client("nope", 1.0), "client_not_found")
        self.refused(store.delete_client("nope"), "client_not_found")
        self.refused(store.create_enrollment("nope", "c", 1.0, 2.0, None, None), "client_not_found")
        self.refused(store.insert_rule("nope", make_rule(), 1.0), "client_not_found")

    def test_list_orders_by_name_then_id(self) -> None:
        """Clients list by name, duplicates by id; revoked ones included."""
        store = self.open()
        b = self.ok(store.create_client("b", None, 1.0))
        a2 = self.ok(store.create_client("a", None, 3.0))
        a1 = self.ok(store.create_client("a", None, 2.0))
        self.ok(store.revoke_client(b.client_id, 4.0))
        listed = self.ok(store.list_clients())
        self.assertEqual([c.client_id for c in listed], [a1.client_id, a2.client_id, b.client_id])

    def test_rename(self) -> None:
        """Renaming changes the name only, and rules show the new name."""
        store = self.open()
        client = self.ok(store.create_client("old", "h", 1.0))
        rule = self.ok(store.insert_rule(client.client_id, make_rule(), 2.0))
        renamed = self.ok(store.rename_client(client.client_id, "new"))
        self.assertEqual(renamed, ClientRecord(client.client_id, "new", "h", 1.0))
        self.assertEqual(self.ok(store.get_rule(rule.rule_id)).client_name, "new")

    def test_revoke_is_idempotent(self) -> None:
        """Revoking twice keeps the first revoked_at."""
        store = self.open()
        client = self.ok(store.create_client("c", None, 1.0))
        self.assertEqual(self.ok(store.revoke_client(client.client_id, 5.0)).revoked_at, 5.0)
        again = self.ok(store.revoke_client(client.client_id, 9.0))
        self.assertEqual(again.revoked_at, 5.0)
        self.assertTrue(again.revoked)

    def test_delete_refuses_unrevoked_client(self) -> None:
        """Only a revoked client can be deleted; the refusal changes nothing."""
        store = self.open()
        client = self.ok(store.create_client("c", None, 1.0))
        self.ok(store.insert_rule(client.client_id, make_rule(), 2.0))
        error = self.refused(store.delete_client(client.client_id), "client_not_revoked")
        self.assertEqual((error.error.http_status, error.error.exit_code), (409, 5))
        self.ok(store.get_client(client.client_id))
        self.assertEqual(len(self.ok(store.list_rules(client.client_id))), 1)

    def test_delete_cascades_rules_and_codes(self) -> None:
        """Deleting a revoked client removes its rules and codes, not others'."""
        store = self.open()
        gone = self.ok(store.create_client("gone", None, 1.0))
        kept = self.ok(store.create_client("kept", None, 1.0))
        self.ok(store.create_enrollment(gone.client_id, "code", 1.0, 100.0, None, None))
        self.ok(store.insert_rule(gone.client_id, make_rule(100, 110), 2.0))
        other = self.ok(store.insert_rule(kept.client_id, make_rule(100, 110), 2.0))
        self.ok(store.revoke_client(gone.client_id, 3.0))
        self.assertIsNone(self.ok(store.delete_client(gone.client_id)))
        self.refused(store.get_client(gone.client_id), "client_not_found")
        self.assertEqual(self.ok(store.list_rules()), [other])
        conn = self.raw()
        self.assertEqual(
            conn.execute(
                "SELECT count(*) FROM rules WHERE client_id = ?", (gone.client_id,)
            ).fetchone(),
            (0,),
        )
        self.assertEqual(conn.execute("SELECT count(*) FROM client_enrollments").fetchone(), (0,))

    def test_client_for_token_hash(self) -> None:
        """A token hash finds its client; unknown and revoked ones find nothing."""
        store = self.open()
        client = self.enrolled_client(store, token_hash="h1")
        self.assertEqual(self.ok(store.client_for_token_hash("h1")), client)
        self.assertIsNone(self.ok(store.client_for_token_hash("h2")))
        self.ok(store.revoke_client(client.client_id, 10.0))
        self.assertIsNone(self.ok(store.client_for_token_hash("h1")))
        found = self.ok(store.client_for_token_hash("h1", include_revoked=True))
        assert found is not None
        self.assertEqual(found.revoked_at, 10.0)


class EnrollmentTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store = self.open()
        self.client = self.ok(self.store.create_client("edge", "192.0.2.1", 100.0))

    def enroll(self, code: str, issued_at: float = 100.0, ttl: float = 600.0) -> Any:
        return self.ok(
            self.store.create_enrollment(
                self.client.client_id, code, issued_at, issued_at + ttl, "srv.example:7443", "a"
            )
        )

    def test_valid_code(self) -> None:
        """A fresh code is consumed and gives the client its token."""
        enrollment = self.enroll("c1")
        self.assertEqual(
            (enrollment.client_name, enrollment.client_address, enrollment.consumed_at),
            ("edge", "a", None),
        )
        redemption = self.ok(self.store.redeem_enrollment("c1", 200.0, "tok"))
        self.assertFalse(redemption.rotated)
        self.assertEqual(redemption.client.token_issued_at, 200.0)
        self.assertTrue(redemption.client.enrolled)
        self.assertEqual(redemption.client.address, "192.0.2.1")
        self.assertEqual(redemption.enrollment.consumed_at, 200.0)
        self.assertEqual(redemption.enrollment.advertised_endpoint, "srv.example:7443")
        self.assertEqual(self.ok(self.store.client_for_token_hash("tok")), redemption.client)

    def test_expiry_edges(self) -> None:
        """A code works up to its expires_at and is refused after it, unconsumed."""
        self.enroll("edge-ok", ttl=600.0)
        self.ok(self.store.redeem_enrollment("edge-ok", 700.0, "t1"))
        self.enroll("late", issued_at=1000.0, ttl=600.0)
        error = self.refused(
            self.store.redeem_enrollment("late", 1600.001, "t2"), "enrollment_expired"
        )
        self.assertEqual(error.fields["expires_at"], 1600.0)
        self.assertEqual(
            self.raw()
            .execute("SELECT consumed_at FROM client_enrollments WHERE code_hash = 'late'")
            .fetchone(),
            (None,),
        )
        self.assertIsNone(self.ok(self.store.client_for_token_hash("t2")))

    def test_reused_code(self) -> None:
        """A code works once."""
        self.enroll("c1")
        self.ok(self.store.redeem_enrollment("c1", 200.0, "t1"))
        self.refused(self.store.redeem_enrollment("c1", 201.0, "t2"), "enrollment_used")
        self.assertIsNotNone(self.ok(self.store.client_for_token_hash("t1")))

    def test_superseded_code(self) -> None:
        """A newer code for the client consumes its older unredeemed ones."""
        self.enroll("old")
        self.enroll("new", issued_at=150.0)
        self.assertEqual(
            self.raw()
            .execute("SELECT consumed_at FROM client_enrollments WHERE code_hash = 'old'")
            .fetchone(),
            (150.0,),
        )
        self.refused(self.store.redeem_enrollment("old", 200.0, "t1"), "enrollment_used")
        self.ok(self.store.redeem_enrollment("new", 200.0, "t2"))

    def test_other_clients_codes_not_superseded(self) -> None:
        """Superseding is per client."""
        other = self.ok(self.store.create_client("other", None, 100.0))
        self.ok(self.store.create_enrollment(other.client_id, "theirs", 100.0, 700.0, None, None))
        self.enroll("mine")
        self.ok(self.store.redeem_enrollment("theirs", 200.0, "t1"))

    def test_unknown_code(self) -> None:
        """An unknown code is enrollment_invalid."""
        self.refused(self.store.redeem_enrollment("nope", 200.0, "t"), "enrollment_invalid")

    def test_revoked_client(self) -> None:
        """Revoking consumes open codes; no code of a revoked client works, none can be issued."""
        self.enroll("c1")
        self.ok(self.store.revoke_client(self.client.client_id, 150.0))
        self.refused(self.store.redeem_enrollment("c1", 200.0, "t"), "enrollment_invalid")
        self.refused(
            self.store.create_enrollment(self.client.client_id, "c2", 1.0, 2.0, None, None),
            "client_revoked",
        )
        self.assertEqual(
            self.raw().execute("SELECT consumed_at FROM client_enrollments").fetchall(),
            [(150.0,)],
        )

    def test_reenrollment_rotates_token(self) -> None:
        """Redeeming a new code replaces the token: the old one stops working."""
        self.enroll("c1")
        self.ok(self.store.redeem_enrollment("c1", 200.0, "old-token"))
        self.enroll("c2", issued_at=300.0)
        redemption = self.ok(self.store.redeem_enrollment("c2", 310.0, "new-token"))
        self.assertTrue(redemption.rotated)
        self.assertEqual(redemption.client.token_issued_at, 310.0)
        self.assertIsNone(self.ok(self.store.client_for_token_hash("old-token")))
        self.assertEqual(self.ok(self.store.client_for_token_hash("new-token")), redemption.client)

    def test_failed_redemption_is_rolled_back(self) -> None:
        """
        If setting the token fails half way (a hash clash), the code is not
        consumed: a transaction is applied whole or not at all.
        """
        other = self.enrolled_client(self.store, name="other", token_hash="taken")
        self.enroll("c1")
        self.failureResultOf(
            self.store.redeem_enrollment("c1", 200.0, "taken"), sqlite3.IntegrityError
        )
        self.assertEqual(
            self.raw()
            .execute("SELECT consumed_at FROM client_enrollments WHERE code_hash = 'c1'")
            .fetchone(),
            (None,),
        )
        self.assertEqual(self.ok(self.store.client_for_token_hash("taken")), other)
        self.ok(self.store.redeem_enrollment("c1", 201.0, "fresh"))

    def test_refusal_codes_are_401_exit_1(self) -> None:
        """Enrollment refusals answer HTTP 401 and exit 1."""
        self.enroll("used")
        self.ok(self.store.redeem_enrollment("used", 200.0, "t"))
        self.enroll("expired", issued_at=0.0, ttl=1.0)
        for code, key in [
            ("enrollment_invalid", "unknown"),
            ("enrollment_used", "used"),
            ("enrollment_expired", "expired"),
        ]:
            error = self.refused(self.store.redeem_enrollment(key, 300.0, "x"), code)
            self.assertEqual((error.error.http_status, error.error.exit_code), (401, 1))


class RuleTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store = self.open()
        self.client = self.ok(self.store.create_client("edge", None, 1.0))
        self.cid = self.client.client_id

    def test_insert_assigns_id(self) -> None:
        """The store assigns ids, ignores rule.id and stores the spec with its id."""
        first = self.ok(self.store.insert_rule(self.cid, make_rule(100, 110), 5.0))
        second = self.ok(self.store.insert_rule(self.cid, make_rule(200, 200), 6.0))
        self.assertEqual((first.rule_id, second.rule_id), (1, 2))
        self.assertEqual(first.rule.id, 1)
        self.assertEqual(first.rule.name, "r100")
        self.assertEqual(
            (first.state, first.state_reason, first.created_at, first.updated_at),
            (RuleState.PENDING, None, 5.0, 5.0),
        )
        self.assertEqual((first.client_id, first.client_name), (self.cid, "edge"))
        spec, proto, start, end = (
            self.raw()
            .execute("SELECT spec_json, protocol, listen_start, listen_end FROM rules WHERE id = 1")
            .fetchone()
        )
        self.assertEqual(json.loads(spec)["id"], 1)
        self.assertEqual((proto, start, end), ("tcp", 100, 110))

    def test_ids_are_never_reused(self) -> None:
        """A deleted rule's id is not given to the next rule."""
        first = self.ok(self.store.insert_rule(self.cid, make_rule(), 1.0))
        self.ok(self.store.delete_rule(first.rule_id))
        second = self.ok(self.store.insert_rule(self.cid, make_rule(), 1.0))
        self.assertEqual(second.rule_id, first.rule_id + 1)

    def test_insert_for_revoked_client(self) -> None:
        """A revoked client gets no new rules."""
        self.ok(self.store.revoke_client(self.cid, 2.0))
        error = self.refused(self.store.insert_rule(self.cid, make_rule(), 3.0), "client_revoked")
        self.assertEqual((error.error.http_status, error.error.exit_code), (409, 5))

    def test_state_changes(self) -> None:
        """set_rule_state records the state, reason and time."""
        rule = self.ok(self.store.insert_rule(self.cid, make_rule(), 1.0))
        active = self.ok(self.store.set_rule_state(rule.rule_id, RuleState.ACTIVE, None, 2.0))
        self.assertEqual((active.state, active.updated_at, active.created_at), ("active", 2.0, 1.0))
        failed = self.ok(self.store.set_rule_state(rule.rule_id, "failed", "port_in_use:100", 3.0))
        self.assertEqual((failed.state, failed.state_reason), (RuleState.FAILED, "port_in_use:100"))
        self.assertEqual(self.ok(self.store.get_rule(rule.rule_id)), failed)

    def test_unknown_rule(self) -> None:
        """By-id rule calls refuse an unknown id with rule_not_found."""
        error = self.refused(self.store.get_rule(42), "rule_not_found")
        self.assertEqual((error.error.http_status, error.error.exit_code), (404, 8))
        self.refused(self.store.set_rule_state(42, "active", None, 1.0), "rule_not_found")
        self.refused(self.store.delete_rule(42), "rule_not_found")

    def test_delete_rule(self) -> None:
        """delete_rule returns the rule as it was; it is gone afterwards."""
        rule = self.ok(self.store.insert_rule(self.cid, make_rule(), 1.0))
        self.assertEqual(self.ok(self.store.delete_rule(rule.rule_id)), rule)
        self.refused(self.store.get_rule(rule.rule_id), "rule_not_found")
        self.refused(self.store.delete_rule(rule.rule_id), "rule_not_found")

    def test_list_and_filter(self) -> None:
        """list_rules orders by id and filters by client; rules_in_state by state."""
        other = self.ok(self.store.create_client("other", None, 1.0)).client_id
        r1 = self.ok(self.store.insert_rule(self.cid, make_rule(100, 100), 1.0))
        r2 = self.ok(self.store.insert_rule(other, make_rule(200, 200), 1.0))
        r3 = self.ok(self.store.insert_rule(self.cid, make_rule(300, 300), 1.0))
        r3 = self.ok(self.store.set_rule_state(r3.rule_id, "active", None, 2.0))
        self.assertEqual(self.ok(self.store.list_rules()), [r1, r2, r3])
        self.assertEqual(self.ok(self.store.list_rules(self.cid)), [r1, r3])
        self.assertEqual(self.ok(self.store.list_rules("unknown")), [])
        self.assertEqual(self.ok(self.store.rules_in_state(self.cid, RuleState.ACTIVE)), [r3])
        self.assertEqual(self.ok(self.store.rules_in_state(self.cid, "pending")), [r1])
        self.assertEqual(self.ok(self.store.rules_in_state(other, "active")), [])

    def overlapping(self, start: int, end: int, protocol: Any = Protocol.TCP) -> list[int]:
        found = self.ok(self.store.overlapping_rules(self.cid, protocol, start, end))
        return [r.rule_id for r in found]

    def test_overlap_edges(self) -> None:
        """Ranges that share one port overlap; adjacent ranges do not."""
        rule = self.ok(self.store.insert_rule(self.cid, make_rule(100, 110), 1.0)).rule_id
        self.assertEqual(self.overlapping(90, 99), [])
        self.assertEqual(self.overlapping(111, 120), [])
        self.assertEqual(self.overlapping(90, 100), [rule])
        self.assertEqual(self.overlapping(110, 120), [rule])
        self.assertEqual(self.overlapping(105, 105), [rule])
        self.assertEqual(self.overlapping(1, 65535), [rule])
        self.assertEqual(self.overlapping(100, 110), [rule])

    def test_overlap_is_per_protocol_and_client(self) -> None:
        """TCP and UDP ports are separate, and so are clients."""
        tcp = self.ok(self.store.insert_rule(self.cid, make_rule(100, 110), 1.0)).rule_id
        udp = self.ok(
            self.store.insert_rule(self.cid, make_rule(105, 105, protocol=Protocol.UDP), 1.0)
        ).rule_id
        self.assertEqual(self.overlapping(100, 200, Protocol.TCP), [tcp])
        self.assertEqual(self.overlapping(100, 200, "udp"), [udp])
        other = self.ok(self.store.create_client("other", None, 1.0)).client_id
        self.assertEqual(self.ok(self.store.overlapping_rules(other, "tcp", 1, 65535)), [])

    def test_every_state_blocks(self) -> None:
        """Pending, active and failed rules all hold their ports."""
        ids = []
        for port, state in [(100, "pending"), (101, "active"), (102, "failed")]:
            rule = self.ok(self.store.insert_rule(self.cid, make_rule(port, port), 1.0))
            self.ok(self.store.set_rule_state(rule.rule_id, state, None, 2.0))
            ids.append(rule.rule_id)
        self.assertEqual(self.overlapping(100, 102), ids)
        self.assertEqual(self.overlapping(102, 102), ids[2:])

    def test_insert_check_is_atomic(self) -> None:
        """
        A check given to insert_rule sees the overlapping rules and can
        refuse; a refused rule is not stored.
        """
        existing = self.ok(self.store.insert_rule(self.cid, make_rule(100, 110), 1.0))
        seen: list[list[RuleRecord]] = []

        def check(overlapping: list[RuleRecord]) -> None:
            seen.append(overlapping)
            if overlapping:
                raise PortunusError("port_in_use", "taken", rule_id=overlapping[0].rule_id)

        error = self.refused(
            self.store.insert_rule(self.cid, make_rule(110, 120), 2.0, check=check), "port_in_use"
        )
        self.assertEqual(error.fields["rule_id"], existing.rule_id)
        self.assertEqual(seen, [[existing]])
        self.assertEqual(self.ok(self.store.list_rules()), [existing])
        self.ok(self.store.insert_rule(self.cid, make_rule(111, 120), 2.0, check=check))
        self.assertEqual(seen[-1], [])


class SettingsTests(StoreTestCase):
    def test_settings(self) -> None:
        """Settings read None until set, overwrite, and unset with None."""
        store = self.open()
        self.assertIsNone(self.ok(store.get_setting("advertised_endpoint")))
        self.ok(store.set_setting("advertised_endpoint", "a:1"))
        self.ok(store.set_setting("advertised_endpoint", "b:2"))
        self.assertEqual(self.ok(store.get_setting("advertised_endpoint")), "b:2")
        self.ok(store.set_setting("advertised_endpoint", None))
        self.assertIsNone(self.ok(store.get_setting("advertised_endpoint")))


class ThreadPoolStoreTests(TestCase):
    """The default runner: one worker thread on the real reactor."""

    def open(self, data_dir: str) -> Store:
        from twisted.internet import reactor

        return open_store(data_dir, reactor)

    def pool_threads(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if "portunus-store" in t.name]

    @inlineCallbacks
    def test_transactions_run_on_the_worker_thread(self) -> Any:
        """
        Transactions run off the reactor thread, in order; close waits for
        them, stops the thread and frees the data dir.
        """
        data_dir = self.mktemp()
        store = self.open(data_dir)
        self.addCleanup(store.close)
        # The worker starts with the reactor; by the first answer it runs.
        client = yield store.create_client("edge", None, 1.0)
        self.assertEqual(len(self.pool_threads()), 1)
        threads: list[str] = []

        def check(overlapping: list[RuleRecord]) -> None:
            threads.append(threading.current_thread().name)

        pending = [
            store.insert_rule(client.client_id, make_rule(p, p), 2.0, check=check)
            for p in range(100, 110)
        ]
        closed = store.close()
        records = yield gatherResults(pending)
        yield closed
        self.assertEqual([r.rule_id for r in records], list(range(1, 11)))
        self.assertEqual(len(threads), 10)
        self.assertNotIn(threading.current_thread().name, threads)
        self.assertEqual(self.pool_threads(), [])

        reopened = self.open(data_dir)
        try:
            rules = yield reopened.list_rules()
            self.assertEqual(len(rules), 10)
            refused = reopened.get_rule(99)
            yield self.assertFailure(refused, PortunusError)
        finally:
            yield reopened.close()
        self.assertEqual(self.pool_threads(), [])

    @inlineCallbacks
    def test_second_close_waits_for_the_first(self) -> Any:
        """Closing twice (operator stop, then reactor shutdown) is harmless."""
        store = self.open(self.mktemp())
        first = store.close()
        second = store.close()
        self.assertFalse(first.called)
        self.assertFalse(second.called)
        yield first
        yield second
        yield store.close()
