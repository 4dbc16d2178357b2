"""
portunus-server audit prune: an offline command on the data dir's store,
with Portunus' output lines and exit codes.
"""

from __future__ import annotations

import os
from io import StringIO
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.cli import server as cli
from portunus.server.audit import AuditEntry
from portunus.server.store import DB_NAME, open_store, run_synchronously

#: 2024-01-01T00:00:00Z
JAN_1 = 1704067200.0
DAY = 86400.0


class AuditPruneTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        store = open_store(self.data_dir, Clock(), runner=run_synchronously)
        # Two entries in December 2023, three in January 2024.
        days = [-2, -1, 0, 1, 2]
        entries = [AuditEntry(ts=JAN_1 + d * DAY, actor="alice", outcome="allow") for d in days]
        self.successResultOf(store.audit.append(entries))
        self.successResultOf(store.close())

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = StringIO(), StringIO()
        code: Any = self.successResultOf(ensureDeferred(cli.run(list(argv), None, {}, out, err)))
        return code, out.getvalue(), err.getvalue()

    def remaining(self) -> int:
        store = open_store(self.data_dir, Clock(), runner=run_synchronously)
        try:
            return self.successResultOf(store.audit.count())
        finally:
            self.successResultOf(store.close())

    def prune(self, *more: str) -> tuple[int, str, str]:
        return self.run_cli(
            "audit", "prune", "--before", "2024-01-01T00:00:00Z", "--data-dir", self.data_dir, *more
        )

    def test_dry_run_counts_and_deletes_nothing(self) -> None:
        """--dry-run prints what would go and leaves every entry."""
        code, out, err = self.prune("--dry-run")
        self.assertEqual((code, out), (0, "audit_prune dry_run=true would_delete=2\n"), err)
        self.assertEqual(self.remaining(), 5)

    def test_prune_deletes_the_older_entries(self) -> None:
        """Entries strictly before --before go; the one at that instant stays."""
        code, out, err = self.prune()
        self.assertEqual((code, out), (0, "audit_prune deleted=2\n"), err)
        self.assertEqual(self.remaining(), 3)
        self.assertEqual(self.prune()[1], "audit_prune deleted=0\n")

    def test_bad_timestamp_exits_3_naming_the_flag(self) -> None:
        """Anything but an RFC 3339 time with an offset is exit 3, naming --before."""
        for bad in ("yesterday", "2024-01-01", "2024-01-01T00:00:00"):
            code, out, err = self.run_cli(
                "audit", "prune", "--before", bad, "--data-dir", self.data_dir
            )
            self.assertEqual((code, out), (3, ""))
            self.assertIn("error: invalid_time_range: --before", err)
        self.assertEqual(self.remaining(), 5)

    def test_usage_errors_exit_2(self) -> None:
        """--before is required, and audit needs its subcommand."""
        self.assertEqual(self.run_cli("audit", "prune", "--data-dir", self.data_dir)[0], 2)
        self.assertEqual(self.run_cli("audit")[0], 2)

    def test_refuses_while_the_server_holds_the_data_dir(self) -> None:
        """A live server's lock makes the command exit 75 without touching anything."""
        store = open_store(self.data_dir, Clock(), runner=run_synchronously)
        code, _, err = self.prune()
        self.successResultOf(store.close())
        self.assertEqual(code, 75)
        self.assertIn("startup.store_in_use", err)
        self.assertEqual(self.remaining(), 5)

    def test_missing_database_is_not_created(self) -> None:
        """A wrong --data-dir is an error, not a new empty store."""
        elsewhere = os.path.abspath(self.mktemp())
        code, _, err = self.run_cli(
            "audit", "prune", "--before", "2024-01-01T00:00:00Z", "--data-dir", elsewhere
        )
        self.assertEqual(code, 1)
        self.assertIn(DB_NAME, err)
        self.assertFalse(os.path.exists(os.path.join(elsewhere, DB_NAME)))
