"""
The offline store tools behind C{portunus-server backup | restore | reset}.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.errors import ERRORS, PortunusError
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.server.store import (
    DB_NAME,
    LOCK_NAME,
    SCHEMA_VERSION,
    RuleState,
    Store,
    backup,
    open_store,
    reset,
    restore,
    run_synchronously,
)
from portunus.server.store.migrations import BOOTSTRAP

#: 2024-01-02T03:04:05Z
NOW = 1704164645.0


class OfflineTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.data_dir = self.mktemp()

    def open(self, data_dir: str) -> Store:
        return open_store(data_dir, self.clock, runner=run_synchronously)

    def close(self, store: Store) -> None:
        self.successResultOf(store.close())

    def populate(self, data_dir: str) -> None:
        """A client with an active rule and a setting."""
        store = self.open(data_dir)
        client = self.successResultOf(store.create_client("edge", "192.0.2.1", NOW))
        rule = self.successResultOf(
            store.insert_rule(
                client.client_id,
                Rule(
                    name="web",
                    protocol=Protocol.TCP,
                    listen=PortRange.single(8080),
                    targets=[Target("10.0.0.1", PortRange.single(80))],
                ),
                NOW,
            )
        )
        self.successResultOf(store.set_rule_state(rule.rule_id, "active", None, NOW + 1))
        self.successResultOf(store.set_setting("advertised_endpoint", "srv:7443"))
        self.close(store)

    def snapshot(self, data_dir: str) -> tuple[object, ...]:
        store = self.open(data_dir)
        try:
            return (
                self.successResultOf(store.list_clients()),
                self.successResultOf(store.list_rules()),
                self.successResultOf(store.get_setting("advertised_endpoint")),
            )
        finally:
            self.close(store)

    def refused(self, code: str, fn: object, *args: object, **kwargs: object) -> PortunusError:
        with self.assertRaises(PortunusError) as caught:
            fn(*args, **kwargs)  # type: ignore[operator]
        self.assertEqual(caught.exception.code, code)
        return caught.exception

    def write(self, path: str, data: bytes) -> str:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path


class BackupTests(OfflineTestCase):
    def test_into_directory(self) -> None:
        """A directory gets a timestamped, self-contained copy; nothing else."""
        self.populate(self.data_dir)
        out = self.mktemp()
        os.makedirs(out)
        path = backup(self.data_dir, out, now=NOW)
        self.assertEqual(path, os.path.join(out, "portunus-state-20240102T030405Z.db"))
        self.assertEqual(os.listdir(out), ["portunus-state-20240102T030405Z.db"])
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone(), ("delete",))
        self.assertEqual(conn.execute("SELECT name FROM clients").fetchall(), [("edge",)])

    def test_while_the_server_runs(self) -> None:
        """Backup needs no lock and sees every committed write, WAL included."""
        self.populate(self.data_dir)
        store = self.open(self.data_dir)
        self.addCleanup(self.close, store)
        self.successResultOf(store.create_client("late", None, NOW))
        path = backup(self.data_dir, os.path.abspath(self.mktemp()))
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        self.assertEqual(
            conn.execute("SELECT name FROM clients ORDER BY name").fetchall(),
            [("edge",), ("late",)],
        )

    def test_existing_destination_refused(self) -> None:
        """An existing file is never overwritten, named or timestamped (exit 6)."""
        self.populate(self.data_dir)
        target = self.write(self.mktemp(), b"keep me")
        error = self.refused("backup_destination_exists", backup, self.data_dir, target)
        self.assertEqual(error.error.exit_code, 6)
        self.assertIn(target, error.message)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"keep me")
        out = os.path.dirname(self.write(os.path.join(self.mktemp(), "x"), b""))
        first = backup(self.data_dir, out, now=NOW)
        self.refused("backup_destination_exists", backup, self.data_dir, out, now=NOW)
        self.assertEqual(sorted(os.listdir(out)), sorted(["x", os.path.basename(first)]))

    def test_missing_source(self) -> None:
        """No state.db to back up: exit 5, naming the file."""
        error = self.refused("backup_source_missing", backup, self.data_dir, self.mktemp())
        self.assertEqual(error.error.exit_code, 5)
        self.assertIn(DB_NAME, error.message)

    def test_unreadable_source(self) -> None:
        """A state.db that is not a database fails cleanly, leaving no partial file."""
        self.write(os.path.join(self.data_dir, DB_NAME), b"not a database" * 100)
        out = self.mktemp()
        os.makedirs(out)
        self.refused("backup_failed", backup, self.data_dir, out)
        self.assertEqual(os.listdir(out), [])


class RestoreTests(OfflineTestCase):
    def backup_of_populated(self) -> str:
        source_dir = self.mktemp()
        self.populate(source_dir)
        out = self.mktemp()
        os.makedirs(out)
        self.expected = self.snapshot(source_dir)
        return backup(source_dir, out, now=NOW)

    def test_round_trip(self) -> None:
        """A backup restored into an empty data dir opens with the same state."""
        path = self.backup_of_populated()
        result = restore(self.data_dir, path)
        self.assertEqual(result.db_path, os.path.join(self.data_dir, DB_NAME))
        self.assertEqual(result.source, path)
        self.assertFalse(result.replaced)
        self.assertEqual(result.source_version, SCHEMA_VERSION)
        self.assertEqual(result.migrations_applied, ())
        snapshot = self.snapshot(self.data_dir)
        self.assertEqual(snapshot, self.expected)
        rules = snapshot[1]
        assert isinstance(rules, list)
        self.assertEqual(rules[0].state, RuleState.ACTIVE)

    def test_existing_state_needs_force(self) -> None:
        """Without --force an existing state.db is kept (exit 6); with it, replaced."""
        path = self.backup_of_populated()
        store = self.open(self.data_dir)
        self.successResultOf(store.create_client("current", None, NOW))
        self.close(store)
        error = self.refused("restore_destination_exists", restore, self.data_dir, path)
        self.assertEqual(error.error.exit_code, 6)
        self.assertIn("--force", error.message)
        names = [c.name for c in self.snapshot(self.data_dir)[0]]  # type: ignore[attr-defined]
        self.assertEqual(names, ["current"])

        # Stale sidecars of the old database must not be replayed into the new one.
        self.write(os.path.join(self.data_dir, DB_NAME + "-wal"), b"stale wal")
        self.write(os.path.join(self.data_dir, DB_NAME + "-shm"), b"stale shm")
        result = restore(self.data_dir, path, force=True)
        self.assertTrue(result.replaced)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DB_NAME + "-wal")))
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DB_NAME + "-shm")))
        self.assertEqual(self.snapshot(self.data_dir), self.expected)
        self.assertEqual(sorted(os.listdir(self.data_dir)), sorted([DB_NAME, LOCK_NAME]))

    def test_refused_while_the_server_runs(self) -> None:
        """Restore takes the data-dir lock: store_in_use (exit 75) under a live server."""
        path = self.backup_of_populated()
        store = self.open(self.data_dir)
        self.addCleanup(self.close, store)
        error = self.refused("startup.store_in_use", restore, self.data_dir, path, force=True)
        self.assertEqual(error.error.exit_code, 75)

    def test_missing_source(self) -> None:
        """A missing backup file: exit 5."""
        error = self.refused("restore_source_missing", restore, self.data_dir, self.mktemp())
        self.assertEqual(error.error.exit_code, 5)

    def test_not_sqlite(self) -> None:
        """A file without the SQLite header, or damaged after it, is refused (exit 7)."""
        text = self.write(self.mktemp(), b"hello, this is not a database at all")
        error = self.refused("restore_not_sqlite", restore, self.data_dir, text)
        self.assertEqual(error.error.exit_code, 7)
        damaged = self.write(self.mktemp(), b"SQLite format 3\x00" + b"\xff" * 200)
        self.refused("restore_not_sqlite", restore, self.data_dir, damaged)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DB_NAME)))

    def test_not_portunus(self) -> None:
        """An SQLite file that is not a Portunus backup is refused (exit 7)."""
        path = self.mktemp()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE other (x)")
        conn.close()
        error = self.refused("restore_not_portunus", restore, self.data_dir, path)
        self.assertEqual(error.error.exit_code, 7)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DB_NAME)))

    def test_newer_schema_refused_state_kept(self) -> None:
        """A backup from newer code is refused (exit 78) and the current state kept."""
        path = self.backup_of_populated()
        conn = sqlite3.connect(path)
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (SCHEMA_VERSION + 1,))
        conn.commit()
        conn.close()
        self.populate(self.data_dir)
        before = self.snapshot(self.data_dir)
        error = self.refused(
            "startup.schema_version_too_new", restore, self.data_dir, path, force=True
        )
        self.assertEqual(error.error.exit_code, 78)
        self.assertIn("upgrade the server", error.message)
        self.assertEqual(self.snapshot(self.data_dir), before)
        self.assertEqual(sorted(os.listdir(self.data_dir)), sorted([DB_NAME, LOCK_NAME]))

    def test_older_backup_is_migrated(self) -> None:
        """A backup from before the latest deltas is migrated forward."""
        path = self.mktemp()
        conn = sqlite3.connect(path)
        conn.executescript(BOOTSTRAP)
        conn.close()
        result = restore(self.data_dir, path, now=NOW)
        self.assertEqual(result.source_version, 0)
        self.assertEqual(result.migrations_applied, tuple(range(1, SCHEMA_VERSION + 1)))
        store = self.open(self.data_dir)
        self.addCleanup(self.close, store)
        self.assertEqual(store.schema_version, SCHEMA_VERSION)

    def test_failed_migration_keeps_state(self) -> None:
        """A delta that fails on the backup is exit 70 and changes nothing."""
        path = self.mktemp()
        conn = sqlite3.connect(path)
        conn.executescript(BOOTSTRAP + "CREATE TABLE clients (clashing INTEGER);")
        conn.close()
        self.populate(self.data_dir)
        before = self.snapshot(self.data_dir)
        error = self.refused("restore_migration_failed", restore, self.data_dir, path, force=True)
        self.assertEqual(error.error.exit_code, 70)
        self.assertEqual(self.snapshot(self.data_dir), before)
        self.assertEqual(sorted(os.listdir(self.data_dir)), sorted([DB_NAME, LOCK_NAME]))


class ResetTests(OfflineTestCase):
    def test_dry_run_then_confirm(self) -> None:
        """Without confirm nothing goes; with it the database goes, the rest stays."""
        self.populate(self.data_dir)
        db = os.path.join(self.data_dir, DB_NAME)
        self.write(db + "-wal", b"")
        self.write(os.path.join(self.data_dir, "server.toml"), b"x = 1\n")
        dry = reset(self.data_dir)
        self.assertTrue(dry.dry_run)
        self.assertEqual(dry.files, (db, db + "-wal"))
        self.assertTrue(os.path.exists(db))
        done = reset(self.data_dir, confirm=True)
        self.assertFalse(done.dry_run)
        self.assertEqual(done.files, (db, db + "-wal"))
        self.assertEqual(sorted(os.listdir(self.data_dir)), sorted([LOCK_NAME, "server.toml"]))

    def test_refuses_non_sqlite(self) -> None:
        """A state.db that is not SQLite is not deleted (exit 7)."""
        db = self.write(os.path.join(self.data_dir, DB_NAME), b"precious")
        error = self.refused("reset_not_sqlite", reset, self.data_dir, confirm=True)
        self.assertEqual(error.error.exit_code, 7)
        self.assertTrue(os.path.exists(db))

    def test_refused_while_the_server_runs(self) -> None:
        """Reset takes the data-dir lock."""
        store = self.open(self.data_dir)
        self.addCleanup(self.close, store)
        self.refused("startup.store_in_use", reset, self.data_dir, confirm=True)
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, DB_NAME)))


class ErrorCodeTests(SynchronousTestCase):
    def test_store_codes(self) -> None:
        """Every store code is registered with its HTTP status and exit code."""
        expected = {
            "startup.store_in_use": 75,
            "startup.schema_version_too_new": 78,
            "startup.store_open_failed": 1,
            "client_not_found": 8,
            "client_not_revoked": 5,
            "client_revoked": 5,
            "rule_not_found": 8,
            "enrollment_invalid": 1,
            "enrollment_used": 1,
            "enrollment_expired": 1,
            "backup_source_missing": 5,
            "backup_destination_exists": 6,
            "backup_failed": 1,
            "restore_source_missing": 5,
            "restore_not_sqlite": 7,
            "restore_not_portunus": 7,
            "restore_destination_exists": 6,
            "restore_migration_failed": 70,
            "reset_not_sqlite": 7,
        }
        self.assertEqual({code: ERRORS[code].exit_code for code in expected}, expected)
        for code in ("enrollment_invalid", "enrollment_used", "enrollment_expired"):
            self.assertEqual(ERRORS[code].http_status, 401)
