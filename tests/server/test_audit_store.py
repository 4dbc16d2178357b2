"""
The audit table behind C{store.audit}: batched appends, newest-first
queries paged by sequence, prune and retention.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.server.audit import AuditEntry
from portunus.server.store import DB_NAME, AuditRecord, Store, open_store, run_synchronously
from portunus.server.store._audit import DEFAULT_MAX_AGE_SECS

T = TypeVar("T")

NOW = 1_700_000_000.0
DAY = 86400.0


def entry(ts: float = NOW, actor: str = "alice", outcome: Any = "allow", **more: Any) -> AuditEntry:
    return AuditEntry(ts=ts, actor=actor, outcome=outcome, **more)


class AuditStoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        clock = Clock()
        clock.advance(NOW)
        self.store: Store = open_store(self.data_dir, clock, runner=run_synchronously)
        self.addCleanup(lambda: self.successResultOf(self.store.close()))

    def ok(self, d: Deferred[T]) -> T:
        return self.successResultOf(d)

    def fill(self, count: int, **fields: Any) -> None:
        """C{count} entries, one a second from NOW, actor a{i}."""
        entries = [entry(NOW + i, **{"actor": f"a{i}", **fields}) for i in range(count)]
        self.assertEqual(self.ok(self.store.audit.append(entries)), count)

    def seqs(self, records: list[AuditRecord]) -> list[int]:
        return [r.seq for r in records]


class AppendTests(AuditStoreTestCase):
    def test_round_trip(self) -> None:
        """Every field comes back as written, details decoded from JSON."""
        written = entry(
            role="superadmin",
            method="POST",
            path="/v1/rules",
            reason="ok",
            action="rule.push",
            resource_kind="rule",
            resource_value="7",
            correlation_id="c0ffee",
            details={"client": "edge-01", "ports": [80, 81]},
        )
        self.ok(self.store.audit.append([written]))
        [record] = self.ok(self.store.audit.query(limit=10))
        self.assertEqual(record.entry, written)
        self.assertEqual(record.seq, 1)

    def test_batch_is_one_transaction(self) -> None:
        """A batch with a row the table refuses writes none of the batch."""
        bad = entry(outcome="maybe")
        self.failureResultOf(self.store.audit.append([entry(), bad]), sqlite3.IntegrityError)
        self.assertEqual(self.ok(self.store.audit.count()), 0)

    def test_rows_survive_reopening(self) -> None:
        """Appends are committed: another connection sees them."""
        self.fill(3)
        conn = sqlite3.connect(os.path.join(self.data_dir, DB_NAME))
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT count(*) FROM audit").fetchone(), (3,))


class QueryTests(AuditStoreTestCase):
    def test_newest_first_with_limit(self) -> None:
        """Rows come newest first, at most C{limit}."""
        self.fill(5)
        records = self.ok(self.store.audit.query(limit=3))
        self.assertEqual(self.seqs(records), [5, 4, 3])

    def test_oldest_first(self) -> None:
        """The export order: oldest first."""
        self.fill(5)
        records = self.ok(self.store.audit.query(limit=2, oldest_first=True))
        self.assertEqual(self.seqs(records), [1, 2])

    def test_cursor_pages_older_without_gaps_or_repeats(self) -> None:
        """Paging by the last seq seen visits every row once, even with equal timestamps."""
        entries = [entry(NOW + i // 3, actor=f"a{i}") for i in range(10)]
        self.ok(self.store.audit.append(entries))
        seen: list[int] = []
        before: int | None = None
        while True:
            page = self.ok(self.store.audit.query(limit=3, before_seq=before))
            if not page:
                break
            seen += self.seqs(page)
            before = page[-1].seq
        self.assertEqual(seen, list(range(10, 0, -1)))

    def test_filters(self) -> None:
        """outcome, actor and the since <= ts < until window combine."""
        self.ok(
            self.store.audit.append(
                [
                    entry(NOW, "alice", "allow"),
                    entry(NOW + 10, "bob", "deny"),
                    entry(NOW + 20, "alice", "deny"),
                    entry(NOW + 30, "alice", "deny"),
                ]
            )
        )
        q = self.store.audit.query
        self.assertEqual(self.seqs(self.ok(q(limit=10, outcome="deny"))), [4, 3, 2])
        self.assertEqual(self.seqs(self.ok(q(limit=10, actor="alice"))), [4, 3, 1])
        self.assertEqual(self.seqs(self.ok(q(limit=10, since=NOW + 10, until=NOW + 30))), [3, 2])
        self.assertEqual(
            self.seqs(self.ok(q(limit=10, outcome="deny", actor="alice", until=NOW + 30))), [3]
        )


class PruneTests(AuditStoreTestCase):
    def test_dry_run_counts_and_keeps(self) -> None:
        """A dry run counts what would go and deletes nothing."""
        self.fill(5)
        self.assertEqual(self.ok(self.store.audit.prune(NOW + 3, dry_run=True)), 3)
        self.assertEqual(self.ok(self.store.audit.count()), 5)

    def test_prune_deletes_strictly_older(self) -> None:
        """Prune deletes rows before the cutoff; a row at the cutoff stays."""
        self.fill(5)
        self.assertEqual(self.ok(self.store.audit.prune(NOW + 3)), 3)
        remaining = self.ok(self.store.audit.query(limit=10))
        self.assertEqual([r.entry.ts for r in remaining], [NOW + 4, NOW + 3])


class RetentionTests(AuditStoreTestCase):
    def test_by_age(self) -> None:
        """Rows older than 90 days go; a row just inside the window stays."""
        self.ok(
            self.store.audit.append([entry(NOW - 91 * DAY), entry(NOW - 90 * DAY + 1), entry(NOW)])
        )
        self.assertEqual(self.ok(self.store.audit.enforce_retention(NOW)), 1)
        self.assertEqual(self.seqs(self.ok(self.store.audit.query(limit=10))), [3, 2])

    def test_younger_rows_are_never_deleted(self) -> None:
        """
        However many rows there are (more than Portunus' 50,000-row cap),
        the sweep deletes none younger than the age.
        """
        rows = 50_100
        self.ok(self.store.audit.append([entry(NOW - 89 * DAY)] * rows + [entry(NOW - 91 * DAY)]))
        self.assertEqual(self.ok(self.store.audit.enforce_retention(NOW)), 1)
        self.assertEqual(self.ok(self.store.audit.count()), rows)

    def test_nothing_to_do(self) -> None:
        """A table with no row past the age is left alone."""
        self.fill(3)
        self.assertEqual(self.ok(self.store.audit.enforce_retention(NOW)), 0)
        self.assertEqual(self.ok(self.store.audit.count()), 3)

    def test_default_age_is_portunus(self) -> None:
        """The age is Portunus' 90 days."""
        self.assertEqual(DEFAULT_MAX_AGE_SECS, 90 * 86400)
