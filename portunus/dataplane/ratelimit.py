"""
Rate limits: bandwidth caps, connection caps, and the token buckets behind
them.

Everything here runs on an injected clock (L{IReactorTime}), so tests move
time with L{twisted.internet.task.Clock} and nothing sleeps.

Bandwidth is in B{bytes} per second, as in Portunus.  A cap never closes a
connection and never busy-loops: after a chunk is relayed, its bytes are
taken from the bucket, and if the bucket went into deficit the side that
produced the chunk stops being read until the deficit is repaid.

Pausing a transport for a throttle must not fight back-pressure, which
pauses and resumes the very same transport (the relay registers each socket
as the streaming producer of the other).  A L{PauseGate} therefore stands
between the transport and everything that pauses it; it resumes the
transport only once no pause reason is left.  The relay registers the
gate's L{PauseGate.producer} with the peer transport instead of the raw
transport, and a L{Throttle} pauses the same gate under its own reason::

    gate_in = PauseGate(client_transport, paused_by=[PauseReason.RELAY])
    target_transport.registerProducer(gate_in.producer, True)
    throttle_in = limiter.throttle_in(gate_in)     # None when uncapped
    ...
    target_transport.write(data)
    if throttle_in is not None:
        throttle_in.consumed(len(data))
    ...
    throttle_in.stop()                             # when the connection ends

Connection caps are checked at accept by L{RuleLimiter.admit}; several
limiters (an owner's envelope, then the rule's own) stack in an
L{AdmissionChain}.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from portunus.bounds import (
    RATE_LIMIT_BURST_MAX_FACTOR,
    RATE_LIMIT_BURST_MIN_DIVISOR,
    burst_range,
)
from portunus.model import RateLimit

__all__ = [
    "OWNER_TCP_REASONS",
    "OWNER_UDP_REASONS",
    "RULE_TCP_REASONS",
    "RULE_UDP_REASONS",
    "AdmissionChain",
    "AdmissionReasons",
    "Admitter",
    "DatagramBudget",
    "PauseGate",
    "PauseReason",
    "RateLimitStats",
    "RuleLimiter",
    "Throttle",
    "TokenBucket",
    "burst_range",
    "chunk_size_for",
    "validate_rate_limit",
]

#: A resume timer that fires with less than this many seconds of deficit
#: left resumes anyway: the remainder is float rounding of the clock.
_RESUME_TOLERANCE = 1e-4

#: A relay reads at most this much per chunk when capped (and at least
#: L{_MIN_CHUNK}): about 100 ms of the cap, so pacing stays smooth.
_MAX_CHUNK = 64 * 1024
_MIN_CHUNK = 8 * 1024


class TokenBucket:
    """
    A lazily refilled token bucket: C{rate} tokens per second, holding at
    most C{burst}.  It starts full.

    The balance may go negative (L{take}): a relay learns a chunk's size only
    after reading it, so it pays afterwards and then waits out the debt.
    """

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(self, clock: IReactorTime, rate: float, burst: float) -> None:
        _check_rate_and_burst(rate, burst)
        self._clock = clock
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = self._burst
        self._last = clock.seconds()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def tokens(self) -> float:
        """The balance now (negative while in deficit)."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock.seconds()
        elapsed = now - self._last
        self._last = now
        # A clock that steps back grants nothing.
        if elapsed > 0 and self._tokens < self._burst:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)

    def take(self, n: float) -> float:
        """
        Consume C{n} tokens even if that overdraws the bucket; return the
        seconds until the balance is back to zero (0.0 if it did not go
        negative).  C{take(0)} just asks how long the current debt lasts.
        """
        self._refill()
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._rate

    def try_take(self, n: float) -> bool:
        """Consume C{n} tokens only if the bucket holds that many."""
        self._refill()
        if self._tokens < n:
            return False
        self._tokens -= n
        return True

    def refund(self, n: float) -> None:
        """Give back C{n} tokens taken for something that did not happen."""
        self._refill()
        self._tokens = min(self._burst, self._tokens + n)

    def update(self, rate: float, burst: float) -> None:
        """
        Change the rate and burst in place.  Tokens earned so far are kept,
        clamped to the new burst: lowering and raising a limit again never
        hands out a free burst.  A debt stays a debt.
        """
        _check_rate_and_burst(rate, burst)
        self._refill()
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = min(self._tokens, self._burst)

    def __repr__(self) -> str:
        return f"<TokenBucket rate={self._rate:g}/s burst={self._burst:g}>"


def _check_rate_and_burst(rate: float, burst: float) -> None:
    if not rate > 0:
        raise ValueError(f"a token bucket needs a positive rate, got {rate!r}")
    if not burst > 0:
        raise ValueError(f"a token bucket needs a positive burst, got {burst!r}")


def chunk_size_for(rate: float) -> int:
    """
    How many bytes a capped relay should read at a time: about 100 ms of
    C{rate}, between 8 KiB and 64 KiB (Portunus).  A relay may set this as
    the transport's C{bufferSize}; pacing is correct either way, smaller
    reads only make it smoother.
    """
    return max(_MIN_CHUNK, min(_MAX_CHUNK, int(rate / 10)))


# -- validation -----------------------------------------------------------

#: (rate field, burst field or None) for every limit of a L{RateLimit}.
_LIMITS: tuple[tuple[str, str | None], ...] = (
    ("bandwidth_in_bps", "bandwidth_in_burst"),
    ("bandwidth_out_bps", "bandwidth_out_burst"),
    ("new_connections_per_sec", "new_connections_burst"),
    ("concurrent_connections", None),
)


def validate_rate_limit(limit: RateLimit) -> list[tuple[str, str, str]]:
    """
    Every problem with C{limit}, as (field, code, message) with Portunus's
    codes; an empty list means it is valid.
    """
    issues: list[tuple[str, str, str]] = []
    for rate_field, burst_field in _LIMITS:
        rate: int | None = getattr(limit, rate_field)
        if rate is not None and rate <= 0:
            issues.append(
                (
                    rate_field,
                    "validation.rate_limit_cap_zero",
                    f"{rate_field} must be at least 1 (got {rate}); leave it out for no limit",
                )
            )
        if burst_field is None:
            continue
        burst: int | None = getattr(limit, burst_field)
        if burst is None:
            continue
        if rate is None:
            issues.append(
                (
                    burst_field,
                    "validation.rate_limit_burst_without_rate",
                    f"{burst_field} needs {rate_field}: a burst only applies to a rate",
                )
            )
        elif rate > 0:
            low, high = burst_range(rate)
            if not low <= burst <= high:
                issues.append(
                    (
                        burst_field,
                        "validation.rate_limit_burst_range",
                        f"{burst_field} must be between {low} and {high} "
                        f"(1/{RATE_LIMIT_BURST_MIN_DIVISOR} to {RATE_LIMIT_BURST_MAX_FACTOR} x "
                        f"{rate_field} = {rate}), got {burst}",
                    )
                )
    return issues


# -- pausing --------------------------------------------------------------


class PauseReason(enum.Enum):
    """Why a gate holds its producer paused."""

    #: The relay's own hold: no target connected yet, a prelude in flight.
    RELAY = "relay"
    #: The peer's write buffer is full (Twisted paused its producer).
    BACKPRESSURE = "backpressure"
    #: A bandwidth cap is in deficit.
    THROTTLE = "throttle"


class PauseGate:
    """
    Pauses one producer (a transport) for any number of reasons at once and
    resumes it only when the last reason is gone.

    Back-pressure and a bandwidth throttle both pause the reading side of a
    relay; without the gate, a throttle timer resuming the transport would
    undo a back-pressure pause (and the peer's buffer would grow without
    bound), or a drained buffer would end a throttle early.  So nothing
    calls the transport's pause/resume directly: back-pressure goes through
    L{producer} (register it with the peer transport in place of the raw
    transport), a throttle through L{pause}/L{resume} with its own reason.

    Reasons are any hashable values; L{PauseReason} has the usual ones.  Two
    throttles on one gate (an owner's envelope and the rule's cap) must use
    different reasons.
    """

    __slots__ = ("_reasons", "_target", "producer")

    def __init__(self, producer: IPushProducer, paused_by: Iterable[Hashable] = ()) -> None:
        """
        @param producer: the transport to pause and resume.
        @param paused_by: reasons the gate starts paused for; if there are
            any, C{producer} is paused now (pausing a transport that is
            already paused is harmless).
        """
        self._target = producer
        self._reasons: set[Hashable] = set(paused_by)
        #: What to register as the peer transport's streaming producer.
        self.producer: IPushProducer = _GatedProducer(self)
        if self._reasons:
            producer.pauseProducing()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    @property
    def reasons(self) -> frozenset[Hashable]:
        return frozenset(self._reasons)

    def pause(self, reason: Hashable) -> None:
        """Hold the producer for C{reason} (idempotent per reason)."""
        if not self._reasons:
            self._target.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: Hashable) -> None:
        """Drop C{reason}; resume the producer if it was the last one."""
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self._target.resumeProducing()

    def stop(self) -> None:
        self._target.stopProducing()


@implementer(IPushProducer)
class _GatedProducer:
    """The face of a L{PauseGate} that a consumer sees: back-pressure only."""

    __slots__ = ("_gate",)

    def __init__(self, gate: PauseGate) -> None:
        self._gate = gate

    def pauseProducing(self) -> None:
        self._gate.pause(PauseReason.BACKPRESSURE)

    def resumeProducing(self) -> None:
        self._gate.resume(PauseReason.BACKPRESSURE)

    def stopProducing(self) -> None:
        self._gate.stop()


class Throttle:
    """
    Paces one direction of one connection against a (shared) bandwidth
    bucket.

    The relay calls L{consumed} after relaying each chunk.  If that puts the
    bucket in deficit, C{pause} is called and one timer is set for when the
    deficit is repaid; then C{resume} is called and C{on_throttled} gets the
    seconds spent paused.  Bytes that still arrive while paused (already
    read) deepen the deficit, and the timer waits longer.  Nothing is ever
    dropped or closed.

    Use L{for_gate} so the pause combines with back-pressure instead of
    overriding it (see L{PauseGate}).
    """

    __slots__ = (
        "_bucket",
        "_clock",
        "_on_throttled",
        "_pause",
        "_paused_at",
        "_resume",
        "_stopped",
        "_timer",
    )

    def __init__(
        self,
        clock: IReactorTime,
        bucket: TokenBucket,
        pause: Callable[[], None],
        resume: Callable[[], None],
        on_throttled: Callable[[float], None],
    ) -> None:
        self._clock = clock
        self._bucket = bucket
        self._pause = pause
        self._resume = resume
        self._on_throttled = on_throttled
        self._timer: IDelayedCall | None = None
        self._paused_at = 0.0
        self._stopped = False

    @classmethod
    def for_gate(
        cls,
        clock: IReactorTime,
        bucket: TokenBucket,
        gate: PauseGate,
        on_throttled: Callable[[float], None],
        reason: Hashable = PauseReason.THROTTLE,
    ) -> Throttle:
        """A throttle that pauses C{gate} under C{reason}."""
        return cls(
            clock,
            bucket,
            lambda: gate.pause(reason),
            lambda: gate.resume(reason),
            on_throttled,
        )

    @property
    def throttled(self) -> bool:
        """Whether this throttle holds its side paused now."""
        return self._timer is not None

    def consumed(self, n: int) -> None:
        """C{n} bytes were just relayed in this direction."""
        if self._stopped:
            return
        wait = self._bucket.take(n)
        if wait <= 0 or self._timer is not None:
            return
        self._paused_at = self._clock.seconds()
        self._pause()
        self._timer = self._clock.callLater(wait, self._repaid)

    def _repaid(self) -> None:
        assert self._timer is not None
        # The pause lasted until the debt was repaid, the time the timer was
        # set for (a busy reactor runs it a little later, a test clock much).
        repaid_at = self._timer.getTime()
        # The rate may have been lowered, or more bytes arrived, meanwhile.
        wait = self._bucket.take(0)
        if wait > _RESUME_TOLERANCE:
            self._timer = self._clock.callLater(wait, self._repaid)
            return
        self._timer = None
        self._on_throttled(repaid_at - self._paused_at)
        self._resume()

    def stop(self) -> None:
        """
        The connection is ending: cancel the timer, count the time paused so
        far, and never resume.
        """
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._on_throttled(self._clock.seconds() - self._paused_at)


# -- admission ------------------------------------------------------------


@attrs.frozen
class AdmissionReasons:
    """The refusal reasons a limiter reports; they differ by layer and protocol."""

    concurrent: str
    rate: str


RULE_TCP_REASONS = AdmissionReasons("conn_concurrent", "conn_rate")
RULE_UDP_REASONS = AdmissionReasons("conn_concurrent", "udp_flow_rate")
OWNER_TCP_REASONS = AdmissionReasons("owner_concurrent", "owner_conn_rate")
OWNER_UDP_REASONS = AdmissionReasons("owner_concurrent", "owner_udp_flow_rate")


class Admitter(Protocol):
    """Anything that admits connections: a L{RuleLimiter} or a chain of them."""

    def admit(self) -> str | None:
        """Admit one connection (C{None}) or say why not (a reason)."""

    def release(self) -> None:
        """An admitted connection ended."""

    def cancel(self) -> None:
        """Undo the last admission: the connection never happened."""


@attrs.define
class RateLimitStats:
    """Counters of one limiter."""

    #: Refused connections (or UDP flows) by reason.
    rejects: dict[str, int] = attrs.field(factory=dict)
    #: Seconds connections spent paused by the inbound (client -> target) cap.
    throttle_seconds_in: float = 0.0
    #: Seconds connections spent paused by the outbound (target -> client) cap.
    throttle_seconds_out: float = 0.0
    #: Connections (or UDP flows) admitted and not yet released.
    active: int = 0

    def add_throttle_in(self, seconds: float) -> None:
        self.throttle_seconds_in += seconds

    def add_throttle_out(self, seconds: float) -> None:
        self.throttle_seconds_out += seconds

    def snapshot(self) -> dict[str, object]:
        return attrs.asdict(self)


def _bucket_for(
    clock: IReactorTime,
    bucket: TokenBucket | None,
    rate: int | None,
    burst: int | None,
) -> TokenBucket | None:
    """The bucket for a (possibly changed) limit, keeping a live one's tokens."""
    if rate is None:
        return None
    size = burst if burst is not None else rate
    if bucket is None:
        return TokenBucket(clock, rate, size)
    bucket.update(rate, size)
    return bucket


class RuleLimiter:
    """
    The live limits of one rule (or one owner's envelope).

    Holds the connection-rate and bandwidth buckets and the count of live
    connections.  The bandwidth buckets are shared by every connection of
    the rule, so a cap bounds the rule's total, not each connection.
    """

    __slots__ = (
        "_clock",
        "_concurrent",
        "_connections",
        "_reasons",
        "bandwidth_in",
        "bandwidth_out",
        "limit",
        "stats",
    )

    def __init__(
        self,
        clock: IReactorTime,
        limit: RateLimit | None,
        reasons: AdmissionReasons = RULE_TCP_REASONS,
    ) -> None:
        self._clock = clock
        self._reasons = reasons
        self.stats = RateLimitStats()
        self.limit: RateLimit | None = None
        self._concurrent: int | None = None
        self._connections: TokenBucket | None = None
        #: Client -> target bytes; C{None} when uncapped.
        self.bandwidth_in: TokenBucket | None = None
        #: Target -> client bytes; C{None} when uncapped.
        self.bandwidth_out: TokenBucket | None = None
        self.update(limit)

    @property
    def caps_bandwidth(self) -> bool:
        """New connections need the userspace relay (splice cannot pace)."""
        return self.bandwidth_in is not None or self.bandwidth_out is not None

    def update(self, limit: RateLimit | None) -> None:
        """
        Apply changed limits in place.  Buckets keep their tokens (clamped to
        the new burst); live connections are never cut, a concurrent cap
        below the live count only refuses new ones.  A bandwidth cap that is
        added or removed applies to connections opened from now on: live
        ones keep the bucket (or the splice path) they started with.
        """
        self.limit = limit
        lim = limit if limit is not None else RateLimit()
        self._concurrent = lim.concurrent_connections
        self._connections = _bucket_for(
            self._clock,
            self._connections,
            lim.new_connections_per_sec,
            lim.new_connections_burst,
        )
        self.bandwidth_in = _bucket_for(
            self._clock, self.bandwidth_in, lim.bandwidth_in_bps, lim.bandwidth_in_burst
        )
        self.bandwidth_out = _bucket_for(
            self._clock, self.bandwidth_out, lim.bandwidth_out_bps, lim.bandwidth_out_burst
        )

    def admit(self) -> str | None:
        """
        Admit one new connection, or return why not (the caller closes it
        with a reset).  An admitted connection must be L{release}d.
        """
        if self._concurrent is not None and self.stats.active >= self._concurrent:
            return self._reject(self._reasons.concurrent)
        if self._connections is not None and not self._connections.try_take(1):
            return self._reject(self._reasons.rate)
        self.stats.active += 1
        return None

    def _reject(self, reason: str) -> str:
        self.stats.rejects[reason] = self.stats.rejects.get(reason, 0) + 1
        return reason

    def release(self) -> None:
        if self.stats.active <= 0:
            raise RuntimeError("release() without a matching admit()")
        self.stats.active -= 1

    def cancel(self) -> None:
        """
        Undo an admission whose connection never went ahead (a later layer
        refused it): free the slot and give the rate token back.
        """
        self.release()
        if self._connections is not None:
            self._connections.refund(1)

    def throttle_in(
        self, gate: PauseGate, reason: Hashable = PauseReason.THROTTLE
    ) -> Throttle | None:
        """A throttle for a new connection's client side, or None if uncapped."""
        if self.bandwidth_in is None:
            return None
        return Throttle.for_gate(
            self._clock, self.bandwidth_in, gate, self.stats.add_throttle_in, reason
        )

    def throttle_out(
        self, gate: PauseGate, reason: Hashable = PauseReason.THROTTLE
    ) -> Throttle | None:
        """A throttle for a new connection's target side, or None if uncapped."""
        if self.bandwidth_out is None:
            return None
        return Throttle.for_gate(
            self._clock, self.bandwidth_out, gate, self.stats.add_throttle_out, reason
        )


class AdmissionChain:
    """
    Limiters checked in order (an owner's envelope first, then the rule).
    A refusal by a later layer cancels the admissions the earlier layers
    already granted, so no slot or rate token leaks; the refusal is counted
    only by the layer that refused.
    """

    __slots__ = ("_layers",)

    def __init__(self, limiters: Sequence[Admitter]) -> None:
        self._layers = tuple(limiters)

    def admit(self) -> str | None:
        for i, layer in enumerate(self._layers):
            reason = layer.admit()
            if reason is not None:
                for earlier in reversed(self._layers[:i]):
                    earlier.cancel()
                return reason
        return None

    def release(self) -> None:
        for layer in reversed(self._layers):
            layer.release()

    def cancel(self) -> None:
        for layer in reversed(self._layers):
            layer.cancel()


# -- UDP ------------------------------------------------------------------


class DatagramBudget:
    """
    A bandwidth cap for datagrams: over budget, a datagram is dropped (and
    counted), never queued.  A datagram passes while the bucket holds at
    least its size (or is full, for one bigger than the whole burst); a big
    datagram may overdraw the bucket, and the debt is repaid before the
    next one passes, so the long-run rate holds.
    """

    __slots__ = ("bucket", "dropped", "dropped_bytes")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.dropped = 0
        self.dropped_bytes = 0

    def allow(self, n: int) -> bool:
        """Whether a datagram of C{n} bytes may be sent now (it is paid for)."""
        bucket = self.bucket
        if bucket.tokens >= min(n, bucket.burst):
            bucket.take(n)
            return True
        self.dropped += 1
        self.dropped_bytes += n
        return False
