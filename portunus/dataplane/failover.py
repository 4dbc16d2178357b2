"""
Which target a new connection tries first, and how targets' health is known.

A L{TargetSelector} holds the health of one rule's targets and orders them
for each connection (L{TargetSelector.dial_order}).  Health comes from the
connections themselves (passive: the relay reports each dial's outcome) and,
optionally, from an L{ActiveProber} that TCP-connects to every target on a
timer.  Both feed one state machine per target::

    HEALTHY --(3 consecutive failures within the window)--> FAILED
    FAILED  --(2 consecutive successes)-------------------> HEALTHY

The order is: the target the rule's C{balance} picks among the healthy
targets of the best priority that has any, then every other target in
priority order, so a connection still tries everything before giving up.
With every target failed the order is plain priority order: a failed target
is only believed to be down, and trying it is how it comes back.

Health is ephemeral: a restart, or a rule replaced, starts every target
healthy.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from portunus.model import Balance, Rule, Target
from portunus.reactors import IDataplaneReactor

__all__ = [
    "FAILURES_TO_FAIL",
    "FAILURE_WINDOW_SECS",
    "PROBE_TIMEOUT_SECS",
    "SUCCESSES_TO_RECOVER",
    "ActiveProber",
    "Health",
    "ProbeConnect",
    "TargetSelector",
    "tcp_probe",
]

log = Logger()

#: Consecutive failures, all within L{FAILURE_WINDOW_SECS}, that mark a
#: healthy target failed.
FAILURES_TO_FAIL = 3
#: Older failures do not count towards L{FAILURES_TO_FAIL}.
FAILURE_WINDOW_SECS = 30.0
#: Consecutive successes that mark a failed target healthy again.
SUCCESSES_TO_RECOVER = 2
#: How long an active probe waits for the TCP handshake.
PROBE_TIMEOUT_SECS = 5.0

#: Opens a TCP connection to (host, port) within a timeout, closes it, and
#: fires with C{None}; errbacks when the connection fails.  Cancelling the
#: L{Deferred} abandons the attempt.
ProbeConnect = Callable[[str, int, float], "Deferred[None]"]


class Health(enum.Enum):
    HEALTHY = "healthy"
    FAILED = "failed"


class _TargetState:
    """The health and counters of one target; updated on every connection."""

    __slots__ = (
        "active_connections",
        "bytes_in",
        "bytes_out",
        "consecutive_failures",
        "consecutive_successes",
        "current_weight",
        "health",
        "index",
        "last_failure_at",
        "last_success_at",
        "recent_failures",
        "target",
        "total_connections",
    )

    def __init__(self, target: Target, index: int) -> None:
        self.target = target
        #: Position in the rule's config, for snapshots.
        self.index = index
        self.health = Health.HEALTHY
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        #: When the failures of the current streak happened (the last few).
        self.recent_failures: deque[float] = deque(maxlen=FAILURES_TO_FAIL)
        self.last_success_at: float | None = None
        self.last_failure_at: float | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.active_connections = 0
        self.total_connections = 0
        #: Smooth weighted round-robin credit (C{Balance.WEIGHTED}).
        self.current_weight = 0


def _failure_window(rule: Rule, probe_timeout: float) -> float:
    """
    The window three failures must fit in.  Active probes alone take two
    intervals (plus a timeout) to fail three times, so a rule probed less
    often than every ~12 s gets a window wide enough for them to count.
    """
    interval = rule.health_check_interval_secs
    if not interval:
        return FAILURE_WINDOW_SECS
    return max(FAILURE_WINDOW_SECS, 2 * interval + probe_timeout)


def _hrw_score(client_host: str, target: Target) -> int:
    """Rendezvous (highest random weight) score of C{target} for a client."""
    key = f"{client_host}\0{target.host}\0{target.ports.start}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


class TargetSelector:
    """The targets of one rule: their health, stats and dial order."""

    def __init__(
        self,
        rule: Rule,
        clock: IReactorTime,
        failure_window: float | None = None,
    ) -> None:
        """
        @param failure_window: seconds three failures must fit in to fail a
            target; by default 30 s, widened for rules probed rarely.
        """
        self.rule = rule
        self._clock = clock
        self._window = (
            failure_window
            if failure_window is not None
            else _failure_window(rule, PROBE_TIMEOUT_SECS)
        )
        self._states: dict[Target, _TargetState] = {}
        for index, target in enumerate(rule.targets):
            self._states.setdefault(target, _TargetState(target, index))
        #: Distinct targets, lower priority first, ties in config order.
        self._by_priority: tuple[_TargetState, ...] = tuple(
            sorted(self._states.values(), key=lambda s: (s.target.priority, s.index))
        )
        self._rr_next = 0
        self._wrr_tier: tuple[_TargetState, ...] = ()
        #: Healthy <-> failed transitions over the rule's life.
        self.failovers_total = 0
        #: Connections for which every target failed.
        self.all_failed_total = 0

    @property
    def targets(self) -> tuple[Target, ...]:
        """The distinct targets in priority order."""
        return tuple(s.target for s in self._by_priority)

    # -- ordering ---------------------------------------------------------

    def dial_order(self, client_host: str | None = None) -> list[Target]:
        """
        The targets a new connection from C{client_host} tries, in order.
        Every target is in the list exactly once.
        """
        ordered = self._by_priority
        if len(ordered) == 1:
            return [ordered[0].target]
        first_healthy = next((s for s in ordered if s.health is Health.HEALTHY), None)
        if first_healthy is None:
            return [s.target for s in ordered]
        balance = self.rule.balance
        if balance is Balance.FAILOVER:
            pick = first_healthy
        else:
            tier = tuple(
                s
                for s in ordered
                if s.health is Health.HEALTHY and s.target.priority == first_healthy.target.priority
            )
            pick = self._pick(balance, tier, client_host)
        return [pick.target, *(s.target for s in ordered if s is not pick)]

    def _pick(
        self, balance: Balance, tier: tuple[_TargetState, ...], client_host: str | None
    ) -> _TargetState:
        if len(tier) == 1:
            return tier[0]
        if balance is Balance.ROUND_ROBIN:
            pick = tier[self._rr_next % len(tier)]
            self._rr_next += 1
            return pick
        if balance is Balance.WEIGHTED:
            return self._smooth_weighted(tier)
        if balance is Balance.SOURCE_HASH and client_host is not None:
            return max(tier, key=lambda s: _hrw_score(client_host, s.target))
        return tier[0]

    def _smooth_weighted(self, tier: tuple[_TargetState, ...]) -> _TargetState:
        """
        nginx's smooth weighted round-robin: exact proportions over every
        sum-of-weights picks, interleaved rather than in bursts, and no
        randomness.  Credits restart when the set of candidates changes.
        """
        if tier != self._wrr_tier:
            self._wrr_tier = tier
            for state in tier:
                state.current_weight = 0
        total = 0
        best = tier[0]
        for state in tier:
            state.current_weight += state.target.weight
            total += state.target.weight
            if state.current_weight > best.current_weight:
                best = state
        best.current_weight -= total
        return best

    # -- health -----------------------------------------------------------

    def health(self, target: Target) -> Health:
        return self._states[target].health

    def record_success(self, target: Target) -> None:
        """A dial (or probe) of C{target} connected."""
        state = self._states[target]
        state.last_success_at = self._clock.seconds()
        state.consecutive_failures = 0
        state.recent_failures.clear()
        state.consecutive_successes += 1
        if state.health is Health.FAILED and state.consecutive_successes >= SUCCESSES_TO_RECOVER:
            self._transition(state, Health.HEALTHY)

    def record_failure(self, target: Target) -> None:
        """A dial (or probe) of C{target} failed: refused, timed out, unresolved."""
        state = self._states[target]
        now = self._clock.seconds()
        state.last_failure_at = now
        state.consecutive_successes = 0
        state.consecutive_failures += 1
        failures = state.recent_failures
        failures.append(now)
        if (
            state.health is Health.HEALTHY
            and len(failures) >= FAILURES_TO_FAIL
            and now - failures[0] <= self._window
        ):
            self._transition(state, Health.FAILED)

    def _transition(self, state: _TargetState, to: Health) -> None:
        old, state.health = state.health, to
        self.failovers_total += 1
        emit = log.warn if to is Health.FAILED else log.info
        emit(
            "rule {rule}: target {target} is now {to} (was {from})",
            event="rule.target.health_changed",
            rule=self.rule.name,
            target=state.target.display(),
            **{"from": old.value, "to": to.value},
        )

    def record_all_failed(self, listen_port: int) -> None:
        """Every target failed for one connection on C{listen_port}."""
        self.all_failed_total += 1
        log.warn(
            "rule {rule}: every target failed for a connection on port {listen_port}",
            event="rule.conn_error_all_targets_failed",
            rule=self.rule.name,
            listen_port=listen_port,
            targets=len(self._by_priority),
        )

    # -- counters ---------------------------------------------------------

    def add_bytes(self, target: Target, bytes_in: int, bytes_out: int) -> None:
        state = self._states[target]
        state.bytes_in += bytes_in
        state.bytes_out += bytes_out

    def connection_opened(self, target: Target) -> None:
        state = self._states[target]
        state.active_connections += 1
        state.total_connections += 1

    def connection_closed(self, target: Target) -> None:
        self._states[target].active_connections -= 1

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-target stats, in config order."""
        return [
            {
                "host": s.target.host,
                "port": s.target.ports.start,
                "target": s.target.display(),
                "priority": s.target.priority,
                "weight": s.target.weight,
                "health": s.health.value,
                "consecutive_failures": s.consecutive_failures,
                "last_success_at": s.last_success_at,
                "last_failure_at": s.last_failure_at,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
                "active_connections": s.active_connections,
                "total_connections": s.total_connections,
            }
            for s in sorted(self._states.values(), key=lambda s: s.index)
        ]


# -- active probes --------------------------------------------------------


class _ProbeProtocol(Protocol):
    def connectionMade(self) -> None:
        factory = self.factory
        assert isinstance(factory, _ProbeFactory) and self.transport is not None
        self.transport.loseConnection()
        factory.succeeded()


class _ProbeFactory(ClientFactory):
    """Connects once; the outcome fires C{done} (at most once)."""

    noisy = False
    protocol = _ProbeProtocol

    def __init__(self) -> None:
        self.connector: Any = None
        self.done: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[None]) -> None:
        try:
            self.connector.stopConnecting()
        except net_error.NotConnectingError:
            self.connector.disconnect()

    def succeeded(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)


def tcp_probe(reactor: IReactorTCP) -> ProbeConnect:
    """The default probe: a TCP handshake through C{reactor.connectTCP}."""

    def connect(host: str, port: int, timeout: float) -> Deferred[None]:
        factory = _ProbeFactory()
        factory.connector = reactor.connectTCP(host, port, factory, timeout=timeout)
        return factory.done

    return connect


class ActiveProber:
    """
    Checks each target of a rule with a TCP connect every C{interval}
    seconds and reports the outcome to the rule's L{TargetSelector}, so a
    dead target is noticed (and a revived one trusted again) without
    spending client connections on it.
    """

    def __init__(
        self,
        reactor: IDataplaneReactor,
        selector: TargetSelector,
        interval: float,
        timeout: float = PROBE_TIMEOUT_SECS,
        connect: ProbeConnect | None = None,
    ) -> None:
        """
        @param reactor: an C{IReactorTime} (and C{IReactorTCP} unless
            C{connect} is given).
        @param connect: opens one probe connection; by default L{tcp_probe}.
        """
        self._reactor = reactor
        self.selector = selector
        self.interval = interval
        self.timeout = timeout
        self._connect = connect if connect is not None else tcp_probe(reactor)
        self._loop: LoopingCall | None = None
        self._in_flight: dict[Target, Deferred[None]] = {}

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        """Probe every target now, then every C{interval} seconds."""
        if self._loop is not None:
            return
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Stop probing; probes in flight are abandoned and not counted."""
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        in_flight, self._in_flight = self._in_flight, {}
        for probe in in_flight.values():
            probe.cancel()

    def _tick(self) -> None:
        # Not returning the probes: LoopingCall would wait for the slowest
        # target, and one black-holed target would slow every other's probes.
        self.probe_once()

    def probe_once(self) -> Deferred[None]:
        """
        Probe every target not already being probed; fires once those
        probes have all finished (never fails).
        """
        started = [self._probe(t) for t in self.selector.targets if t not in self._in_flight]
        done: Deferred[None] = DeferredList(started).addCallback(lambda _: None)
        return done

    def _probe(self, target: Target) -> Deferred[None]:
        port = target.ports.start
        probe = self._connect(target.host, port, self.timeout)
        self._in_flight[target] = probe
        probe.addTimeout(self.timeout, self._reactor)
        probe.addBoth(self._finished, target, port, probe)
        return probe

    def _finished(
        self, result: Failure | None, target: Target, port: int, probe: Deferred[None]
    ) -> None:
        if self._in_flight.get(target) is not probe:
            # Abandoned by stop().
            return
        del self._in_flight[target]
        fields: dict[str, Any] = {
            "rule": self.selector.rule.name,
            "target": target.display(),
            "port": port,
        }
        if not isinstance(result, Failure):
            log.debug(
                "rule {rule}: probe of {target} succeeded", event="rule.target.probe_ok", **fields
            )
            self.selector.record_success(target)
            return
        if result.check(CancelledError):
            return
        if result.check(DeferredTimeoutError, net_error.TimeoutError):
            log.info(
                "rule {rule}: probe of {target} timed out after {timeout}s",
                event="rule.target.probe_timeout",
                timeout=self.timeout,
                **fields,
            )
        else:
            log.info(
                "rule {rule}: probe of {target} failed: {reason}",
                event="rule.target.probe_failed",
                reason=result.getErrorMessage(),
                **fields,
            )
        self.selector.record_failure(target)
