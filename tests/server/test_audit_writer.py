"""
The durable audit writer on a deterministic clock: a handoff that never
drops (past 1024 queued entries a request waits for its own to be
written), batches of at most 256 every 0.1 s with one in flight, retry
after a failed write, lag and wait reporting, the live-view ring,
redaction of secret-named details, the tally of unauthenticated
refusals, the hourly retention sweep, and a stop that writes everything
queued.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from portunus.server.audit import AuditEntry, AuditSink
from portunus.server.audit.writer import (
    BATCH_SIZE,
    QUEUE_SIZE,
    RECENT_SIZE,
    AuditLog,
    scrub_details,
)
from portunus.server.store import Store, open_store, run_synchronously

NOW = 1_700_000_000.0


class StoreDown(Exception):
    pass


@attrs.define
class FakeTable:
    """An audit table whose writes a test can hold, fail or let through."""

    batches: list[list[AuditEntry]] = attrs.field(factory=list)
    held: list[Deferred[int]] = attrs.field(factory=list)
    hold: bool = False
    failures: int = 0
    sweeps: list[float] = attrs.field(factory=list)
    swept: int = 0
    sweep_failures: int = 0

    def append(self, entries: list[AuditEntry]) -> Deferred[int]:
        self.batches.append(list(entries))
        if self.failures:
            self.failures -= 1
            return fail(StoreDown("disk full"))
        if self.hold:
            d: Deferred[int] = Deferred()
            self.held.append(d)
            return d
        return succeed(len(entries))

    def enforce_retention(self, now: float) -> Deferred[int]:
        self.sweeps.append(now)
        if self.sweep_failures:
            self.sweep_failures -= 1
            return fail(StoreDown("locked"))
        return succeed(self.swept)

    @property
    def written(self) -> list[AuditEntry]:
        return [e for batch in self.batches for e in batch]


@attrs.define
class Observer:
    waited: int = 0
    lags: list[float] = attrs.field(factory=list)
    unauthenticated: list[str] = attrs.field(factory=list)

    def audit_waited(self) -> None:
        self.waited += 1

    def audit_lag(self, seconds: float) -> None:
        self.lags.append(seconds)

    def unauthenticated_failure(self, reason: str) -> None:
        self.unauthenticated.append(reason)


def entry(i: int = 0, **more: Any) -> AuditEntry:
    return AuditEntry(ts=NOW + i, actor=f"a{i}", outcome="allow", **more)


def events(captured: Any, name: str) -> list[Any]:
    return [e for e in captured if e.get("event") == name]


class WriterTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.table = FakeTable()
        self.observer = Observer()
        self.audit = AuditLog(self.table, self.clock, observer=self.observer)

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.clock.advance(0.1)


class SinkTests(WriterTestCase):
    def test_is_an_audit_sink(self) -> None:
        """The writer is what the API pipeline records into."""
        sink: AuditSink = self.audit
        sink.record(entry())
        self.assertEqual(self.audit.pending, 1)

    def test_a_full_queue_makes_requests_wait_not_drop(self) -> None:
        """
        With the store stalled, the first 1024 entries are handed over at
        once; each later one is kept too, and its request waits until that
        entry is written.  Nothing is dropped.
        """
        self.table.hold = True
        self.audit.start()
        handed = [self.audit.record(entry(i)) for i in range(QUEUE_SIZE + 500)]
        self.tick(5)
        for d in handed[:QUEUE_SIZE]:
            self.successResultOf(d)
        for d in handed[QUEUE_SIZE:]:
            self.assertNoResult(d)
        self.assertEqual(self.audit.pending, QUEUE_SIZE + 500)
        self.assertEqual((self.audit.waited, self.observer.waited), (500, 500))
        self.table.hold = False
        self.table.held[0].callback(BATCH_SIZE)
        self.tick(10)
        for d in handed[QUEUE_SIZE:]:
            self.successResultOf(d)
        self.assertEqual(self.audit.pending, 0)
        self.assertEqual(len(self.table.written), QUEUE_SIZE + 500)
        self.assertEqual(
            [e.actor for e in self.table.written[-500:]],
            [f"a{i}" for i in range(QUEUE_SIZE, QUEUE_SIZE + 500)],
        )

    def test_a_waiting_request_goes_once_its_own_entry_is_written(self) -> None:
        """A waiting entry's Deferred fires with the batch that holds it, not before."""
        audit = AuditLog(self.table, self.clock, queue_size=2, batch_size=2)
        self.table.hold = True
        first, second, third = (audit.record(entry(i)) for i in range(3))
        self.successResultOf(first)
        self.successResultOf(second)
        audit.start()
        self.tick()
        self.table.held[0].callback(2)
        self.assertNoResult(third)
        self.tick()
        self.table.held[1].callback(1)
        self.successResultOf(third)

    def test_a_request_that_goes_away_still_has_its_entry_written(self) -> None:
        """A waiting request cancelled (its client hung up) leaves its entry to be written."""
        audit = AuditLog(self.table, self.clock, queue_size=1)
        audit.record(entry(1))
        waiting = audit.record(entry(2))
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.successResultOf(audit.flush())
        self.assertEqual([e.actor for e in self.table.written], ["a1", "a2"])

    def test_queue_full_log_is_rate_limited_by_the_clock(self) -> None:
        """One audit.queue_full line a second at most, carrying the waits since the last."""
        self.table.hold = True
        with capturedLogs() as captured:
            for i in range(QUEUE_SIZE + 10):
                self.audit.record(entry(i))
            self.clock.advance(0.5)
            for i in range(5):
                self.audit.record(entry(i))
            self.clock.advance(0.5)
            self.audit.record(entry())
        lines = events(captured, "audit.queue_full")
        self.assertEqual([e["waited"] for e in lines], [1, 15])
        self.assertEqual(lines[-1]["waited_total"], 16)

    def test_record_never_raises(self) -> None:
        """A broken observer cannot turn recording into a request failure."""

        class Broken(Observer):
            def audit_waited(self) -> None:
                raise RuntimeError("metrics broke")

        audit = AuditLog(self.table, self.clock, observer=Broken(), queue_size=1)
        self.successResultOf(audit.record(entry(1)))
        self.successResultOf(audit.record(entry(2)))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_recent_ring_is_bounded(self) -> None:
        """The live view keeps the last 1000 entries, newest first."""
        for i in range(RECENT_SIZE + 500):
            self.audit.record(entry(i))
        recent = self.audit.recent()
        self.assertEqual(len(recent), RECENT_SIZE)
        self.assertEqual((recent[0].actor, recent[-1].actor), ("a1499", "a500"))


class RedactionTests(WriterTestCase):
    def test_secret_named_details_are_dropped_and_logged_by_name(self) -> None:
        """
        Keys naming a secret (at any depth, any case) never reach the store or
        the ring; audit.redaction_violation names the key, never the value.
        """
        details = {
            "client": "edge-01",
            "API_Token": "tok-value",
            "nested": {"password": "pw-value", "ok": 1},
            "items": [{"private_key": "pk-value", "port": 80}],
        }
        with capturedLogs() as captured:
            self.audit.record(entry(details=details))
        self.successResultOf(self.audit.flush())
        [stored] = self.table.written
        expected = {"client": "edge-01", "nested": {"ok": 1}, "items": [{"port": 80}]}
        self.assertEqual(stored.details, expected)
        self.assertEqual(self.audit.recent()[0].details, expected)
        violations = events(captured, "audit.redaction_violation")
        self.assertEqual(
            sorted(e["key"] for e in violations), ["API_Token", "password", "private_key"]
        )
        for secret in ("tok-value", "pw-value", "pk-value"):
            self.assertNotIn(secret, repr(violations))

    def test_clean_details_are_kept_as_is(self) -> None:
        """Nothing is logged, and the entry is the one given, when no key names a secret."""
        given = entry(details={"client": "edge-01"})
        with capturedLogs() as captured:
            self.audit.record(given)
        self.assertIs(self.audit.recent()[0], given)
        self.assertEqual(events(captured, "audit.redaction_violation"), [])

    def test_scrub_details_reports_keys(self) -> None:
        """The scrubber returns a clean copy and the names it dropped."""
        found: list[str] = []
        self.assertEqual(scrub_details({"session_secret": 1, "a": [1, 2]}, found), {"a": [1, 2]})
        self.assertEqual(found, ["session_secret"])


class FlushLoopTests(WriterTestCase):
    def test_batches_of_at_most_256_per_tick(self) -> None:
        """600 entries are written 256, 256, 88 on three ticks, in order."""
        for i in range(600):
            self.audit.record(entry(i))
        self.audit.start()
        self.assertEqual(self.table.batches, [])
        self.tick()
        self.assertEqual([len(b) for b in self.table.batches], [BATCH_SIZE])
        self.tick(2)
        self.assertEqual([len(b) for b in self.table.batches], [256, 256, 88])
        self.assertEqual([e.actor for e in self.table.written], [f"a{i}" for i in range(600)])
        self.assertEqual(self.audit.pending, 0)

    def test_one_batch_in_flight(self) -> None:
        """While a write is outstanding, ticks start no other."""
        self.table.hold = True
        for i in range(300):
            self.audit.record(entry(i))
        self.audit.start()
        self.tick(5)
        self.assertEqual(len(self.table.batches), 1)
        self.table.held[0].callback(256)
        self.tick()
        self.assertEqual([len(b) for b in self.table.batches], [256, 44])

    def test_failed_batch_is_retried_next_tick(self) -> None:
        """A write the store refuses is logged and the same batch is written next tick."""
        self.table.failures = 1
        for i in range(3):
            self.audit.record(entry(i))
        self.audit.start()
        with capturedLogs() as captured:
            self.tick()
        [failed] = events(captured, "audit.flush_failed")
        self.assertEqual(failed["count"], 3)
        self.assertEqual(len(self.flushLoggedErrors(StoreDown)), 1)
        self.assertEqual(self.audit.pending, 3)
        self.tick()
        self.assertEqual(self.table.batches[0], self.table.batches[1])
        self.assertEqual(self.audit.pending, 0)
        self.assertEqual(self.audit.written, 3)

    def test_failures_hold_requests_not_entries(self) -> None:
        """
        A store that keeps failing keeps every entry; past 1024 their
        requests wait, and go once the store is back.
        """
        self.table.failures = 10**6
        self.audit.start()
        handed = []
        for i in range(QUEUE_SIZE * 2):
            handed.append(self.audit.record(entry(i)))
            if i % 100 == 0:
                self.tick()
        self.assertEqual(self.audit.pending, QUEUE_SIZE * 2)
        self.assertEqual(self.observer.waited, QUEUE_SIZE)
        self.flushLoggedErrors(StoreDown)
        self.table.failures = 0
        self.successResultOf(self.audit.flush())
        for d in handed:
            self.successResultOf(d)
        self.assertEqual(len({e.actor for e in self.table.written}), QUEUE_SIZE * 2)

    def test_lag_is_the_age_of_the_oldest_queued_entry(self) -> None:
        """Lag grows while the oldest entry waits, and drops to 0 once written."""
        self.table.hold = True
        self.audit.start()
        self.audit.record(entry())
        self.tick(3)
        self.assertAlmostEqual(self.observer.lags[-1], 0.3, places=3)
        self.table.held[0].callback(1)
        self.assertEqual(self.observer.lags[-1], 0.0)

    def test_flush_writes_everything_queued(self) -> None:
        """flush() needs no tick: it writes batch after batch until the queue is empty."""
        for i in range(700):
            self.audit.record(entry(i))
        self.successResultOf(self.audit.flush())
        self.assertEqual([len(b) for b in self.table.batches], [256, 256, 188])

    def test_flush_fails_with_the_store(self) -> None:
        """flush() reports a store failure; the entries stay queued for later."""
        self.table.failures = 1
        self.audit.record(entry())
        self.failureResultOf(self.audit.flush(), StoreDown)
        self.flushLoggedErrors(StoreDown)
        self.assertEqual(self.audit.pending, 1)
        self.successResultOf(self.audit.flush())
        self.assertEqual(self.audit.pending, 0)

    def test_flush_waits_for_the_batch_in_flight(self) -> None:
        """flush() during a write waits for it, then writes the rest."""
        self.table.hold = True
        for i in range(300):
            self.audit.record(entry(i))
        self.audit.start()
        self.tick()
        d = self.audit.flush()
        self.assertNoResult(d)
        self.table.held[0].callback(256)
        self.assertNoResult(d)
        self.table.held[1].callback(44)
        self.successResultOf(d)
        self.assertEqual(self.audit.written, 300)


class TallyTests(WriterTestCase):
    """Refusals before authentication are counted and summarized, never queued."""

    def test_counted_not_queued(self) -> None:
        """Each refusal reaches the metric; none becomes an entry."""
        for _ in range(3):
            self.audit.unauthenticated("unauthenticated", "192.0.2.1")
        self.audit.unauthenticated("credential_invalid", "192.0.2.2")
        self.assertEqual(self.audit.pending, 0)
        self.assertEqual(self.audit.recent(), [])
        self.assertEqual(
            self.observer.unauthenticated, ["unauthenticated"] * 3 + ["credential_invalid"]
        )

    def test_one_summary_a_minute(self) -> None:
        """
        A minute of refusals is one audit.unauthenticated_summary line:
        counts by reason and the busiest sources; a quiet minute logs nothing.
        """
        with capturedLogs() as captured:
            self.audit.start()
            for i in range(1000):
                self.audit.unauthenticated("unauthenticated", f"192.0.2.{i % 7}")
            self.audit.unauthenticated("rate_limited", "198.51.100.9")
            self.clock.advance(60)
            self.clock.advance(60)
            self.audit.unauthenticated("credential_invalid", None)
            self.successResultOf(self.audit.stop())
        lines = events(captured, "audit.unauthenticated_summary")
        self.assertEqual([line["total"] for line in lines], [1001, 1])
        self.assertEqual(lines[0]["by_reason"], {"rate_limited": 1, "unauthenticated": 1000})
        self.assertEqual(lines[0]["interval_secs"], 60)
        self.assertEqual(lines[0]["top_sources"][0], ["192.0.2.0", 143])
        self.assertEqual(len(lines[0]["top_sources"]), 5)
        self.assertEqual(lines[0]["distinct_sources"], 8)
        self.assertEqual(lines[1]["top_sources"], [["unknown", 1]])

    def test_sources_are_bounded(self) -> None:
        """Past 1024 distinct sources in a minute, the rest are counted together."""
        with capturedLogs() as captured:
            self.audit.start()
            for i in range(5000):
                self.audit.unauthenticated("unauthenticated", f"10.0.{i // 256}.{i % 256}")
            self.clock.advance(60)
        [line] = events(captured, "audit.unauthenticated_summary")
        self.assertEqual((line["total"], line["distinct_sources"]), (5000, 1024))
        self.assertEqual(line["other_sources"], 5000 - 1024)


class SweepTests(WriterTestCase):
    def test_sweeps_at_start_then_hourly(self) -> None:
        """Retention runs at start and every hour, logging how many rows went."""
        self.table.swept = 7
        with capturedLogs() as captured:
            self.audit.start()
            self.assertEqual(self.table.sweeps, [NOW])
            self.clock.advance(3599)
            self.assertEqual(len(self.table.sweeps), 1)
            self.clock.advance(1)
        self.assertEqual(self.table.sweeps, [NOW, NOW + 3600])
        self.assertEqual([e["deleted"] for e in events(captured, "audit_retention.sweep")], [7, 7])

    def test_failed_sweep_is_logged_and_the_next_still_runs(self) -> None:
        """A failing sweep does not stop the schedule."""
        self.table.sweep_failures = 2
        with capturedLogs() as captured:
            self.audit.start()
            self.clock.advance(3600)
            self.clock.advance(3600)
        self.assertEqual(len(self.table.sweeps), 3)
        self.assertEqual(len(events(captured, "audit_retention.sweep_failed")), 2)
        self.assertEqual(len(events(captured, "audit_retention.sweep")), 1)
        self.assertEqual(len(self.flushLoggedErrors(StoreDown)), 2)


class LifecycleTests(WriterTestCase):
    def test_stop_writes_everything_then_stops(self) -> None:
        """stop() writes what is queued and leaves no timers behind."""
        self.audit.start()
        for i in range(600):
            self.audit.record(entry(i))
        self.successResultOf(self.audit.stop())
        self.assertEqual(len(self.table.written), 600)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_never_fails(self) -> None:
        """
        A store that refuses the last flush is logged as lost entries;
        stop still fires, and lets waiting requests go.
        """
        audit = AuditLog(self.table, self.clock, queue_size=1)
        audit.start()
        audit.record(entry())
        waiting = audit.record(entry(2))
        self.table.failures = 1
        with capturedLogs() as captured:
            self.successResultOf(audit.stop())
        [stopped] = events(captured, "audit.writer_stopped")
        self.assertEqual(stopped["pending"], 2)
        self.successResultOf(waiting)
        self.flushLoggedErrors(StoreDown)

    def test_runs_as_a_service(self) -> None:
        """In a service tree it starts and stops with its parent."""
        parent = MultiService()
        self.audit.setServiceParent(parent)
        parent.startService()
        self.audit.record(entry())
        self.tick()
        self.assertEqual(len(self.table.written), 1)
        self.audit.record(entry(2))
        stopped = parent.stopService()
        assert stopped is not None
        self.successResultOf(stopped)
        self.assertEqual(len(self.table.written), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RealStoreTests(SynchronousTestCase):
    """The writer over the real store's audit table."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store: Store = open_store(self.mktemp(), self.clock, runner=run_synchronously)
        self.addCleanup(lambda: self.successResultOf(self.store.close()))

    def test_entries_reach_the_table(self) -> None:
        """Batches land as rows, scrubbed; stop() writes the tail."""
        audit = AuditLog(self.store.audit, self.clock)
        audit.start()
        for i in range(300):
            audit.record(entry(i, details={"n": i, "secret": "x"}))
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(self.store.audit.count()), 256)
        self.successResultOf(audit.stop())
        rows = self.successResultOf(self.store.audit.query(limit=1000))
        self.assertEqual(len(rows), 300)
        self.assertEqual(rows[0].entry.details, {"n": 299})
