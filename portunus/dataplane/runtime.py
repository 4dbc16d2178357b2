"""
What every connection of one rule shares.

A L{RuleRuntime} is built when a rule is activated and dropped when it is
removed: its counters, the health of its targets and how the next
connection picks one, its rate limits, the DNS resolver, the zero-copy
policy and the set of live relays (for draining).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from portunus.dataplane.dial import Dialer, dialer_for
from portunus.dataplane.failover import ActiveProber, TargetSelector
from portunus.dataplane.proxyprotocol import TrustedSources
from portunus.dataplane.ratelimit import RuleLimiter
from portunus.dataplane.resolver import TargetResolver
from portunus.dataplane.stats import RuleStats
from portunus.dataplane.tcp import CONNECT_TIMEOUT_SECS, SpliceContext, TcpRelay
from portunus.model import Rule
from portunus.reactors import IDataplaneReactor

__all__ = ["RuleRuntime"]

log = Logger()


class RuleRuntime:
    """The shared, live state of one TCP rule."""

    def __init__(
        self,
        reactor: IDataplaneReactor,
        rule: Rule,
        resolver: TargetResolver | None = None,
        splice: SpliceContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_SECS,
        dialer: Dialer | None = None,
    ) -> None:
        """
        @param dialer: how relays reach targets; by default their own
            sockets on a real reactor, C{connectTCP} on any other.
        """
        self.reactor = reactor
        self.rule = rule
        self.stats = RuleStats()
        self.selector = TargetSelector(rule, reactor)
        self.limiter = RuleLimiter(reactor, rule.rate_limit)
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.dialer = dialer if dialer is not None else dialer_for(reactor)
        self._splice = splice
        self.trusted = (
            TrustedSources.parse(rule.trusted_sources) if rule.accept_proxy_protocol else None
        )
        self.relays: set[TcpRelay] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self._prober: ActiveProber | None = None
        if rule.health_check_interval_secs:
            self._prober = ActiveProber(reactor, self.selector, rule.health_check_interval_secs)

    @property
    def splice(self) -> SpliceContext | None:
        """Zero-copy for a new connection, unless a bandwidth cap must pace it."""
        return None if self.limiter.caps_bandwidth else self._splice

    def start(self) -> None:
        if self._prober is not None:
            self._prober.start()

    def stop(self) -> None:
        if self._prober is not None:
            self._prober.stop()

    def relay_opened(self, relay: TcpRelay) -> None:
        self.relays.add(relay)

    def relay_closed(self, relay: TcpRelay) -> None:
        self.relays.discard(relay)
        if not self.relays:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def active_count(self) -> int:
        return len(self.relays)

    def drain(self, timeout: float) -> Deferred[int]:
        """
        Fire with the number of connections cut when C{timeout} passed (0
        when all finished by themselves).
        """
        self.stop()
        if not self.relays:
            return succeed(0)
        idle: Deferred[None] = Deferred()
        self._idle_waiters.append(idle)
        result: Deferred[int] = Deferred()

        def deadline() -> None:
            # Fire first: aborting the last relay would otherwise report 0.
            result.callback(len(self.relays))
            for relay in list(self.relays):
                relay.abort()

        timer = self.reactor.callLater(timeout, deadline)

        def finished(_: None) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(0)

        idle.addCallback(finished)
        return result
