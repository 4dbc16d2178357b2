"""
The TCP relay: one accepted client connection joined to one target.

All per-connection state lives in L{TcpRelay}, a small explicit state
machine::

    DIALING --(target connected)--> RELAYING --(both EOFs / reset)--> CLOSING
       \\--(every target failed / client gone)------------------------/
    CLOSING --(both sockets gone)--> CLOSED

The two sockets are wrapped by thin L{_Leg} protocols that only forward
events to the relay.  Back-pressure is wired both ways with streaming
producers: each transport is registered as the producer of the other, so a
slow reader fills its writer's buffer and Twisted pauses the fast side; the
userspace path never buffers more than one socket buffer per direction.

Half-close is passed through (an EOF on one side becomes a write shutdown
on the other, the other direction keeps flowing) and a reset on either side
resets the other.  A later zero-copy path takes over a connection from
L{TcpRelay.start_relaying}, after any prelude, by the same state change.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portunus.compat import close_without_shutdown
from portunus.dataplane.proxyprotocol import ProxyProtocolError, encode_header
from portunus.dataplane.ratelimit import PauseGate, Throttle
from portunus.dataplane.resolver import DnsFailure, Resolution
from portunus.dataplane.selfconnect import came_back
from portunus.dataplane.splice import PipePool, SpliceRelay
from portunus.model import Rule, Target

if TYPE_CHECKING:
    from portunus.dataplane.dial import DialAttempt
    from portunus.dataplane.runtime import RuleRuntime

__all__ = [
    "CONNECT_TIMEOUT_SECS",
    "InboundFactory",
    "LocalTargetRefused",
    "RelayState",
    "SpliceContext",
    "TcpRelay",
    "client_leg_for",
]

log = Logger()

#: Per-attempt timeout for dialling a target (Portunus: 3 s).
CONNECT_TIMEOUT_SECS = 3.0

_LINGER_RESET = struct.pack("ii", 1, 0)
_CONNECTION_DONE = Failure(ConnectionDone())
#: Bytes an uncapped userspace relay reads at a time, and how much it lets
#: queue for a slow side before pausing the other (Twisted's default is
#: 64 KiB; 256 KiB moved about 1.2x the bytes per second in a 1-stream
#: iperf3 A/B on loopback).
USERSPACE_BUFFER_SIZE = 256 * 1024
#: What a relay has left to dial once every target was tried (shared, so
#: never mutated: relays only pop from a non-empty list).
_NO_TARGETS: list[Target] = []


class LocalTargetRefused(Exception):
    """A target address the rule may not reach: it is local (see L{RuleRuntime})."""

    def __init__(self, address: str) -> None:
        super().__init__(
            f"{address} is a local address and this rule's grant does not allow local targets"
        )


class SpliceContext:
    """
    What the relays of one process share for zero-copy transfer: the pipe
    pool, and which rules already logged that they splice.
    """

    def __init__(self, pool: PipePool | None = None) -> None:
        self.pool = pool if pool is not None else PipePool()
        self._announced: set[int] = set()

    def announce(self, rule: Rule) -> None:
        if rule.id not in self._announced:
            self._announced.add(rule.id)
            log.info(
                "rule {rule}: relaying with splice (zero-copy)",
                event="proxy.splice_selected",
                rule=rule.name,
            )

    def fell_back(self, rule: Rule) -> None:
        log.warn(
            "rule {rule}: the kernel refused splice; relaying in userspace",
            event="proxy.splice_unsupported_fallback",
            rule=rule.name,
        )


class RelayState(enum.Enum):
    DIALING = "dialing"
    RELAYING = "relaying"
    #: Both sockets are being closed; bytes already written still flush.
    CLOSING = "closing"
    CLOSED = "closed"


class _Side(enum.Enum):
    CLIENT = "client"
    TARGET = "target"


def _reset(transport: Any) -> None:
    """Close C{transport} with an RST rather than a FIN, mirroring a reset."""
    handle = transport.getHandle()
    with contextlib.suppress(OSError, AttributeError):
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abortConnection()


@implementer(IProtocol, IHalfCloseableProtocol)
class _Leg:
    """
    One socket of a relay; every event goes to the relay.

    A slotted object rather than a L{Protocol} subclass: one lives as long
    as each socket, and an idle connection should cost little more than
    its sockets.
    """

    __slots__ = ("relay", "transport")

    side: _Side

    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay
        #: A TCP transport: pausable, half-closeable, abortable.
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        self.relay.data_received(self.side, data)

    def readConnectionLost(self) -> None:
        self.relay.eof_received(self.side)

    def writeConnectionLost(self) -> None:
        """Our write shutdown went out; the relay needs nothing more."""

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.relay.leg_lost(self.side, reason)


class _ClientLeg(_Leg):
    __slots__ = ()
    side = _Side.CLIENT

    def connectionMade(self) -> None:
        self.relay.client_connected(self)


class _TargetLeg(_Leg):
    __slots__ = ()
    side = _Side.TARGET

    def connectionMade(self) -> None:
        self.relay.target_connected(self)


class TcpRelay:
    """The life of one proxied TCP connection."""

    __slots__ = (
        "_addresses",
        "_admitted",
        "_client_eof",
        "_client_lost",
        "_dialing",
        "_early",
        "_pending_targets",
        "_port_stats",
        "_runtime",
        "_splice",
        "_target_eof",
        "_target_lost",
        "_throttle_in",
        "_throttle_out",
        "bytes_in",
        "bytes_out",
        "chosen",
        "client",
        "client_address",
        "listen_port",
        "server_address",
        "state",
        "target",
    )

    def __init__(
        self,
        runtime: RuleRuntime,
        listen_port: int,
        client_address: tuple[str, int] | None = None,
        early: bytes = b"",
        server_address: tuple[str, int] | None = None,
    ) -> None:
        """
        @param client_address: the original client when a trusted PROXY
            header named it; by default the peer of the accepted socket.
        @param server_address: the address that client connected to, from
            the same header; by default the local end of the accepted socket.
        @param early: bytes already read from the client (a PROXY header's
            remainder, a peeked ClientHello) to send ahead of the rest.
        """
        self._runtime = runtime
        self._splice: SpliceRelay | None = None
        self.listen_port = listen_port
        self._port_stats = runtime.stats.for_port(listen_port)
        self.client_address = client_address
        self.server_address = server_address
        self.state = RelayState.DIALING
        self.client: _Leg | None = None
        self.target: _Leg | None = None
        self.chosen: Target | None = None
        self._pending_targets = _NO_TARGETS
        #: Addresses a resolved name still has to try; None for an IP literal.
        self._addresses: list[str] | None = None
        self._client_eof = self._target_eof = False
        self._client_lost = self._target_lost = False
        self._early = early
        self._dialing: DialAttempt | None = None
        self._admitted = False
        self._throttle_in: Throttle | None = None
        self._throttle_out: Throttle | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def rule(self) -> Rule:
        return self._runtime.rule

    # -- client side ------------------------------------------------------

    def client_connected(self, leg: _Leg) -> None:
        self.client = leg
        transport = leg.transport
        assert transport is not None
        runtime = self._runtime
        if came_back(runtime.dialed, transport, self.listen_port):
            # One of this process's own dialled sockets (a target that loops).
            self._close_all(reset=True)
            return
        _set_nodelay(transport)
        if self.client_address is None:
            peer = transport.getPeer()
            self.client_address = (peer.host, peer.port)
        refusal = runtime.admit(self.client_address[0])
        if refusal is None:
            refusal = runtime.limiter.admit()
            if refusal is not None:
                runtime.release()
        if refusal is not None:
            log.debug(
                "rule {rule}: connection from {client} refused: {reason}",
                event="rule.rate_limit_reject",
                rule=runtime.rule.name,
                client=self.client_address[0],
                reason=refusal,
            )
            self._close_all(reset=True)
            return
        self._admitted = True
        rule_stats, port_stats = runtime.stats, self._port_stats
        rule_stats.active_connections += 1
        rule_stats.total_connections += 1
        port_stats.active_connections += 1
        port_stats.total_connections += 1
        self._pending_targets = runtime.selector.dial_order(self.client_address[0])
        self._next_target()
        if self.state is RelayState.DIALING:
            # Nothing is read from the client until a target is there to
            # take it.  (A target that answered at once is relaying already.)
            transport.pauseProducing()

    # -- dialling ---------------------------------------------------------

    def _next_target(self) -> None:
        if self.state is not RelayState.DIALING:
            return
        if not self._pending_targets:
            self._all_targets_failed()
            return
        target = self.chosen = self._pending_targets.pop(0)
        if not self._pending_targets:
            self._pending_targets = _NO_TARGETS
        runtime = self._runtime
        resolver = runtime.resolver
        if resolver is None or target.is_ip_literal:
            self._addresses = None
            self._dial(target.host)
            return
        resolver.resolve(target.host, runtime.rule.prefer_ipv6).addCallbacks(
            self._resolved, self._resolve_failed
        )

    def _resolved(self, resolution: Resolution) -> None:
        if self.state is not RelayState.DIALING:
            return
        if resolution.stale:
            self._count_dns_failure(resolution.stale_reason or "stale_answer_served")
        else:
            log.debug(
                "rule {rule}: {host} -> {addresses}",
                event="rule.dns_resolved",
                rule=self.rule.name,
                host=self.chosen.host if self.chosen else None,
                addresses=list(resolution.addresses),
                cached=resolution.from_cache,
            )
        self._addresses = list(resolution.addresses)
        self._dial_address()

    def _resolve_failed(self, failure: Failure) -> None:
        if self.state is not RelayState.DIALING:
            return
        reason = failure.value.reason if isinstance(failure.value, DnsFailure) else "other"
        self._count_dns_failure(reason)
        self._next_target()

    def _count_dns_failure(self, reason: str) -> None:
        assert self.chosen is not None
        self._runtime.stats.dns_failures += 1
        self._port_stats.dns_failures += 1
        log.warn(
            "rule {rule}: resolving {host} failed: {reason}",
            event="rule.dns_failed",
            rule=self.rule.name,
            host=self.chosen.host,
            reason=reason,
        )

    def _dial_address(self) -> None:
        """Dial the next address the chosen target's name resolved to."""
        if self.state is not RelayState.DIALING:
            return
        assert self.chosen is not None
        if not self._addresses:
            self._runtime.selector.record_failure(self.chosen)
            self._next_target()
            return
        self._dial(self._addresses.pop(0))

    def _dial(self, address: str) -> None:
        assert self.chosen is not None
        runtime = self._runtime
        port = runtime.rule.target_port(self.chosen, self.listen_port)
        if runtime.local_guard is not None and runtime.refuse_local(address, port):
            self._dial_failed(Failure(LocalTargetRefused(address)))
            return
        attempt = runtime.dialer.attempt(
            address, port, runtime.connect_timeout, _TargetLeg(self), self._dial_failed
        )
        self._dialing = attempt
        attempt.start()

    def _dial_failed(self, reason: Failure) -> None:
        self._dialing = None
        if self.state is not RelayState.DIALING:
            return
        target = self.chosen
        assert target is not None
        log.info(
            "rule {rule}: dialling {target} failed: {reason}",
            event="rule.target.dial_failed",
            rule=self.rule.name,
            target=target.display(),
            port=self.rule.target_port(target, self.listen_port),
            reason=reason.getErrorMessage(),
        )
        if self._addresses is None:
            self._runtime.selector.record_failure(target)
            self._next_target()
        else:
            self._dial_address()

    def _all_targets_failed(self) -> None:
        self._runtime.stats.connect_failures += 1
        self._port_stats.connect_failures += 1
        self._runtime.selector.record_all_failed(self.listen_port)
        log.warn(
            "rule {rule}: no target reachable for a connection on port {listen_port}",
            event="rule.conn_error",
            rule=self.rule.name,
            listen_port=self.listen_port,
            reason="upstream_connect_failed",
        )
        self._close_all(reset=False)

    def target_connected(self, leg: _Leg) -> None:
        self._dialing = None
        transport = leg.transport
        assert transport is not None
        if self.state is not RelayState.DIALING:
            # The client left while we were dialling.
            transport.loseConnection()
            return
        assert self.chosen is not None
        self.target = leg
        _set_nodelay(transport)
        selector = self._runtime.selector
        selector.record_success(self.chosen)
        selector.connection_opened(self.chosen)
        self.start_relaying(self._prelude() if self.chosen.proxy_protocol is not None else b"")

    def _prelude(self) -> bytes:
        """The PROXY header this target wants, or nothing."""
        assert self.chosen is not None and self.client is not None
        version = self.chosen.proxy_protocol
        if version is None:
            return b""
        assert self.client_address is not None and self.client.transport is not None
        server = self.server_address
        if server is None:
            local = self.client.transport.getHost()
            server = (local.host, local.port)
        try:
            return encode_header(version, self.client_address, server)
        except ProxyProtocolError:
            # An IPv6 client behind an IPv4 listener (or the reverse):
            # the header's two ends must share a family, so name ours by it.
            unspecified = "::" if ":" in self.client_address[0] else "0.0.0.0"
            return encode_header(version, self.client_address, (unspecified, server[1]))

    # -- relaying ---------------------------------------------------------

    def start_relaying(self, prelude: bytes = b"") -> None:
        """
        Join the two sockets.  This is the one place a connection switches
        to bulk transfer, after the prelude (a PROXY header) and any bytes
        already read from the client have been sent to the target.
        """
        assert self.client is not None and self.target is not None
        client, target = self.client.transport, self.target.transport
        assert client is not None and target is not None
        self.state = RelayState.RELAYING
        early, self._early = self._early, b""
        ahead = prelude + early if prelude else early
        context = self._runtime.splice
        if (
            context is not None
            and SpliceRelay.can_take_over(client)
            and SpliceRelay.can_take_over(target)
        ):
            # Splice needs empty transport buffers: put what goes ahead
            # straight on the new socket (it practically always fits).
            sent = _send_now(target, ahead) if ahead else 0
            if sent == len(ahead):
                if early:
                    self.count_in(len(early))
                self._splice = SpliceRelay(
                    self._runtime.reactor, client, target, context.pool, self
                )
                self._splice.start()
                context.announce(self.rule)
                return
            target.write(ahead[sent:])
            self.count_in(len(early))
        else:
            if prelude:
                target.write(prelude)
            if early:
                self.data_received(_Side.CLIENT, early)
        self._start_userspace(client, target)

    # SpliceOwner: what the splice relay reports.

    def count_in(self, n: int) -> None:
        self.bytes_in += n
        self._runtime.stats.bytes_in += n
        self._port_stats.bytes_in += n

    def count_out(self, n: int) -> None:
        self.bytes_out += n
        self._runtime.stats.bytes_out += n
        self._port_stats.bytes_out += n

    def splice_done(self, reset: bool) -> None:
        self._client_eof = self._target_eof = True
        # It has let go of both sockets.
        self._splice = None
        if reset:
            self._close_all(reset=True)
        else:
            self._close_spliced()

    def splice_unsupported(self) -> None:
        context = self._runtime.splice
        assert context is not None
        assert self.client is not None and self.target is not None
        self._splice = None
        context.fell_back(self.rule)
        self._start_userspace(self.client.transport, self.target.transport)

    def _close_spliced(self) -> None:
        """
        Both directions ended and were delivered, both write sides are shut
        and the transports hold nothing: close both sockets now, as their
        transports would one reactor turn later after C{loseConnection()}.
        """
        self.state = RelayState.CLOSING
        for leg in (self.client, self.target):
            if leg is not None and leg.transport is not None and not self._is_lost(leg.side):
                transport = leg.transport
                # Both ways are already shut down (each write side by the
                # splice relay, each read side at its EOF): close() alone
                # ends the socket, without Twisted's shutdown(SHUT_RDWR).
                close_without_shutdown(transport)
                transport.connectionLost(_CONNECTION_DONE)
        self._maybe_finish()

    def _start_userspace(self, client: Any, target: Any) -> None:
        # A target we dialled ourselves is not read until now; one that
        # was spliced stopped being read.
        target.resumeProducing()
        limiter = self._runtime.limiter
        if limiter.caps_bandwidth:
            # Pauses from back-pressure and from a bandwidth throttle go
            # through one gate per side, so neither undoes the other.
            client_gate, target_gate = PauseGate(client), PauseGate(target)
            client.registerProducer(target_gate.producer, True)
            target.registerProducer(client_gate.producer, True)
            self._throttle_in = limiter.throttle_in(client_gate)
            self._throttle_out = limiter.throttle_out(target_gate)
        else:
            client.registerProducer(target, True)
            target.registerProducer(client, True)
            # Fewer, larger reads (Twisted reads its bufferSize at a time);
            # a capped rule keeps the default, which its pacing is tuned to.
            client.bufferSize = target.bufferSize = USERSPACE_BUFFER_SIZE
        if self._client_eof:
            self._shutdown_peer_writes(_Side.CLIENT)
        else:
            client.resumeProducing()

    def data_received(self, side: _Side, data: bytes) -> None:
        if self.state is RelayState.DIALING:
            self._early += data
            return
        if side is _Side.CLIENT:
            assert self.target is not None and self.target.transport is not None
            self.count_in(len(data))
            _forward(self.target.transport, data)
            if self._throttle_in is not None:
                self._throttle_in.consumed(len(data))
        else:
            assert self.client is not None and self.client.transport is not None
            self.count_out(len(data))
            _forward(self.client.transport, data)
            if self._throttle_out is not None:
                self._throttle_out.consumed(len(data))

    def eof_received(self, side: _Side) -> None:
        """A half-close: pass it to the other socket once its writes drain."""
        if side is _Side.CLIENT:
            self._client_eof = True
        else:
            self._target_eof = True
        # An EOF while dialling is remembered and passed on by start_relaying:
        # the client may still want the target's reply.
        if self.state is RelayState.RELAYING:
            self._shutdown_peer_writes(side)

    def _shutdown_peer_writes(self, side: _Side) -> None:
        peer = self.target if side is _Side.CLIENT else self.client
        own = self.client if side is _Side.CLIENT else self.target
        assert peer is not None and own is not None
        assert peer.transport is not None and own.transport is not None
        # The EOF'd side produces nothing more: stop it being resumed.
        _unregister_producer(peer.transport)
        if self._client_eof and self._target_eof:
            _unregister_producer(own.transport)
            own.transport.loseConnection()
            peer.transport.loseConnection()
        else:
            peer.transport.loseWriteConnection()

    def _is_lost(self, side: _Side) -> bool:
        return self._client_lost if side is _Side.CLIENT else self._target_lost

    def leg_lost(self, side: _Side, reason: Failure) -> None:
        leg = self.client if side is _Side.CLIENT else self.target
        if leg is None:
            # A target that connected after the client left, closed at once.
            return
        if side is _Side.CLIENT:
            self._client_lost = True
        else:
            self._target_lost = True
        state = self.state
        if state is RelayState.CLOSING:
            self._maybe_finish()
            return
        if state is RelayState.CLOSED:
            return
        clean = reason.check(ConnectionDone) is not None
        if not clean:
            log.debug(
                "rule {rule}: {side} connection reset: {reason}",
                event="rule.conn_error",
                rule=self.rule.name,
                side=side.value,
                reason=reason.getErrorMessage(),
            )
        self._close_all(reset=not clean)

    def _close_all(self, reset: bool) -> None:
        """
        Close both sockets (gracefully, flushing what is buffered, or with a
        reset).  The relay is finished only once both are gone, so a reply
        still being written counts as a live connection and is drained.
        """
        state = self.state
        if state is RelayState.CLOSING or state is RelayState.CLOSED:
            return
        was_dialing = state is RelayState.DIALING
        self.state = RelayState.CLOSING
        if self._splice is not None:
            self._splice.stop()
            self._splice = None
        if was_dialing and self._dialing is not None:
            self._dialing.cancel()
            self._dialing = None
        for leg in (self.client, self.target):
            if leg is None or self._is_lost(leg.side) or leg.transport is None:
                continue
            if reset:
                _reset(leg.transport)
            else:
                leg.transport.loseConnection()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.state is not RelayState.CLOSING:
            return
        if (self.client is not None and not self._client_lost) or (
            self.target is not None and not self._target_lost
        ):
            return
        self.state = RelayState.CLOSED
        runtime = self._runtime
        for throttle in (self._throttle_in, self._throttle_out):
            if throttle is not None:
                throttle.stop()
        if self.target is not None and self.chosen is not None:
            selector = runtime.selector
            selector.connection_closed(self.chosen)
            selector.add_bytes(self.chosen, self.bytes_in, self.bytes_out)
        if self._admitted:
            runtime.limiter.release()
            runtime.release()
            runtime.stats.active_connections -= 1
            self._port_stats.active_connections -= 1
        runtime.relay_closed(self)
        # Both sockets are gone: drop the legs (each points back here), so
        # reference counting frees the connection without the cyclic GC.
        self.client = self.target = None

    def abort(self) -> None:
        """Cut the connection now (drain deadline passed, rule removed)."""
        if self.state is RelayState.CLOSED:
            return
        if self._splice is not None:
            self._splice.stop()
            self._splice = None
        self.state = RelayState.CLOSING
        for leg in (self.client, self.target):
            if leg is not None and not self._is_lost(leg.side) and leg.transport is not None:
                leg.transport.abortConnection()
        self._maybe_finish()


def _send_now(transport: Any, data: bytes) -> int:
    """Write what fits of C{data} straight to the transport's socket."""
    try:
        return int(transport.socket.send(data))
    except OSError:
        # Would block, or the socket already failed: the transport's own
        # write path sends (or reports) it.
        return 0


def _forward(transport: Any, data: bytes) -> None:
    """
    Relay C{data} to C{transport}: straight to its socket while nothing is
    queued in it, the rest (if the socket is full) through its own write
    path, which keeps the order and pauses the producer as usual.

    Twisted's C{write()} only queues and sends on the next turn of the
    reactor, after two C{epoll_ctl} calls and a wakeup; sending at once
    saves those for every chunk of a busy stream.
    """
    if SpliceRelay.can_take_over(transport) and transport.connected and not transport.disconnecting:
        sent = _send_now(transport, data)
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _unregister_producer(transport: Any) -> None:
    if transport.producer is not None:
        transport.unregisterProducer()


def _set_nodelay(transport: Any) -> None:
    set_nodelay = getattr(transport, "setTcpNoDelay", None)
    if set_nodelay is not None:
        try:  # noqa: SIM105 -- no context manager per connection
            set_nodelay(True)
        except OSError:
            pass


def client_leg_for(relay: TcpRelay) -> IProtocol:
    """The protocol that gives an accepted socket to C{relay}."""
    return _ClientLeg(relay)


class InboundFactory(ServerFactory):
    """Accepts client connections on one listen port of one rule."""

    noisy = False

    def __init__(
        self,
        runtime: RuleRuntime,
        listen_port: int,
    ) -> None:
        self.runtime = runtime
        self.listen_port = listen_port

    def buildProtocol(self, addr: Any) -> IProtocol:  # type: ignore[override]
        runtime = self.runtime
        relay = TcpRelay(runtime, self.listen_port)
        runtime.relay_opened(relay)
        return _ClientLeg(relay)
