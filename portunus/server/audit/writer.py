"""
The durable audit writer: requests hand entries over, a loop on the
reactor's clock writes them to the store in batches.

No entry is ever dropped.  While fewer than L{QUEUE_SIZE} entries wait,
a request hands its entry over and carries on; past that, the request
waits until its own entry is written (back-pressure, counted in
C{portunus_audit_queue_full_waits_total}), so a stalled store slows the
requests that write instead of losing their entries, and the queue holds
more only while their requests wait.  A failed batch stays at the head of
the queue and is written again on the next tick.

Only authenticated requests (and successful logins) become entries:
requests refused before anyone authenticated are counted by a
L{FailureTally} instead, so no flood of them can fill the queue or the
table.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from portunus.logging import is_sensitive
from portunus.server.audit.entry import AuditEntry
from portunus.server.audit.tally import SUMMARY_INTERVAL, FailureTally

__all__ = [
    "BATCH_SIZE",
    "FLUSH_INTERVAL",
    "QUEUE_SIZE",
    "RECENT_SIZE",
    "SWEEP_INTERVAL",
    "AuditLog",
    "AuditObserver",
    "AuditTable",
    "scrub_details",
]

#: Entries the queue holds before requests wait for their own to be written.
QUEUE_SIZE = 1024
#: Entries written per transaction, at most.
BATCH_SIZE = 256
#: Seconds between writes.
FLUSH_INTERVAL = 0.1
#: Entries kept in memory for the live view.
RECENT_SIZE = 1000
#: Seconds between retention sweeps.
SWEEP_INTERVAL = 3600.0
#: Seconds between two C{audit.queue_full} log lines, at least.
_QUEUE_FULL_LOG_INTERVAL = 1.0

log = Logger(namespace="portunus.server.audit")


class AuditTable(Protocol):
    """The part of L{portunus.server.store.AuditStore} the writer uses."""

    def append(self, entries: list[AuditEntry]) -> Deferred[int]: ...

    def enforce_retention(self, now: float) -> Deferred[int]: ...


class AuditObserver(Protocol):
    """Told about waits, lag and unauthenticated refusals (the server's metrics)."""

    def audit_waited(self) -> None:
        """A request waits for its entry to be written: the queue is full."""

    def audit_lag(self, seconds: float) -> None: ...

    def unauthenticated_failure(self, reason: str) -> None:
        """A request was refused for C{reason} before anyone authenticated."""


class _Unobserved:
    def audit_waited(self) -> None:
        pass

    def audit_lag(self, seconds: float) -> None:
        pass

    def unauthenticated_failure(self, reason: str) -> None:
        pass


def scrub_details(details: Any, found: list[str]) -> Any:
    """
    C{details} without any dict entry, at any depth, whose key names a
    secret (token, secret, password, private key ...); the dropped keys'
    names are appended to C{found}.
    """
    if isinstance(details, dict):
        kept: dict[Any, Any] = {}
        for key, value in details.items():
            if is_sensitive(key):
                found.append(str(key))
            else:
                kept[key] = scrub_details(value, found)
        return kept
    if isinstance(details, list | tuple):
        return [scrub_details(value, found) for value in details]
    return details


@attrs.frozen
class _Queued:
    enqueued_at: float
    entry: AuditEntry
    #: Fired once the entry is written, for a request waiting on it.
    written: Deferred[None] | None = None


class AuditLog(Service):
    """
    An L{portunus.server.audit.AuditSink} that writes to C{table} (the
    store's C{audit}) on C{clock}, and tallies unauthenticated refusals.
    As a service it runs between C{startService} and C{stopService};
    L{start} and L{stop} do the same for code that is not a service tree.
    """

    def __init__(
        self,
        table: AuditTable,
        clock: IReactorTime,
        *,
        observer: AuditObserver | None = None,
        queue_size: int = QUEUE_SIZE,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._table = table
        self._clock = clock
        self._observer: AuditObserver = observer if observer is not None else _Unobserved()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._queue: deque[_Queued] = deque()
        self._recent: deque[AuditEntry] = deque(maxlen=RECENT_SIZE)
        self._writing = DeferredLock()
        self._flusher = LoopingCall(self._tick)
        self._flusher.clock = clock
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock
        self._tally = FailureTally()
        self._summarizer = LoopingCall(self._summarize)
        self._summarizer.clock = clock
        self._last_summary = clock.seconds()
        self._last_full_log: float | None = None
        self._waited_since_log = 0
        #: Requests that waited for their entry because the queue was full.
        self.waited = 0
        #: Entries accepted into the queue, and written, since construction.
        self.accepted = 0
        self.written = 0

    # -- the sink ---------------------------------------------------------

    def record(self, entry: AuditEntry) -> Deferred[None]:
        """
        Queue C{entry} for writing; never raises, never fails.  Fires at
        once while the queue has room, else once this entry is written.
        """
        try:
            return self._record(entry)
        except Exception:
            log.failure("audit entry not recorded", event="audit.record_failed")
            return succeed(None)

    def unauthenticated(self, reason: str, remote: str | None) -> None:
        """Count a refusal before authentication: the metric and the next summary line."""
        self._tally.count(reason, remote)
        self._observer.unauthenticated_failure(reason)

    def _record(self, entry: AuditEntry) -> Deferred[None]:
        if entry.details is not None:
            found: list[str] = []
            details = scrub_details(entry.details, found)
            if found:
                for key in found:
                    log.warn(
                        "audit details key {key} dropped: it names a secret",
                        event="audit.redaction_violation",
                        key=key,
                        action=entry.action,
                        path=entry.path,
                    )
                entry = attrs.evolve(entry, details=details)
        self._recent.append(entry)
        self.accepted += 1
        if len(self._queue) < self._queue_size:
            self._queue.append(_Queued(self._clock.seconds(), entry))
            return succeed(None)
        written: Deferred[None] = Deferred()
        self._queue.append(_Queued(self._clock.seconds(), entry, written))
        self._queue_full()
        return written

    def _queue_full(self) -> None:
        self.waited += 1
        self._waited_since_log += 1
        self._observer.audit_waited()
        now = self._clock.seconds()
        last = self._last_full_log
        if last is None or now - last >= _QUEUE_FULL_LOG_INTERVAL:
            self._last_full_log = now
            log.warn(
                "audit queue full ({capacity} entries): {waited} request(s) wait for their "
                "entry to be written; the store is not keeping up",
                event="audit.queue_full",
                capacity=self._queue_size,
                waited=self._waited_since_log,
                waited_total=self.waited,
                pending=len(self._queue),
            )
            self._waited_since_log = 0

    # -- reading ----------------------------------------------------------

    def recent(self) -> list[AuditEntry]:
        """The last entries recorded (up to 1000, written or not yet), newest first."""
        return list(reversed(self._recent))

    @property
    def pending(self) -> int:
        """Entries queued and not yet written."""
        return len(self._queue)

    # -- writing ----------------------------------------------------------

    def _report_lag(self) -> None:
        lag = self._clock.seconds() - self._queue[0].enqueued_at if self._queue else 0.0
        self._observer.audit_lag(max(lag, 0.0))

    def _write_batch(self) -> Deferred[BaseException | None]:
        """Write the head of the queue once; fire with the error, if any."""
        batch = [queued.entry for queued in list(self._queue)[: self._batch_size]]
        if not batch:
            return succeed(None)

        def written(_: object) -> None:
            waiting = []
            for _entry in batch:
                queued = self._queue.popleft()
                if queued.written is not None:
                    waiting.append(queued.written)
            self.written += len(batch)
            self._report_lag()
            for d in waiting:
                d.callback(None)
            return None

        def failed(failure: Failure) -> BaseException:
            log.failure(
                "audit batch of {count} entries not written; retrying",
                failure,
                event="audit.flush_failed",
                count=len(batch),
                pending=len(self._queue),
            )
            self._report_lag()
            assert failure.value is not None
            return failure.value

        d: Deferred[BaseException | None] = maybeDeferred(self._table.append, batch).addCallbacks(
            written, failed
        )
        return d

    def _tick(self) -> None:
        if self._queue and not self._writing.locked:
            self._writing.run(self._write_batch)
        self._report_lag()

    def flush(self) -> Deferred[None]:
        """
        Write everything queued so far; fire when it is written, or fail
        with the store's error (what is left stays queued for the next tick).
        """
        return Deferred.fromCoroutine(self._flush(self.accepted))

    async def _flush(self, target: int) -> None:
        # Every accepted entry enters the queue, so written catches up with
        # accepted exactly once everything accepted so far is durable.
        while self.written < target and self._queue:
            error = await self._writing.run(self._write_batch)
            if error is not None:
                raise error

    def _sweep(self) -> Deferred[None]:
        def swept(deleted: int) -> None:
            log.info(
                "audit retention sweep deleted {deleted} rows",
                event="audit_retention.sweep",
                deleted=deleted,
            )

        def failed(failure: Failure) -> None:
            log.failure(
                "audit retention sweep failed", failure, event="audit_retention.sweep_failed"
            )

        d = maybeDeferred(self._table.enforce_retention, self._clock.seconds())
        return d.addCallbacks(swept, failed)

    def _summarize(self) -> None:
        now = self._clock.seconds()
        self._tally.summarize(now - self._last_summary)
        self._last_summary = now

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """
        Start writing every 0.1 s, sweeping every hour (the first sweep
        now) and summarizing unauthenticated refusals every minute.
        """
        if self._flusher.running:
            return
        self._flusher.start(FLUSH_INTERVAL, now=False)
        self._sweeper.start(SWEEP_INTERVAL, now=True)
        self._last_summary = self._clock.seconds()
        self._summarizer.start(SUMMARY_INTERVAL, now=False)
        log.info("audit writer started", event="audit.writer_started")

    def stop(self) -> Deferred[None]:
        """
        Stop the loops, log the last summary and write everything queued;
        fire once done.  What the store refuses then is logged as lost (it
        never fails), and requests waiting on it are let go.
        """
        for loop in (self._flusher, self._sweeper, self._summarizer):
            if loop.running:
                loop.stop()
        self._summarize()

        def stopped(result: object) -> None:
            if isinstance(result, Failure):
                log.failure(
                    "audit writer stopped with {pending} entries unwritten",
                    result,
                    event="audit.writer_stopped",
                    pending=len(self._queue),
                )
                for queued in self._queue:
                    if queued.written is not None and not queued.written.called:
                        queued.written.callback(None)
            else:
                log.info("audit writer stopped", event="audit.writer_stopped", pending=0)

        return self.flush().addBoth(stopped)

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stop()
