"""
The control port's gate: who may hold a connection before authenticating,
for how long, and how refusals are counted and logged.

Anyone who can reach the control port can open a connection, so until a
Hello is answered with a Welcome a connection is I{unauthenticated} and
bounded (docs/security.md, "Control port"):

  - it must finish its TLS handshake within C{handshake_timeout_secs} of
    the TCP accept, then be welcomed within C{hello_timeout_secs} of the
    handshake, or it is aborted;
  - at most C{max_unauthenticated_per_source} of them per source address
    (IPv6 sources by /64): the next one is closed at accept, before any
    TLS work;
  - at most C{max_unauthenticated} in total, never more than half the
    open-file limit: a new one past it evicts the oldest, so idle
    connections cannot keep an edge from getting in;
  - enrollment codes that fail from one source lock that source out of
    enrolling for a while (the operator API's throttle, keyed by source).

A welcomed session leaves these counts at once: authenticated edges never
compete with strangers.  Refusals are counted in metrics and logged as one
C{control.refusals} line per interval with a count per reason, never one
line per attempt; the same goes for malformed reports from edges
(C{client.stats_report_invalid}).

Nothing here touches sockets: the session tells its L{Ticket} what happened
and gives it a way to abort; time comes from the clock.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from portunus.bounds import (
    CONTROL_HANDSHAKE_TIMEOUT_SECS,
    CONTROL_HELLO_TIMEOUT_SECS,
    CONTROL_MAX_UNAUTHENTICATED,
    CONTROL_MAX_UNAUTHENTICATED_PER_SOURCE,
)
from portunus.errors import PortunusError
from portunus.server.auth.throttle import Attempt, Throttle, source_network

__all__ = [
    "REFUSAL_REASONS",
    "REPORT_INTERVAL_SECS",
    "Gate",
    "GateLimits",
    "GateObserver",
    "Tally",
    "Ticket",
    "fit_to_descriptors",
    "source_of",
]

log = Logger()

#: Why an unauthenticated connection was refused or closed, or an
#: enrollment code refused: the C{reason} label of
#: C{portunus_control_refusals_total} and the keys of C{control.refusals}.
REFUSAL_REASONS: tuple[str, ...] = (
    "per_source_cap",
    "total_cap",
    "handshake_timeout",
    "hello_timeout",
    "oversized_hello",
    "protocol_error",
    "malformed_hello",
    "enrollment_invalid",
    "enrollment_expired",
    "enrollment_used",
    "enrollment_rate_limited",
)

#: Seconds between two C{control.refusals} (or C{client.stats_report_invalid})
#: lines at most; nothing is logged while nothing is refused.
REPORT_INTERVAL_SECS = 10.0

#: Plaintext bytes a connection may send before it is welcomed: a Hello or
#: an Enroll is well under 1 KiB.  Past it the connection is closed
#: (C{oversized_hello}), so one stranger cannot make the server buffer an
#: endless AMP box.
MAX_BYTES_BEFORE_WELCOME = 16 * 1024

#: Longest example kept per reason in a C{control.refusals} line.
_MAX_EXAMPLE_CHARS = 200


@attrs.frozen
class GateLimits:
    """The control port's limits on unauthenticated connections (server.toml keys)."""

    handshake_timeout_secs: float = CONTROL_HANDSHAKE_TIMEOUT_SECS.fallback
    hello_timeout_secs: float = CONTROL_HELLO_TIMEOUT_SECS.fallback
    max_unauthenticated: int = CONTROL_MAX_UNAUTHENTICATED.fallback
    max_unauthenticated_per_source: int = CONTROL_MAX_UNAUTHENTICATED_PER_SOURCE.fallback


def fit_to_descriptors(limits: GateLimits, nofile: int) -> GateLimits:
    """
    C{limits} with the total cap lowered to half the open-file limit
    C{nofile} if it is above it: the other half stays for edges' sessions,
    the operator API, the store and the logs.  Logs
    C{control.unauthenticated_cap_lowered} when it lowers it.
    """
    ceiling = max(1, nofile // 2)
    if limits.max_unauthenticated <= ceiling:
        return limits
    log.warn(
        "max_unauthenticated {configured} is more than half the open-file limit "
        "{nofile}; using {effective}: raise LimitNOFILE (systemd) or ulimit -n to "
        "allow more",
        event="control.unauthenticated_cap_lowered",
        configured=limits.max_unauthenticated,
        effective=ceiling,
        nofile=nofile,
    )
    return attrs.evolve(
        limits,
        max_unauthenticated=ceiling,
        max_unauthenticated_per_source=min(limits.max_unauthenticated_per_source, ceiling),
    )


def source_of(address: object) -> str:
    """
    The source a connection from C{address} counts against: its IP address,
    an IPv4-mapped IPv6 address as IPv4, any other IPv6 address as its /64
    (one host usually holds a whole /64).
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str) or not host:
        return "unknown"
    return source_network(host) or "unknown"


def _printable(text: str) -> str:
    """Peer-chosen text made safe for one log field."""
    safe = "".join(c if c.isprintable() else "?" for c in text)
    if len(safe) > _MAX_EXAMPLE_CHARS:
        safe = safe[: _MAX_EXAMPLE_CHARS - 3] + "..."
    return safe


class Tally:
    """
    Counts events by key and hands the counts to C{emit} at most once per
    C{interval}: the first event schedules the report, later ones within
    the interval only add to it.  Keeps the first example of each key.
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        emit: Callable[[Mapping[str, int], Mapping[str, str], float], None],
        max_keys: int = 1000,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._emit = emit
        self._max_keys = max_keys
        self._counts: Counter[str] = Counter()
        self._examples: dict[str, str] = {}
        self._call: IDelayedCall | None = None
        self._since = 0.0

    def add(self, key: str, example: str = "") -> None:
        if key not in self._counts and len(self._counts) >= self._max_keys:
            key = "other"
        if not self._counts:
            self._since = self._clock.seconds()
        self._counts[key] += 1
        if example and key not in self._examples:
            self._examples[key] = _printable(example)
        if self._call is None:
            self._call = self._clock.callLater(self._interval, self.flush)

    def flush(self) -> None:
        """Report what was counted (if anything) now, and start over."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if not self._counts:
            return
        counts, examples = dict(self._counts), dict(self._examples)
        self._counts.clear()
        self._examples.clear()
        self._emit(counts, examples, self._clock.seconds() - self._since)


class GateObserver(Protocol):
    """Where the gate's counts go (the server's metrics)."""

    def control_refused(self, reason: str) -> None:
        """One refusal, by a reason from L{REFUSAL_REASONS}."""

    def unauthenticated_connections(self, count: int) -> None:
        """How many unauthenticated connections are held now."""

    def edge_report_ignored(self) -> None:
        """A malformed report from an authenticated edge was dropped."""


class _NoObserver:
    def control_refused(self, reason: str) -> None:
        pass

    def unauthenticated_connections(self, count: int) -> None:
        pass

    def edge_report_ignored(self) -> None:
        pass


def _log_refusals(counts: Mapping[str, int], examples: Mapping[str, str], secs: float) -> None:
    total = sum(counts.values())
    log.warn(
        "refused {total} unauthenticated control connection(s) or enrollment(s) in "
        "{secs:.0f}s: {summary}",
        event="control.refusals",
        total=total,
        secs=secs,
        counts=dict(counts),
        examples=dict(examples),
        summary=", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())),
    )


def _log_ignored_reports(
    counts: Mapping[str, int], examples: Mapping[str, str], secs: float
) -> None:
    log.warn(
        "ignored {total} malformed stats report(s) in {secs:.0f}s from {clients}",
        event="client.stats_report_invalid",
        total=sum(counts.values()),
        secs=secs,
        counts=dict(counts),
        problems=dict(examples),
        clients=", ".join(sorted(counts)),
    )


class Gate(Service):
    """
    The control port's admission: counts, caps, deadlines and the
    enrollment throttle, on C{clock}.  A service only so that stopping
    the server logs what is still counted.
    """

    def __init__(
        self,
        limits: GateLimits,
        clock: IReactorTime,
        observer: GateObserver | None = None,
        report_interval: float = REPORT_INTERVAL_SECS,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.observer: GateObserver = observer if observer is not None else _NoObserver()
        # Oldest first: the total cap evicts from the front.
        self._open: OrderedDict[Ticket, None] = OrderedDict()
        self._per_source: Counter[str] = Counter()
        self._enrollments = Throttle(clock)
        self._refusals = Tally(clock, report_interval, _log_refusals)
        self._bad_reports = Tally(clock, report_interval, _log_ignored_reports)

    def __len__(self) -> int:
        """Unauthenticated connections held now."""
        return len(self._open)

    def from_source(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def admit(self, address: object) -> Ticket | None:
        """
        A ticket for a new connection from C{address}, or C{None} (close it
        now) when its source is at its cap.  At the total cap the oldest
        unauthenticated connection is closed to make room.
        """
        source = source_of(address)
        if self._per_source[source] >= self.limits.max_unauthenticated_per_source:
            self.refused("per_source_cap", source)
            return None
        while len(self._open) >= self.limits.max_unauthenticated:
            oldest = next(iter(self._open))
            oldest.refuse("total_cap")
        ticket = Ticket(self, source)
        self._open[ticket] = None
        self._per_source[source] += 1
        self.observer.unauthenticated_connections(len(self._open))
        return ticket

    def release(self, ticket: Ticket) -> None:
        """C{ticket}'s connection is welcomed or gone: it no longer counts."""
        if ticket in self._open:
            del self._open[ticket]
            self._per_source[ticket.source] -= 1
            if self._per_source[ticket.source] <= 0:
                del self._per_source[ticket.source]
            self.observer.unauthenticated_connections(len(self._open))

    def refused(self, reason: str, source: str, detail: str = "") -> None:
        """Count one refusal (metrics now, the log line within the interval)."""
        self.observer.control_refused(reason)
        self._refusals.add(reason, f"{source}: {detail}" if detail else source)

    def report_ignored(self, client: str, problem: str) -> None:
        """A malformed report from the authenticated edge C{client} was dropped."""
        self.observer.edge_report_ignored()
        self._bad_reports.add(client, problem)

    # -- enrollment throttle ----------------------------------------------

    def enrollment_attempt(self, source: str) -> Attempt | None:
        """
        Reserve one enrollment code guess from C{source} (decide it with
        the attempt's C{failed}/C{succeeded}), or C{None} while the source
        is locked out or has enough guesses in flight to reach the lock.
        """
        try:
            return self._enrollments.attempt("enroll", "-", source)
        except PortunusError:
            return None

    def stopService(self) -> Deferred[None] | None:
        self._refusals.flush()
        self._bad_reports.flush()
        return super().stopService()


class Ticket:
    """
    One connection's place at the gate, from accept until it is welcomed
    or gone.  Its session reports each step; the ticket runs the deadline
    of the step the connection is in and aborts the connection when it
    passes.
    """

    __slots__ = ("_abort", "_enrolling", "_gate", "_timer", "open", "source")

    def __init__(self, gate: Gate, source: str) -> None:
        self._gate = gate
        self.source = source
        self._abort: Callable[[], object] | None = None
        self._timer: IDelayedCall | None = None
        #: Enrollment guesses reserved and not yet decided, oldest first.
        self._enrolling: list[Attempt] = []
        #: Still counted as unauthenticated.
        self.open = True

    def started(self, abort: Callable[[], object]) -> None:
        """TCP is up (C{abort} tears it down): the handshake deadline starts."""
        self._abort = abort
        if not self.open:  # evicted before its connection started
            abort()
            return
        self._arm(self._gate.limits.handshake_timeout_secs, "handshake_timeout")

    def tls_ready(self) -> None:
        """The TLS handshake is done: the Hello deadline starts."""
        if self.open:
            self._arm(self._gate.limits.hello_timeout_secs, "hello_timeout")

    def welcomed(self) -> None:
        """Hello succeeded: no more deadlines, no longer counted."""
        self._end()

    def ended(self) -> None:
        """The connection is gone."""
        self._end()

    def refuse(self, reason: str, detail: str = "") -> None:
        """Count C{reason} and abort the connection now (if still unauthenticated)."""
        if not self.open:
            return
        self._end()
        self._gate.refused(reason, self.source, detail)
        if self._abort is not None:
            self._abort()

    def note(self, reason: str, detail: str = "") -> None:
        """Count C{reason}; the session closes the connection itself after answering."""
        self._gate.refused(reason, self.source, detail)

    def enrollment_allowed(self) -> bool:
        """Reserve an enrollment guess for this connection, if the throttle lets it."""
        attempt = self._gate.enrollment_attempt(self.source)
        if attempt is None:
            return False
        self._enrolling.append(attempt)
        return True

    def enrollment_failed(self) -> None:
        if self._enrolling:
            self._enrolling.pop(0).failed()

    def enrollment_succeeded(self) -> None:
        if self._enrolling:
            self._enrolling.pop(0).succeeded()

    def report_ignored(self, client: str, problem: str) -> None:
        self._gate.report_ignored(client, problem)

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = self._gate.clock.callLater(seconds, self.refuse, reason)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _end(self) -> None:
        self._disarm()
        # Guesses never decided (the redemption failed otherwise) free their place.
        while self._enrolling:
            self._enrolling.pop().release()
        if self.open:
            self.open = False
            self._gate.release(self)
