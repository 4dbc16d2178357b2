"""
portunus-server backup / restore: offline commands on the data dir's
files, with Portunus' outputs and exit codes.
"""

from __future__ import annotations

import os
from io import StringIO
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.cli import server as cli
from portunus.server.store import open_store, run_synchronously


class OfflineCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        store = open_store(self.data_dir, Clock(), runner=run_synchronously)
        store.create_client("edge-01", None, 1.0)
        store.close()
        self.spare = os.path.abspath(self.mktemp())
        os.makedirs(self.spare)

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = StringIO(), StringIO()
        code: Any = self.successResultOf(ensureDeferred(cli.run(list(argv), None, {}, out, err)))
        return code, out.getvalue(), err.getvalue()

    def test_backup_then_restore_round_trips(self) -> None:
        code, out, err = self.run_cli("backup", "--data-dir", self.data_dir, "--out", self.spare)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(f"backup={self.spare}/portunus-state-"))
        written = out.strip().partition("=")[2]
        target = os.path.join(self.spare, "restored")
        code, out, err = self.run_cli("restore", "--in", written, "--data-dir", target)
        self.assertEqual((code, out), (0, f"restore=ok data_dir={target}\n"), err)
        store = open_store(target, Clock(), runner=run_synchronously)
        self.addCleanup(store.close)
        [client] = self.successResultOf(store.list_clients())
        self.assertEqual(client.name, "edge-01")

    def test_existing_destination_exits_6(self) -> None:
        dest = os.path.join(self.spare, "x.db")
        self.assertEqual(self.run_cli("backup", "--data-dir", self.data_dir, "--out", dest)[0], 0)
        code, _, err = self.run_cli("backup", "--data-dir", self.data_dir, "--out", dest)
        self.assertEqual(code, 6)
        self.assertIn("error: backup_destination_exists:", err)

    def test_restore_over_state_needs_force(self) -> None:
        dest = os.path.join(self.spare, "x.db")
        self.run_cli("backup", "--data-dir", self.data_dir, "--out", dest)
        code, _, err = self.run_cli("restore", "--in", dest, "--data-dir", self.data_dir)
        self.assertEqual(code, 6)
        self.assertIn("restore_destination_exists", err)

    def test_restore_of_a_non_database_exits_7(self) -> None:
        bogus = os.path.join(self.spare, "bogus")
        with open(bogus, "w") as f:
            f.write("not sqlite at all, not at all\n")
        code, _, err = self.run_cli(
            "restore", "--in", bogus, "--data-dir", self.data_dir, "--force"
        )
        self.assertEqual(code, 7)
        self.assertIn("restore_not_sqlite", err)

    def test_required_flags(self) -> None:
        self.assertEqual(self.run_cli("backup", "--data-dir", self.data_dir)[0], 2)
        self.assertEqual(self.run_cli("restore", "--data-dir", self.data_dir)[0], 2)
