"""
UDP forwarding: NAT-style flows.

A datagram arrives on one of a rule's listener sockets and belongs to the
flow keyed by C{(listen port, source address)} in the rule's one flow table.
Each flow has its own connected upstream socket towards the target chosen
when the flow opened, so the target's replies come back on that socket,
already sorted by client, and leave from the listener socket the client
last used.

A flow's life is a small explicit state machine::

    RESOLVING --(address found)--> OPEN --(idle / ICMP error / stop)--> CLOSED
        \\--(DNS failure / idle / stop)-----------------------------------/

A flow whose target is an IP literal skips RESOLVING.  A new flow is
admitted once, before anything is allocated for it: the rule's flow cap
first (at the cap the datagram is dropped and counted, no flow is ever
evicted to make room), then the optional admission hook where rate limits
and quotas plug in.  The first datagram is sent as soon as the upstream
socket is connected (or queued while the target resolves), never dropped
for the flow's sake.

Idle flows are reaped by one timer per rule rather than one per flow: it
runs every max(idle/4, 25 ms) while the rule has flows and closes those
silent (both ways) for the idle timeout, so a flow is a few small objects
and one file descriptor.  An ICMP error on a flow's upstream socket (port,
host or network unreachable) evicts the flow at once; the next datagram
from that source opens a new one.

Upstream sockets are plain non-blocking sockets watched with
C{reactor.addReader} rather than C{listenUDP} ports: Twisted's connected
UDP port raises out of C{doRead} on C{EHOSTUNREACH}/C{ENETUNREACH} (an
error traceback, then the port closes itself), logs two lines per port,
and costs several times the memory of the few slots a flow needs here.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import DNSLookupError, MessageLengthError
from twisted.internet.interfaces import (
    IReactorFDSet,
    IReactorPluggableNameResolver,
    IReactorTime,
    IReadDescriptor,
    IResolutionReceiver,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portunus.addresses import format_host_port
from portunus.dataplane.descriptors import DescriptorBudget
from portunus.dataplane.failover import TargetSelector
from portunus.dataplane.listeners import (
    UDP_RCVBUF,
    BoundSocket,
    Listening,
    receive_buffer_size,
)
from portunus.dataplane.localaddrs import LocalAddresses
from portunus.dataplane.ratelimit import RULE_UDP_REASONS, DatagramBudget, RuleLimiter
from portunus.dataplane.stats import LOG_THROTTLE_SECS, LogThrottle, PortStats, RuleStats
from portunus.model import Rule, Target
from portunus.reactors import IDataplaneReactor

__all__ = [
    "LOG_THROTTLE_SECS",
    "MAX_DATAGRAM",
    "PENDING_DATAGRAMS_MAX",
    "REAPER_MIN_INTERVAL",
    "REPLY_BUDGET",
    "Address",
    "FlowAdmission",
    "FlowKey",
    "FlowState",
    "ReplyTransport",
    "Resolver",
    "SocketUpstreamOpener",
    "UdpFlow",
    "UdpFlowTable",
    "UdpRuntime",
    "UpstreamOpener",
    "UpstreamSocket",
    "hostname_resolver",
]

log = Logger()

#: Largest datagram read or forwarded: every UDP payload passes unchanged.
MAX_DATAGRAM = 65535

#: Datagrams read from one upstream socket per reactor turn, so one chatty
#: target cannot starve the others.
REPLY_BUDGET = 32

#: The idle reaper never runs more often than this.
REAPER_MIN_INTERVAL = 0.025

#: Datagrams a flow holds while its target's hostname resolves; more are
#: dropped (C{flows_pending_drops}).
PENDING_DATAGRAMS_MAX = 16

#: Errors on a connected UDP socket that mean "nobody is there": the flow
#: is evicted at once.
_ICMP_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})

#: A client or target address as the socket layer gives it: (host, port).
Address = tuple[str, int]
#: A flow's identity within its rule: (listen port, client address).
FlowKey = tuple[int, Address]


class FlowState(enum.Enum):
    """Where a flow is in its life (see the module docstring)."""

    RESOLVING = "resolving"
    OPEN = "open"
    CLOSED = "closed"


class ReplyTransport(Protocol):
    """Where replies to a client go: the listener socket it wrote to."""

    def write(self, datagram: bytes, addr: Address) -> Any: ...


class UpstreamSocket(Protocol):
    """
    A flow's connected socket towards its target.  Replies and errors it
    reads are delivered to the flow (L{UdpFlow.reply_received},
    L{UdpFlow.upstream_failed}, L{UdpFlow.upstream_lost}).
    """

    def send(self, datagram: bytes) -> Any:
        """Send one datagram; raise L{OSError} on failure."""

    def close(self) -> None:
        """Stop reading and release the socket; may be called twice."""


#: Opens the upstream socket for a flow: (target address, target port,
#: flow) -> socket.  Raises L{OSError} when it cannot.
UpstreamOpener = Callable[[str, int, "UdpFlow"], UpstreamSocket]

#: Turns a target hostname into one IP address literal.
Resolver = Callable[[str], "Deferred[str]"]

#: Decides whether a new flow may open: (rule, listen port, client) ->
#: C{None} to admit, or a short reason to refuse (the first datagram is
#: dropped).  Rate limits and quotas plug in here; the flow cap is checked
#: before it.
FlowAdmission = Callable[[Rule, int, Address], "str | None"]


def _display(address: Address) -> str:
    return format_host_port(address[0], address[1])


class UdpFlow:
    """
    One client's flow through a rule: its key, its upstream socket and
    when it was last heard from in either direction.
    """

    __slots__ = (
        "admitted",
        "answered",
        "descriptor",
        "key",
        "last_seen",
        "listener",
        "pending",
        "port_stats",
        "state",
        "table",
        "target",
        "upstream",
    )

    def __init__(
        self,
        table: UdpFlowTable,
        key: FlowKey,
        listener: ReplyTransport,
        port_stats: PortStats,
        target: Target,
        now: float,
    ) -> None:
        self.table = table
        self.key = key
        self.listener = listener
        self.port_stats = port_stats
        self.target = target
        self.last_seen = now
        self.state = FlowState.RESOLVING
        self.upstream: UpstreamSocket | None = None
        #: Datagrams held while the target resolves.
        self.pending: list[bytes] | None = None
        #: Holds a slot of the rule's limiter (released on close).
        self.admitted = False
        #: Holds a descriptor of the process's budget (given back on close).
        self.descriptor = False
        #: The target has replied at least once (a health success).
        self.answered = False

    @property
    def listen_port(self) -> int:
        return self.key[0]

    @property
    def source(self) -> Address:
        return self.key[1]

    def reply_received(self, datagram: bytes) -> None:
        """The target sent C{datagram} back on this flow's upstream socket."""
        self.table.reply(self, datagram)

    def upstream_failed(self, error: OSError) -> None:
        """Reading the upstream socket failed (an ICMP error, usually)."""
        self.table.upstream_failed(self, error)

    def upstream_lost(self) -> None:
        """The reactor dropped the upstream socket (shutdown, bad descriptor)."""
        self.table.upstream_lost(self)

    def __repr__(self) -> str:
        return f"<UdpFlow {self.listen_port} {_display(self.source)} {self.state.value}>"


class UdpFlowTable:
    """
    The flows of one UDP rule across all of its listen ports.

    Sans-IO apart from its collaborators: datagrams come in through
    L{datagram_received} and L{reply}, time from C{clock}, sockets from
    C{open_upstream}, addresses from C{resolve}.  Counters are updated in
    C{stats} (the rule's totals and each port's).
    """

    def __init__(
        self,
        clock: IReactorTime,
        rule: Rule,
        stats: RuleStats,
        open_upstream: UpstreamOpener,
        resolve: Resolver | None = None,
        admission: FlowAdmission | None = None,
        selector: TargetSelector | None = None,
        limiter: RuleLimiter | None = None,
        budget: DescriptorBudget | None = None,
        local: LocalAddresses | None = None,
    ) -> None:
        """
        @param selector: picks each new flow's target by health and balance;
            without one every flow uses the first target by priority.
        @param limiter: the rule's rate limits: new flows per second and
            concurrent flows at admission, bandwidth per datagram (drops).
        @param budget: the process's per-rule cap (on flows) and descriptor
            reserve; each flow holds one descriptor.
        @param local: the host's addresses; given, a flow to one of them (or
            to loopback, link-local) is refused (the rule may not reach them).
        """
        self._budget = budget
        self._local = local
        self._clock = clock
        self.rule = rule
        self._stats = stats
        self._selector = selector
        self._limiter = limiter
        self._budget_in = (
            DatagramBudget(limiter.bandwidth_in) if limiter and limiter.bandwidth_in else None
        )
        self._budget_out = (
            DatagramBudget(limiter.bandwidth_out) if limiter and limiter.bandwidth_out else None
        )
        self._open_upstream = open_upstream
        self._resolve = resolve
        self._admission = admission
        self._flows: dict[FlowKey, UdpFlow] = {}
        self._max_flows = rule.udp_max_flows
        self._idle = float(rule.udp_flow_idle_secs)
        self.reap_interval = max(self._idle / 4, REAPER_MIN_INTERVAL)
        self._reaper: Any = None
        self._target = rule.targets_by_priority()[0]
        if resolve is None and not all(t.is_ip_literal for t in rule.targets):
            raise ValueError(f"rule {rule.name!r}: a hostname target needs a resolver")
        self._throttles: dict[str, LogThrottle] = {}

    # -- reading ----------------------------------------------------------

    @property
    def flows(self) -> Mapping[FlowKey, UdpFlow]:
        return self._flows

    def __len__(self) -> int:
        return len(self._flows)

    # -- clients to targets -----------------------------------------------

    def datagram_received(
        self, listen_port: int, source: Address, datagram: bytes, listener: ReplyTransport
    ) -> None:
        """A client sent C{datagram} from C{source} to C{listen_port}."""
        key = (listen_port, source)
        now = self._clock.seconds()
        flow = self._flows.get(key)
        if flow is not None:
            flow.last_seen = now
            # Replies leave from the socket the client last wrote to.
            flow.listener = listener
            if flow.state is FlowState.OPEN:
                if self._send_upstream(flow, datagram):
                    return
                # The send reported an ICMP error for an earlier datagram and
                # evicted the flow: this datagram opens the next one.
            else:
                self._hold(flow, datagram)
                return
        self._new_flow(key, datagram, listener, now)

    def _new_flow(
        self, key: FlowKey, datagram: bytes, listener: ReplyTransport, now: float
    ) -> None:
        listen_port, source = key
        port_stats = self._stats.for_port(listen_port)
        if not self._admit(listen_port, source, port_stats, now):
            return
        target = (
            self._selector.dial_order(str(source[0]))[0]
            if self._selector is not None
            else self._target
        )
        flow = UdpFlow(self, key, listener, port_stats, target, now)
        flow.admitted = self._limiter is not None
        flow.descriptor = self._budget is not None
        self._flows[key] = flow
        self._stats.active_flows += 1
        port_stats.active_flows += 1
        if self._reaper is None:
            self._reaper = self._clock.callLater(self.reap_interval, self._reap)
        target_port = self.rule.target_port(target, listen_port)
        if target.is_ip_literal or self._resolve is None:
            self._open(flow, target.host, target_port, (datagram,))
            return
        flow.pending = [datagram]
        self._resolve(target.host).addCallbacks(
            self._resolved,
            self._resolve_failed,
            callbackArgs=(flow, target_port),
            errbackArgs=(flow,),
        )

    def _admit(self, listen_port: int, source: Address, port_stats: PortStats, now: float) -> bool:
        """The one admission point for new flows: the cap, then the hook."""
        if len(self._flows) >= self._max_flows:
            self._stats.flows_dropped_overflow += 1
            port_stats.flows_dropped_overflow += 1
            held = self._throttle("overflow", now)
            if held is not None:
                log.warn(
                    "rule {rule}: {max_flows} UDP flows open, new flow from {source} "
                    "on port {listen_port} dropped ({held} more since the last report); "
                    "raise udp_max_flows or lower udp_flow_idle_secs",
                    event="rule.udp_flow_dropped_overflow",
                    rule=self.rule.name,
                    max_flows=self._max_flows,
                    source=_display(source),
                    listen_port=listen_port,
                    held=held,
                )
            return False
        budget = self._budget
        if budget is not None and not self._take_descriptor(budget, source, now):
            return False
        reason = self._limiter.admit() if self._limiter is not None else None
        if reason is None and self._admission is not None:
            reason = self._admission(self.rule, listen_port, source)
            if reason is not None and self._limiter is not None:
                self._limiter.cancel()
        if reason is not None:
            if budget is not None:
                budget.give_back(1)
            log.debug(
                "rule {rule}: new flow from {source} refused: {reason}",
                event="rule.udp_first_packet_rejected",
                rule=self.rule.name,
                source=_display(source),
                listen_port=listen_port,
                reason=reason,
            )
            return False
        return True

    def _take_descriptor(self, budget: DescriptorBudget, source: Address, now: float) -> bool:
        """The per-rule cap, then one descriptor of the reserve's budget."""
        if len(self._flows) >= budget.per_rule:
            self._stats.conn_cap_rejects += 1
            kind, text, event = (
                "conn_cap",
                "rule {rule} holds {cap} UDP flows (max_conns_per_rule); a new flow from "
                "{source} was dropped ({held} more since the last report)",
                "rule.conn_cap_reached",
            )
        elif not budget.take(1):
            self._stats.fd_reserve_rejects += 1
            kind, text, event = (
                "fd_reserve",
                "only {reserve} descriptors are left (reserve_fds): a new UDP flow of rule "
                "{rule} from {source} was dropped ({held} more since the last report)",
                "dataplane.fd_reserve_reached",
            )
        else:
            return True
        held = self._throttle(kind, now)
        if held is not None:
            log.warn(
                text,
                event=event,
                rule=self.rule.name,
                cap=budget.per_rule,
                reserve=budget.reserve,
                source=_display(source),
                held=held,
            )
        return False

    def _hold(self, flow: UdpFlow, datagram: bytes) -> None:
        pending = flow.pending
        if pending is not None and len(pending) < PENDING_DATAGRAMS_MAX:
            pending.append(datagram)
            return
        self._stats.flows_pending_drops += 1
        flow.port_stats.flows_pending_drops += 1
        log.debug(
            "rule {rule}: datagram from {source} dropped while its target resolves",
            event="rule.udp_flow_pending_drop",
            rule=self.rule.name,
            source=_display(flow.source),
        )

    def _resolved(self, address: str, flow: UdpFlow, target_port: int) -> None:
        if flow.state is not FlowState.RESOLVING:
            return  # Closed (idle, stopped) while resolving.
        pending, flow.pending = flow.pending or [], None
        self._open(flow, address, target_port, pending)

    def _resolve_failed(self, failure: Failure, flow: UdpFlow) -> None:
        if flow.state is not FlowState.RESOLVING:
            return
        self._stats.dns_failures += 1
        flow.port_stats.dns_failures += 1
        self._close(flow)
        held = self._throttle("dns", self._clock.seconds())
        if held is not None:
            log.warn(
                "rule {rule}: cannot resolve {target_host} for a new UDP flow from "
                "{source}: {reason} ({held} more since the last report)",
                event="rule.udp_dns_failed",
                rule=self.rule.name,
                target_host=flow.target.host,
                source=_display(flow.source),
                reason=failure.getErrorMessage(),
                held=held,
            )

    def _open(
        self, flow: UdpFlow, address: str, target_port: int, datagrams: Sequence[bytes]
    ) -> None:
        if self._local is not None and self._local.is_local(address):
            self._refuse_local(flow, address, target_port)
            return
        try:
            flow.upstream = self._open_upstream(address, target_port, flow)
        except OSError as e:
            self._stats.connect_failures += 1
            flow.port_stats.connect_failures += 1
            self._close(flow)
            held = self._throttle("open", self._clock.seconds())
            if held is not None:
                log.warn(
                    "rule {rule}: cannot open a UDP socket to {target}: {reason} "
                    "({held} more since the last report)",
                    event="rule.udp_upstream_connect_failed",
                    rule=self.rule.name,
                    target=_display((address, target_port)),
                    source=_display(flow.source),
                    reason=e.strerror or str(e),
                    held=held,
                )
            return
        flow.state = FlowState.OPEN
        log.debug(
            "rule {rule}: UDP flow {source} -> {target} opened",
            event="rule.udp_flow_opened",
            rule=self.rule.name,
            listen_port=flow.listen_port,
            source=_display(flow.source),
            target=_display((address, target_port)),
        )
        for datagram in datagrams:
            if not self._send_upstream(flow, datagram):
                return

    def _refuse_local(self, flow: UdpFlow, address: str, target_port: int) -> None:
        """The rule may not reach a local address: the flow fails to open."""
        self._stats.local_target_refusals += 1
        self._stats.connect_failures += 1
        flow.port_stats.connect_failures += 1
        self._close(flow)
        held = self._throttle("local", self._clock.seconds())
        if held is not None:
            log.warn(
                "rule {rule} may not reach {target}: it is a local address (loopback, "
                "link-local or this host's own) and the rule's grant does not allow local "
                "targets ({held} more since the last report)",
                event="rule.target_local_refused",
                rule=self.rule.name,
                target=_display((address, target_port)),
                source=_display(flow.source),
                held=held,
            )

    def _send_upstream(self, flow: UdpFlow, datagram: bytes) -> bool:
        """Send towards the target; C{False} if the flow was evicted instead."""
        assert flow.upstream is not None
        if self._budget_in is not None and not self._budget_in.allow(len(datagram)):
            self._stats.bandwidth_dropped_in += 1
            flow.port_stats.bandwidth_dropped_in += 1
            return True
        try:
            flow.upstream.send(datagram)
        except OSError as e:
            if e.errno in _ICMP_ERRNOS:
                self._evict(flow, e)
                return False
            self._send_failed(flow, e, "upstream")
            return True
        self._stats.datagrams_in += 1
        self._stats.bytes_in += len(datagram)
        flow.port_stats.datagrams_in += 1
        flow.port_stats.bytes_in += len(datagram)
        return True

    # -- targets to clients -----------------------------------------------

    def reply(self, flow: UdpFlow, datagram: bytes) -> None:
        """Send a target's reply back to the flow's client."""
        if flow.state is not FlowState.OPEN:
            return
        flow.last_seen = self._clock.seconds()
        if not flow.answered:
            flow.answered = True
            if self._selector is not None:
                self._selector.record_success(flow.target)
        if self._budget_out is not None and not self._budget_out.allow(len(datagram)):
            self._stats.bandwidth_dropped_out += 1
            flow.port_stats.bandwidth_dropped_out += 1
            return
        try:
            flow.listener.write(datagram, flow.key[1])
        except (OSError, MessageLengthError) as e:
            self._send_failed(flow, e, "reply")
            return
        self._stats.datagrams_out += 1
        self._stats.bytes_out += len(datagram)
        flow.port_stats.datagrams_out += 1
        flow.port_stats.bytes_out += len(datagram)

    def upstream_failed(self, flow: UdpFlow, error: OSError) -> None:
        if flow.state is not FlowState.OPEN:
            return
        if error.errno in _ICMP_ERRNOS:
            self._evict(flow, error)
            return
        if error.errno == errno.EMSGSIZE:
            # A path MTU report for a datagram already sent: counted, flow kept.
            self._send_failed(flow, error, "upstream")
            return
        self._close(flow)
        log.warn(
            "rule {rule}: UDP flow {source} closed: reading from its target failed: {reason}",
            event="rule.udp_flow_closed_error",
            rule=self.rule.name,
            source=_display(flow.source),
            reason=error.strerror or str(error),
        )

    def upstream_lost(self, flow: UdpFlow) -> None:
        self._close(flow)

    # -- errors -----------------------------------------------------------

    def _evict(self, flow: UdpFlow, error: OSError) -> None:
        if self._selector is not None:
            self._selector.record_failure(flow.target)
        self._stats.icmp_evictions += 1
        flow.port_stats.icmp_evictions += 1
        self._close(flow)
        held = self._throttle("icmp", self._clock.seconds())
        if held is not None:
            log.info(
                "rule {rule}: UDP flow {source} evicted: target {target_host} "
                "answered {reason} ({held} more since the last report)",
                event="rule.udp_flow_evicted_icmp",
                rule=self.rule.name,
                listen_port=flow.listen_port,
                source=_display(flow.source),
                target_host=flow.target.host,
                reason=error.strerror or str(error),
                held=held,
            )

    def _send_failed(self, flow: UdpFlow, error: Exception, direction: str) -> None:
        """A datagram is lost to a full buffer or an oversize; the flow stays."""
        self._stats.send_dropped += 1
        flow.port_stats.send_dropped += 1
        number = error.errno if isinstance(error, OSError) else errno.EMSGSIZE
        if number == errno.EMSGSIZE:
            event = "rule.udp_emsgsize"
        elif number in (errno.EAGAIN, errno.EWOULDBLOCK):
            event = f"rule.udp_{direction}_wouldblock"
        else:
            event = f"rule.udp_{direction}_send_failed"
        held = self._throttle(event, self._clock.seconds())
        if held is not None:
            log.warn(
                "rule {rule}: {direction} datagram for flow {source} dropped: {reason} "
                "({held} more since the last report)",
                event=event,
                rule=self.rule.name,
                direction=direction,
                source=_display(flow.source),
                reason=(error.strerror if isinstance(error, OSError) else None) or str(error),
                held=held,
            )

    def _throttle(self, kind: str, now: float) -> int | None:
        throttle = self._throttles.get(kind)
        if throttle is None:
            throttle = self._throttles[kind] = LogThrottle()
        return throttle.allow(now)

    # -- closing ----------------------------------------------------------

    def _close(self, flow: UdpFlow) -> None:
        if flow.state is FlowState.CLOSED:
            return
        flow.state = FlowState.CLOSED
        if self._flows.get(flow.key) is flow:
            del self._flows[flow.key]
        upstream, flow.upstream = flow.upstream, None
        if upstream is not None:
            upstream.close()
        flow.pending = None
        if flow.admitted and self._limiter is not None:
            flow.admitted = False
            self._limiter.release()
        if flow.descriptor and self._budget is not None:
            flow.descriptor = False
            self._budget.give_back(1)
        self._stats.active_flows -= 1
        flow.port_stats.active_flows -= 1

    def _reap(self) -> None:
        self._reaper = None
        now = self._clock.seconds()
        deadline = now - self._idle
        idle = [flow for flow in self._flows.values() if flow.last_seen <= deadline]
        for flow in idle:
            self._close(flow)
            log.debug(
                "rule {rule}: UDP flow {source} closed after {idle_secs}s idle",
                event="rule.udp_flow_closed_idle",
                rule=self.rule.name,
                listen_port=flow.listen_port,
                source=_display(flow.source),
                idle_secs=self.rule.udp_flow_idle_secs,
            )
        if self._flows:
            self._reaper = self._clock.callLater(self.reap_interval, self._reap)

    def close_all(self) -> int:
        """Close every flow now (rule removed); return how many there were."""
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        self._reaper = None
        flows = list(self._flows.values())
        for flow in flows:
            self._close(flow)
        return len(flows)


# -- the real sockets ------------------------------------------------------


@implementer(IReadDescriptor)
class _SocketUpstream:
    """A flow's connected, non-blocking upstream socket, read by the reactor."""

    __slots__ = ("_flow", "_reactor", "_sock")

    def __init__(self, reactor: IReactorFDSet, sock: socket.socket, flow: UdpFlow) -> None:
        self._reactor = reactor
        self._sock = sock
        self._flow = flow
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._sock.fileno()

    def logPrefix(self) -> str:
        return "portunus-udp-upstream"

    def doRead(self) -> None:
        sock, flow = self._sock, self._flow
        for _ in range(REPLY_BUDGET):
            try:
                datagram = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                flow.upstream_failed(e)
                return None
            flow.reply_received(datagram)
            if flow.upstream is not self:
                return None  # The flow closed while handling the reply.
        return None

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor stopped watching the socket.  An ICMP error with no data
        queued shows up this way (EPOLLERR without EPOLLIN), so the pending
        socket error decides between an eviction and a plain close.
        """
        try:
            number = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            number = 0
        if number:
            self._flow.upstream_failed(OSError(number, os.strerror(number)))
        if self._flow.upstream is self:
            self._flow.upstream_lost()
        self._sock.close()

    def send(self, datagram: bytes) -> int:
        return self._sock.send(datagram)

    def close(self) -> None:
        self._reactor.removeReader(self)
        self._sock.close()


#: Fresh sockets tried before a flow gives up on a self-connected source port.
SELF_CONNECT_RETRIES = 8


class SocketUpstreamOpener:
    """
    Opens a flow's upstream socket: bound to the wildcard address of the
    target's family on an ephemeral port, then connected to the target so
    the kernel delivers only the target's datagrams and its ICMP errors.
    """

    def __init__(self, reactor: IReactorFDSet) -> None:
        self._reactor = reactor

    def __call__(self, address: str, port: int, flow: UdpFlow) -> UpstreamSocket:
        # A target on this host, on a port in the ephemeral range that
        # nobody holds, can be handed to us as our own source port: the
        # socket is then connected to itself and squats the target's port.
        # Such a socket is discarded and another port taken.
        for _ in range(SELF_CONNECT_RETRIES):
            sock = self._open(address, port)
            if sock.getsockname()[:2] != sock.getpeername()[:2]:
                return _SocketUpstream(self._reactor, sock, flow)
            sock.close()
        raise OSError(errno.EADDRINUSE, f"no source port distinct from {address}:{port}")

    @staticmethod
    def _open(address: str, port: int) -> socket.socket:
        v6 = ":" in address
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(("::" if v6 else "0.0.0.0", 0))
            sock.connect((address, port))
        except BaseException:
            sock.close()
            raise
        return sock


@implementer(IResolutionReceiver)
class _FirstAddress:
    """Collects a name's addresses and fires with the preferred family's first."""

    def __init__(self, host: str, prefer_ipv6: bool) -> None:
        self._host = host
        self._prefer_ipv6 = prefer_ipv6
        self._v4: list[str] = []
        self._v6: list[str] = []
        self.result: Deferred[str] = Deferred()

    def resolutionBegan(self, resolutionInProgress: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, IPv6Address):
            self._v6.append(address.host)
        elif isinstance(address, IPv4Address):
            self._v4.append(address.host)

    def resolutionComplete(self) -> None:
        order = (self._v6, self._v4) if self._prefer_ipv6 else (self._v4, self._v6)
        for found in order:
            if found:
                self.result.callback(found[0])
                return
        self.result.errback(DNSLookupError(f"{self._host}: no addresses"))


def hostname_resolver(
    reactor: IReactorPluggableNameResolver, prefer_ipv6: bool = False
) -> Resolver:
    """
    A L{Resolver} on the reactor's name resolver (the system's, by
    default): the first IPv4 address, or the first IPv6 one with
    C{prefer_ipv6}, falling back to the other family.
    """

    def resolve(host: str) -> Deferred[str]:
        receiver = _FirstAddress(host, prefer_ipv6)
        reactor.nameResolver.resolveHostName(receiver, host, 0, transportSemantics="UDP")
        return receiver.result

    return resolve


class _Listener(DatagramProtocol):
    """One listen socket of a rule; every datagram goes to the flow table."""

    noisy = False

    def __init__(self, table: UdpFlowTable, listen_port: int) -> None:
        self._table = table
        self._listen_port = listen_port

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        assert self.transport is not None
        self._table.datagram_received(self._listen_port, addr, datagram, self.transport)


class UdpRuntime:
    """
    A serving UDP rule: its listener ports and its flow table.

    @param open_upstream: opens flows' upstream sockets; real sockets on
        C{reactor} by default.
    @param resolve: resolves hostname targets; the reactor's name resolver
        by default.
    @param admission: the new-flow admission hook (see L{FlowAdmission}).
    """

    def __init__(
        self,
        reactor: IDataplaneReactor,
        rule: Rule,
        stats: RuleStats | None = None,
        open_upstream: UpstreamOpener | None = None,
        resolve: Resolver | None = None,
        admission: FlowAdmission | None = None,
        budget: DescriptorBudget | None = None,
        local: LocalAddresses | None = None,
    ) -> None:
        """
        @param budget: the process's per-rule cap and descriptor reserve.
        @param local: the host's addresses, refused as targets when the
            rule does not allow local targets.
        """
        self._reactor = reactor
        self.rule = rule
        self.stats = stats if stats is not None else RuleStats()
        self.selector = TargetSelector(rule, reactor)
        self.limiter = RuleLimiter(reactor, rule.rate_limit, RULE_UDP_REASONS)
        self.table = UdpFlowTable(
            reactor,
            rule,
            self.stats,
            open_upstream if open_upstream is not None else SocketUpstreamOpener(reactor),
            resolve if resolve is not None else hostname_resolver(reactor, rule.prefer_ipv6),
            admission,
            self.selector,
            self.limiter if rule.rate_limit is not None else None,
            budget,
            None if rule.allow_local_targets else local,
        )
        self.ports: list[Listening] = []

    def serve(self, sockets: Iterable[BoundSocket]) -> None:
        """Start reading the rule's bound listener sockets."""
        sockets = list(sockets)
        granted = [receive_buffer_size(bound.sock) for bound in sockets]
        if granted and min(granted) < UDP_RCVBUF:
            log.warn(
                "rule {rule}: UDP listeners got a {granted}-byte receive buffer, "
                "asked for {requested}; bursts may be lost: raise net.core.rmem_max",
                event="rule.udp_rcvbuf_reduced",
                rule=self.rule.name,
                granted=min(granted),
                requested=UDP_RCVBUF,
            )
        for bound in sockets:
            self.stats.for_port(bound.port)
            protocol = _Listener(self.table, bound.port)
            try:
                port = self._reactor.adoptDatagramPort(
                    bound.sock.fileno(), bound.family, protocol, maxPacketSize=MAX_DATAGRAM
                )
            finally:
                # The reactor holds its own duplicate of the descriptor.
                bound.sock.close()
            self.ports.append(Listening(bound.address, bound.port, port))

    def active_count(self) -> int:
        return len(self.table)

    def listening(self) -> list[Listening]:
        return list(self.ports)

    def drain(self, timeout: float | None = None) -> Deferred[int]:
        """
        Stop listening and close every flow at once; fire with the number
        of flows closed once the listener sockets are released.

        A flow has nothing in flight to wait for, and its replies could not
        reach the client once the listeners are gone, so C{timeout} (the
        TCP drain deadline) is accepted for symmetry and not used.
        """
        ports, self.ports = self.ports, []
        stopped = DeferredList([maybeDeferred(p.listener.stopListening) for p in ports])
        closed = self.table.close_all()
        return stopped.addCallback(lambda _: closed)
