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

from portunus.addresses import format_host_port
from portunus.dataplane.descriptors import DescriptorBudget
from portunus.dataplane.dial import Dialer, dialer_for
from portunus.dataplane.failover import ActiveProber, TargetSelector
from portunus.dataplane.localaddrs import LocalAddresses
from portunus.dataplane.proxyprotocol import TrustedSources
from portunus.dataplane.ratelimit import RuleLimiter
from portunus.dataplane.resolver import TargetResolver
from portunus.dataplane.selfconnect import DialedSockets
from portunus.dataplane.stats import LogThrottle, RuleStats
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
        budget: DescriptorBudget | None = None,
        dialed: DialedSockets | None = None,
        local: LocalAddresses | None = None,
    ) -> None:
        """
        @param dialer: how relays reach targets; by default their own
            sockets on a real reactor, C{connectTCP} on any other.
        @param budget: the process's per-rule cap and descriptor reserve;
            without one, connections are not capped.
        @param dialed: the process's dialled sockets: the listeners drop
            connections from them, and this rule's dialer adds its own.
        @param local: the host's addresses, which the relays refuse to dial
            when the rule does not allow local targets.
        """
        self.reactor = reactor
        self.rule = rule
        self.stats = RuleStats()
        self.selector = TargetSelector(rule, reactor)
        self.limiter = RuleLimiter(reactor, rule.rate_limit)
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.budget = budget
        self.dialed = dialed
        #: Set when the rule may not reach local addresses.
        self.local_guard = None if rule.allow_local_targets else local
        if dialer is None:
            track = dialed.owned_by(rule.name, self.stats) if dialed is not None else None
            dialer = dialer_for(reactor, track)
        self.dialer = dialer
        self._throttles: dict[str, LogThrottle] = {}
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

    def admit(self, client: str) -> str | None:
        """
        Whether a new connection may take its two descriptors: C{None}, or
        the reason it is refused (counted and logged here).
        """
        budget = self.budget
        if budget is None:
            return None
        if self.stats.active_connections >= budget.per_rule:
            self.stats.conn_cap_rejects += 1
            self._warn(
                "conn_cap",
                "rule {rule} holds {cap} connections (max_conns_per_rule); new ones are "
                "refused ({held} more since the last report)",
                "rule.conn_cap_reached",
                cap=budget.per_rule,
                client=client,
            )
            return "conn_cap"
        if not budget.take(2):
            self.stats.fd_reserve_rejects += 1
            self._warn(
                "fd_reserve",
                "only {reserve} descriptors of {limit} are left (reserve_fds): a new "
                "connection of rule {rule} is refused ({held} more since the last report)",
                "dataplane.fd_reserve_reached",
                reserve=budget.reserve,
                limit=budget.limit,
                client=client,
            )
            return "fd_reserve"
        return None

    def release(self) -> None:
        """An admitted connection closed: its descriptors are free again."""
        if self.budget is not None:
            self.budget.give_back(2)

    def refuse_local(self, address: str, port: int) -> bool:
        """
        Whether C{address} is local and this rule may not dial it; if so
        the refusal is counted and logged.
        """
        guard = self.local_guard
        if guard is None or not guard.is_local(address):
            return False
        self.stats.local_target_refusals += 1
        self._warn(
            "local",
            "rule {rule} may not reach {target}: it is a local address (loopback, "
            "link-local or this host's own) and the rule's grant does not allow local "
            "targets ({held} more since the last report)",
            "rule.target_local_refused",
            target=format_host_port(address, port),
        )
        return True

    def _warn(self, kind: str, text: str, event: str, **fields: object) -> None:
        throttle = self._throttles.get(kind)
        if throttle is None:
            throttle = self._throttles[kind] = LogThrottle()
        held = throttle.allow(self.reactor.seconds())
        if held is not None:
            log.warn(text, event=event, rule=self.rule.name, held=held, **fields)

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
