"""
The Forwarder: the set of rules a process is forwarding right now.

The standalone service and the edge client both drive one Forwarder:
install a rule (bind all of its ports or none), remove it (stop accepting
at once, let in-flight connections finish up to a drain deadline), stop
everything, and read live counters.

TCP rules are served by L{_ActiveRule} and the relays of L{portunus.dataplane.tcp},
UDP rules by a L{UdpRuntime}: a UDP rule drains by closing its listeners
and its flows at once, since a flow has nothing in flight to wait for.

Binding and serving are two steps (L{Forwarder.bind} then
L{Forwarder.activate}) so a service can bind privileged ports before it
sheds privileges and so bound sockets can be handed to worker processes.

Replacing a rule with a new version of itself keeps its ports open:
L{Forwarder.inherit} takes duplicates of the old version's listening
sockets before it is removed, and the new version's L{Forwarder.bind}
reuses them (see L{InheritedSockets}).  Removal stops the old version's
accepting at once (the reactor closes its descriptor a turn later), so
without them the new bind would find its own port still in use.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import Any
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorSocket
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from portunus.dataplane.descriptors import DescriptorBudget
from portunus.dataplane.listeners import (
    BoundSocket,
    InheritedSockets,
    Listening,
    bind_datagram_sockets,
    bind_stream_sockets,
)
from portunus.dataplane.localaddrs import LocalAddresses
from portunus.dataplane.preamble import ListenerRoutes, PreambleFactory
from portunus.dataplane.proxyprotocol import TrustedSources
from portunus.dataplane.resolver import TargetResolver
from portunus.dataplane.runtime import RuleRuntime
from portunus.dataplane.selfconnect import DialedSockets
from portunus.dataplane.sni import SniError, SniRouteTable
from portunus.dataplane.splice import splice_disabled_by_env, splice_supported
from portunus.dataplane.stats import RuleStats
from portunus.dataplane.tcp import CONNECT_TIMEOUT_SECS, InboundFactory, SpliceContext, TcpRelay
from portunus.dataplane.udp import UdpRuntime
from portunus.dataplane.workers.pool import sni_listener_key
from portunus.errors import PortunusError
from portunus.model import Protocol, Rule
from portunus.reactors import IDataplaneReactor

__all__ = ["AUTO", "DEFAULT_DRAIN_SECS", "SUPPORTED_PROTOCOLS", "BoundRule", "Forwarder"]

log = Logger()

DEFAULT_DRAIN_SECS = 30.0

#: What this data plane can forward.
SUPPORTED_PROTOCOLS = frozenset({Protocol.TCP, Protocol.UDP})


def _refresh(active: Any) -> RuleStats:
    """Copy the figures kept by a rule's selector and limiter into its stats."""
    holder = getattr(active, "runtime", active)
    stats: RuleStats = active.stats
    selector = getattr(holder, "selector", None)
    limiter = getattr(holder, "limiter", None)
    if selector is not None:
        stats.target_failovers_total = selector.failovers_total
    if limiter is not None:
        limits = limiter.stats
        stats.rate_limit_rejects = sum(limits.rejects.values())
        stats.throttle_seconds_in = limits.throttle_seconds_in
        stats.throttle_seconds_out = limits.throttle_seconds_out
    return stats


def refuse_unless_installable(
    rule: Rule, installed: Container[int], supported: Container[Protocol]
) -> None:
    """
    The checks before binding a rule, shared by every forwarder.

    @raise PortunusError: C{rule_exists} if its id is in C{installed},
        C{protocol_unsupported} if its protocol is not in C{supported}.
    """
    if rule.id in installed:
        raise PortunusError(
            "rule_exists", f"rule {rule.name!r} is already installed", rule=rule.name
        )
    if rule.protocol not in supported:
        raise PortunusError(
            "protocol_unsupported",
            f"rule {rule.name!r}: {rule.protocol.value} forwarding is not supported yet",
            rule=rule.name,
        )


def log_activated(rule: Rule, **fields: Any) -> None:
    """The C{rule.activated} event, as every forwarder logs it."""
    log.info(
        "rule {rule} activated: {protocol} {listen} -> {targets}",
        event="rule.activated",
        rule=rule.name,
        rule_id=str(rule.id),
        protocol=rule.protocol.value,
        listen=str(rule.listen),
        targets=", ".join(t.display() for t in rule.targets),
        **fields,
    )


def log_removed(cut: int, rule: Rule) -> int:
    """The C{rule.removed} event once C{rule} drained; passes C{cut} on."""
    if rule.protocol is Protocol.UDP:
        text = "rule {rule} removed ({cut} UDP flows closed)"
    else:
        text = "rule {rule} removed ({cut} connections cut at the drain deadline)"
    log.info(text, event="rule.removed", rule=rule.name, cut=cut)
    return cut


class _Auto:
    """Marker: decide from the platform and the environment."""


AUTO = _Auto()


@attrs.frozen
class BoundRule:
    """A rule whose listen sockets are bound but not yet serving."""

    rule: Rule
    sockets: tuple[BoundSocket, ...]

    def close(self) -> None:
        for bound in self.sockets:
            bound.sock.close()


class _Serving(TypingProtocol):
    """What the Forwarder needs of a serving rule, TCP or UDP."""

    rule: Rule
    stats: RuleStats

    def active_count(self) -> int: ...

    def drain(self, timeout: float) -> Deferred[int]: ...

    def listening(self) -> list[Listening]:
        """The listen sockets that close when this rule is removed."""
        ...


class _ActiveRule:
    """A serving TCP rule: its runtime (relays, counters) and listening ports."""

    def __init__(self, runtime: RuleRuntime) -> None:
        self.runtime = runtime
        self.rule = runtime.rule
        self.stats = runtime.stats
        self.ports: list[Listening] = []

    def serve(self, sockets: Iterable[BoundSocket]) -> None:
        runtime = self.runtime
        routes = None
        if runtime.trusted is not None:
            routes = ListenerRoutes(single=runtime, trusted=runtime.trusted)
        for bound in sockets:
            factory: ServerFactory = (
                PreambleFactory(routes, bound.port, runtime.reactor, runtime.budget, runtime.dialed)
                if routes is not None
                else InboundFactory(runtime, bound.port)
            )
            self.ports.append(_adopt(runtime.reactor, bound, factory))
        runtime.start()

    def listening(self) -> list[Listening]:
        return list(self.ports)

    @property
    def relays(self) -> set[TcpRelay]:
        return self.runtime.relays

    def active_count(self) -> int:
        return self.runtime.active_count()

    def stop_accepting(self) -> Deferred[Any]:
        ports, self.ports = self.ports, []
        return DeferredList([maybeDeferred(p.listener.stopListening) for p in ports])

    def drain(self, timeout: float) -> Deferred[int]:
        """Stop accepting now, then let the runtime drain its connections."""
        self.stop_accepting()
        return self.runtime.drain(timeout)


def _adopt(reactor: IReactorSocket, bound: BoundSocket, factory: ServerFactory) -> Listening:
    try:
        port = reactor.adoptStreamPort(bound.sock.fileno(), bound.family, factory)
    finally:
        # The reactor holds its own duplicate of the descriptor.
        bound.sock.close()
    return Listening(bound.address, bound.port, port)


class _SniGroup:
    """One listening port shared by the SNI-routed rules on it."""

    def __init__(
        self,
        reactor: IDataplaneReactor,
        trusted: TrustedSources | None,
        budget: DescriptorBudget | None = None,
        dialed: DialedSockets | None = None,
    ) -> None:
        self.reactor = reactor
        self._budget = budget
        self._dialed = dialed
        self.routes = ListenerRoutes(trusted=trusted)
        self.ports: list[Listening] = []

    @property
    def table(self) -> SniRouteTable[RuleRuntime]:
        assert self.routes.sni is not None
        return self.routes.sni

    def serve(self, sockets: Iterable[BoundSocket]) -> None:
        for bound in sockets:
            factory = PreambleFactory(
                self.routes, bound.port, self.reactor, self._budget, self._dialed
            )
            self.ports.append(_adopt(self.reactor, bound, factory))

    def stop_accepting(self) -> None:
        ports, self.ports = self.ports, []
        for port in ports:
            port.listener.stopListening()


class _SniRule:
    """A serving SNI-routed rule: a route in its port's group."""

    def __init__(
        self, runtime: RuleRuntime, group: _SniGroup, on_empty: Callable[[], object]
    ) -> None:
        self.runtime = runtime
        self.rule = runtime.rule
        self.stats = runtime.stats
        self._group = group
        self._on_empty = on_empty

    def active_count(self) -> int:
        return self.runtime.active_count()

    def listening(self) -> list[Listening]:
        """
        The port's listener while this is the port's only rule; none while
        others share it (the listener stays theirs).
        """
        return list(self._group.ports) if len(self._group.table) == 1 else []

    def drain(self, timeout: float) -> Deferred[int]:
        self._group.table.remove(self.runtime)
        if not len(self._group.table):
            self._group.stop_accepting()
            self._on_empty()
        return self.runtime.drain(timeout)


class Forwarder:
    """Installs, removes and reports on forwarding rules."""

    def __init__(
        self,
        reactor: IDataplaneReactor,
        connect_timeout: float = CONNECT_TIMEOUT_SECS,
        supported_protocols: frozenset[Protocol] = SUPPORTED_PROTOCOLS,
        splice: SpliceContext | _Auto | None = AUTO,
        resolver: TargetResolver | None = None,
        budget: DescriptorBudget | None = None,
        local: LocalAddresses | None = None,
    ) -> None:
        """
        @param splice: the zero-copy context shared by TCP relays; by default
            one is made when the kernel can splice and
            C{PORTUNUS_DISABLE_SPLICE} is not set, else relays use userspace.
        @param budget: the per-rule cap and the descriptor reserve
            (L{portunus.dataplane.descriptors}); without one nothing is capped.
        @param local: the host's addresses, for rules that may not reach
            local targets; read from the interfaces by default.
        """
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._supported = supported_protocols
        if isinstance(splice, _Auto):
            splice = (
                SpliceContext() if splice_supported() and not splice_disabled_by_env() else None
            )
        self.splice = splice
        self.budget = budget
        if budget is not None and splice is not None:
            pool = splice.pool
            budget.extra.append(lambda: 2 * pool.open)
        self.local = local if local is not None else LocalAddresses(reactor)
        #: The sockets this process dialled: its listeners drop connections from them.
        self.dialed = DialedSockets(reactor)
        #: Resolves DNS-name targets; without one, names go to the reactor's resolver.
        self.resolver = resolver
        self._active: dict[int, _Serving] = {}
        self._sni_groups: dict[tuple[tuple[str, ...], int], _SniGroup] = {}

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(a.rule for a in self._active.values())

    def inherit(self, rule_id: int) -> InheritedSockets:
        """
        Duplicates of the listening sockets that close when rule C{rule_id}
        is removed, for the new version of the rule to L{bind} with.  An
        SNI-routed rule holds its port's listener only while no other rule
        shares it.  Empty for a rule not installed.
        """
        active = self._active.get(rule_id)
        if active is None:
            return InheritedSockets()
        duplicates = (listening.duplicate() for listening in active.listening())
        return InheritedSockets(d for d in duplicates if d is not None)

    def bind(self, rule: Rule, inherited: InheritedSockets | None = None) -> BoundRule:
        """
        Bind every listen socket of C{rule}, all or nothing.

        @param inherited: what L{inherit} took from the version of the rule
            this one replaces: the (address, port) pairs found there are
            reused rather than bound.  They are the bind's in any case:
            those it does not use are closed before it returns or raises.
        @raise PortunusError: C{rule_exists}, C{protocol_unsupported}, or a
            L{BindError} (C{port_in_use}, C{permission_denied},
            C{bind_failed}) naming the port.
        """
        try:
            return self._bind(rule, inherited)
        finally:
            if inherited is not None:
                inherited.close()

    def _bind(self, rule: Rule, inherited: InheritedSockets | None) -> BoundRule:
        refuse_unless_installable(rule, self._active, self._supported)
        if rule.protocol is Protocol.UDP:
            sockets = bind_datagram_sockets(rule.listen_addresses, rule.listen, inherited=inherited)
        elif sni_listener_key(rule) in self._sni_groups:
            sockets = []  # joins the listener its port already has
        else:
            sockets = bind_stream_sockets(rule.listen_addresses, rule.listen, inherited)
        return BoundRule(rule, tuple(sockets))

    def activate(self, bound: BoundRule) -> None:
        """Start serving a bound rule."""
        rule = bound.rule
        active: _Serving
        sni = sni_listener_key(rule)
        if sni is not None:
            active = self._activate_sni(bound, sni)
        elif rule.protocol is Protocol.UDP:
            udp = UdpRuntime(
                self._reactor,
                rule,
                resolve=self._udp_resolver(rule),
                budget=self.budget,
                local=self.local,
            )
            udp.serve(bound.sockets)
            active = udp
        else:
            tcp = _ActiveRule(self._runtime(rule))
            tcp.serve(bound.sockets)
            active = tcp
        self._active[rule.id] = active
        log_activated(rule)

    def _udp_resolver(self, rule: Rule) -> Callable[[str], Deferred[str]] | None:
        resolver = self.resolver
        if resolver is None:
            return None

        def first_address(host: str) -> Deferred[str]:
            d = resolver.resolve(host, rule.prefer_ipv6)
            return d.addCallback(lambda resolution: resolution.addresses[0])

        return first_address

    def _runtime(self, rule: Rule) -> RuleRuntime:
        return RuleRuntime(
            self._reactor,
            rule,
            self.resolver,
            self.splice,
            self._connect_timeout,
            budget=self.budget,
            dialed=self.dialed,
            local=self.local,
        )

    def _activate_sni(self, bound: BoundRule, key: tuple[tuple[str, ...], int]) -> _SniRule:
        rule = bound.rule
        runtime = self._runtime(rule)
        group = self._sni_groups.get(key)
        created = group is None
        if group is None:
            group = _SniGroup(self._reactor, runtime.trusted, self.budget, self.dialed)
        try:
            group.table.add(rule.sni_pattern, runtime)
        except SniError as e:
            bound.close()
            raise PortunusError(e.code, e.message, rule=rule.name) from e
        if created:
            group.serve(bound.sockets)
            self._sni_groups[key] = group
        else:
            bound.close()  # the port's listener is served already
        runtime.start()
        return _SniRule(runtime, group, lambda: self._sni_groups.pop(key, None))

    def install(self, rule: Rule) -> None:
        self.activate(self.bind(rule))

    def remove(self, rule_id: int, drain_timeout: float = DEFAULT_DRAIN_SECS) -> Deferred[int]:
        """
        Stop accepting on the rule's ports at once and drain its connections.

        Fires with the number of TCP connections cut at the drain deadline,
        or of UDP flows closed.

        @raise PortunusError: C{rule_not_found}.
        """
        active = self._active.pop(rule_id, None)
        if active is None:
            raise PortunusError("rule_not_found", f"no rule with id {rule_id} is installed")

        return active.drain(drain_timeout).addCallback(log_removed, active.rule)

    def stop(self, drain_timeout: float = DEFAULT_DRAIN_SECS) -> Deferred[Any]:
        """Remove every rule, draining them together, then close the resolver."""
        drained = DeferredList(
            [self.remove(rule_id, drain_timeout) for rule_id in list(self._active)]
        )
        resolver = self.resolver
        if resolver is not None:
            drained.addCallback(lambda result: resolver.close().addCallback(lambda _: result))
        return drained

    def stats(self) -> dict[int, RuleStats]:
        """Live counters of every rule (selector and limiter figures refreshed)."""
        for active in self._active.values():
            _refresh(active)
        return {rule_id: active.stats for rule_id, active in self._active.items()}

    def sni_stats(self) -> dict[int, dict[str, int]]:
        """Per SNI-routed port: connections routed exact/wildcard/fallback, and misses."""
        return {
            port: group.routes.counters.snapshot() for (_, port), group in self._sni_groups.items()
        }

    def runtime_for(self, rule_id: int) -> RuleRuntime:
        """The live state of a TCP rule: target health, limits, relays."""
        active = self._active[rule_id]
        runtime = getattr(active, "runtime", None)
        if not isinstance(runtime, RuleRuntime):
            raise PortunusError("rule_not_found", f"rule {rule_id} is not a TCP rule")
        return runtime

    def target_states(self, rule_id: int) -> list[dict[str, Any]] | None:
        """
        Health and counters of each target of a multi-target rule, in
        config order; None for a single-target rule (its rule counters say
        it all) or a rule this forwarder does not hold.
        """
        active = self._active.get(rule_id)
        if active is None:
            return None
        selector = getattr(getattr(active, "runtime", active), "selector", None)
        if selector is None or len(selector.targets) < 2:
            return None
        states: list[dict[str, Any]] = selector.snapshot()
        return states

    def stats_for(self, rule_id: int) -> RuleStats:
        return _refresh(self._active[rule_id])

    def connection_count(self) -> int:
        """Live TCP connections plus open UDP flows, across every rule."""
        return sum(a.active_count() for a in self._active.values())
