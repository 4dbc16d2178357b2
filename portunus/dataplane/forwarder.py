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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.logger import Logger

from portunus.dataplane.listeners import (
    BoundSocket,
    bind_datagram_sockets,
    bind_stream_sockets,
)
from portunus.dataplane.splice import splice_disabled_by_env, splice_supported
from portunus.dataplane.stats import RuleStats
from portunus.dataplane.tcp import CONNECT_TIMEOUT_SECS, InboundFactory, SpliceContext, TcpRelay
from portunus.dataplane.udp import UdpRuntime
from portunus.errors import PortunusError
from portunus.model import Protocol, Rule

__all__ = ["AUTO", "DEFAULT_DRAIN_SECS", "SUPPORTED_PROTOCOLS", "BoundRule", "Forwarder"]

log = Logger()

DEFAULT_DRAIN_SECS = 30.0

#: What this data plane can forward.
SUPPORTED_PROTOCOLS = frozenset({Protocol.TCP, Protocol.UDP})


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


class _ActiveRule:
    """A serving TCP rule: its listening ports, live relays and counters."""

    def __init__(
        self, reactor: Any, rule: Rule, connect_timeout: float, splice: SpliceContext | None
    ) -> None:
        self._reactor = reactor
        self._splice = splice
        self.rule = rule
        self.stats = RuleStats()
        self.relays: set[TcpRelay] = set()
        self.ports: list[Any] = []
        self._connect_timeout = connect_timeout
        self._idle_waiters: list[Deferred[None]] = []

    def serve(self, sockets: Iterable[BoundSocket]) -> None:
        for bound in sockets:
            factory = InboundFactory(
                self._reactor,
                self.rule,
                bound.port,
                self.stats,
                self.relays.add,
                self._relay_closed,
                self._connect_timeout,
                self._splice,
            )
            try:
                port = self._reactor.adoptStreamPort(bound.sock.fileno(), bound.family, factory)
            finally:
                # The reactor holds its own duplicate of the descriptor.
                bound.sock.close()
            self.ports.append(port)

    def active_count(self) -> int:
        return len(self.relays)

    def _relay_closed(self, relay: TcpRelay) -> None:
        self.relays.discard(relay)
        if not self.relays:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def stop_accepting(self) -> Deferred[Any]:
        ports, self.ports = self.ports, []
        return DeferredList([maybeDeferred(p.stopListening) for p in ports])

    def drain(self, timeout: float) -> Deferred[int]:
        """
        Stop accepting now; fire with the number of connections that had to
        be cut when C{timeout} passed (0 when all finished by themselves).
        """
        self.stop_accepting()
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

        timer = self._reactor.callLater(timeout, deadline)

        def finished(_: None) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(0)

        idle.addCallback(finished)
        return result


class Forwarder:
    """Installs, removes and reports on forwarding rules."""

    def __init__(
        self,
        reactor: Any,
        connect_timeout: float = CONNECT_TIMEOUT_SECS,
        supported_protocols: frozenset[Protocol] = SUPPORTED_PROTOCOLS,
        splice: SpliceContext | _Auto | None = AUTO,
    ) -> None:
        """
        @param splice: the zero-copy context shared by TCP relays; by default
            one is made when the kernel can splice and
            C{PORTUNUS_DISABLE_SPLICE} is not set, else relays use userspace.
        """
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._supported = supported_protocols
        if isinstance(splice, _Auto):
            splice = (
                SpliceContext() if splice_supported() and not splice_disabled_by_env() else None
            )
        self.splice = splice
        self._active: dict[int, _Serving] = {}

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(a.rule for a in self._active.values())

    def bind(self, rule: Rule) -> BoundRule:
        """
        Bind every listen socket of C{rule}, all or nothing.

        @raise PortunusError: C{rule_exists}, C{protocol_unsupported}, or a
            L{BindError} (C{port_in_use}, C{permission_denied},
            C{bind_failed}) naming the port.
        """
        if rule.id in self._active:
            raise PortunusError(
                "rule_exists", f"rule {rule.name!r} is already installed", rule=rule.name
            )
        if rule.protocol not in self._supported:
            raise PortunusError(
                "protocol_unsupported",
                f"rule {rule.name!r}: {rule.protocol.value} forwarding is not supported yet",
                rule=rule.name,
            )
        if rule.protocol is Protocol.UDP:
            sockets = bind_datagram_sockets(rule.listen_addresses, rule.listen)
        else:
            sockets = bind_stream_sockets(rule.listen_addresses, rule.listen)
        return BoundRule(rule, tuple(sockets))

    def activate(self, bound: BoundRule) -> None:
        """Start serving a bound rule."""
        rule = bound.rule
        active: _Serving
        if rule.protocol is Protocol.UDP:
            udp = UdpRuntime(self._reactor, rule)
            udp.serve(bound.sockets)
            active = udp
        else:
            tcp = _ActiveRule(self._reactor, rule, self._connect_timeout, self.splice)
            tcp.serve(bound.sockets)
            active = tcp
        self._active[rule.id] = active
        log.info(
            "rule {rule} activated: {protocol} {listen} -> {targets}",
            event="rule.activated",
            rule=rule.name,
            rule_id=str(rule.id),
            protocol=rule.protocol.value,
            listen=str(rule.listen),
            targets=", ".join(t.display() for t in rule.targets),
        )

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

        def removed(cut: int) -> int:
            if active.rule.protocol is Protocol.UDP:
                text = "rule {rule} removed ({cut} UDP flows closed)"
            else:
                text = "rule {rule} removed ({cut} connections cut at the drain deadline)"
            log.info(text, event="rule.removed", rule=active.rule.name, cut=cut)
            return cut

        return active.drain(drain_timeout).addCallback(removed)

    def stop(self, drain_timeout: float = DEFAULT_DRAIN_SECS) -> Deferred[Any]:
        """Remove every rule, draining them together."""
        return DeferredList([self.remove(rule_id, drain_timeout) for rule_id in list(self._active)])

    def stats(self) -> dict[int, RuleStats]:
        return {rule_id: active.stats for rule_id, active in self._active.items()}

    def stats_for(self, rule_id: int) -> RuleStats:
        return self._active[rule_id].stats

    def connection_count(self) -> int:
        """Live TCP connections plus open UDP flows, across every rule."""
        return sum(a.active_count() for a in self._active.values())
