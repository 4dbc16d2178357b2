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
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portunus.dataplane.splice import PipePool, SpliceRelay
from portunus.dataplane.stats import PortStats, RuleStats
from portunus.model import Rule, Target

__all__ = [
    "CONNECT_TIMEOUT_SECS",
    "InboundFactory",
    "RelayState",
    "SpliceContext",
    "TcpRelay",
]

log = Logger()

#: Per-attempt timeout for dialling a target (Portunus: 3 s).
CONNECT_TIMEOUT_SECS = 3.0

_LINGER_RESET = struct.pack("ii", 1, 0)
_CONNECTION_DONE = Failure(ConnectionDone())


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


@implementer(IHalfCloseableProtocol)
class _Leg(Protocol):
    """One socket of a relay; every event goes to the relay."""

    #: A TCP transport: pausable, half-closeable, abortable.
    transport: Any

    def __init__(self, relay: TcpRelay, side: _Side) -> None:
        self.relay = relay
        self.side = side

    def dataReceived(self, data: bytes) -> None:
        self.relay.data_received(self.side, data)

    def readConnectionLost(self) -> None:
        self.relay.eof_received(self.side)

    def writeConnectionLost(self) -> None:
        """Our write shutdown went out; the relay needs nothing more."""

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.relay.leg_lost(self.side, reason)


class _ClientLeg(_Leg):
    def __init__(self, relay: TcpRelay) -> None:
        super().__init__(relay, _Side.CLIENT)

    def connectionMade(self) -> None:
        self.relay.client_connected(self)


class _TargetLeg(_Leg):
    def __init__(self, relay: TcpRelay) -> None:
        super().__init__(relay, _Side.TARGET)

    def connectionMade(self) -> None:
        self.relay.target_connected(self)


class _TargetFactory(ClientFactory):
    """Dials one target for one relay; failures go back to the relay."""

    noisy = False

    def __init__(self, relay: TcpRelay, target: Target) -> None:
        self.relay = relay
        self.target = target

    def buildProtocol(self, addr: Any) -> Protocol:
        leg = _TargetLeg(self.relay)
        leg.factory = self
        return leg

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.relay.dial_failed(self.target, reason)


class TcpRelay:
    """The life of one proxied TCP connection."""

    def __init__(
        self,
        reactor: Any,
        rule: Rule,
        listen_port: int,
        rule_stats: RuleStats,
        port_stats: PortStats,
        on_closed: Callable[[TcpRelay], None],
        connect_timeout: float = CONNECT_TIMEOUT_SECS,
        splice: SpliceContext | None = None,
    ) -> None:
        self._reactor = reactor
        self._splice_context = splice
        self._splice: SpliceRelay | None = None
        self.rule = rule
        self.listen_port = listen_port
        self._rule_stats = rule_stats
        self._port_stats = port_stats
        self._on_closed = on_closed
        self._connect_timeout = connect_timeout
        self.state = RelayState.DIALING
        self.client: _Leg | None = None
        self.target: _Leg | None = None
        self._pending_targets: list[Target] = []
        self._eof = {_Side.CLIENT: False, _Side.TARGET: False}
        self._early: list[bytes] = []
        self._lost: set[_Side] = set()
        self._dialing: Any = None

    # -- client side ------------------------------------------------------

    def client_connected(self, leg: _Leg) -> None:
        self.client = leg
        transport = leg.transport
        assert transport is not None
        # Nothing is read from the client until a target is there to take it.
        transport.pauseProducing()
        _set_nodelay(transport)
        for stats in (self._rule_stats, self._port_stats):
            stats.active_connections += 1
            stats.total_connections += 1
        self._pending_targets = list(self.rule.targets_by_priority())
        self._dial_next()

    # -- dialling ---------------------------------------------------------

    def _dial_next(self) -> None:
        if self.state is not RelayState.DIALING:
            return
        target = self._pending_targets.pop(0)
        port = self.rule.target_port(target, self.listen_port)
        self._dialing = self._reactor.connectTCP(
            target.host, port, _TargetFactory(self, target), timeout=self._connect_timeout
        )

    def dial_failed(self, target: Target, reason: Failure) -> None:
        self._dialing = None
        if self.state is not RelayState.DIALING:
            return
        port = self.rule.target_port(target, self.listen_port)
        log.info(
            "rule {rule}: dialling {target_host}:{target_port} failed: {reason}",
            event="rule.target.dial_failed",
            rule=self.rule.name,
            target_host=target.host,
            target_port=port,
            reason=reason.getErrorMessage(),
        )
        if self._pending_targets:
            self._dial_next()
            return
        for stats in (self._rule_stats, self._port_stats):
            stats.connect_failures += 1
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
        if self.state is not RelayState.DIALING:
            # The client left while we were dialling.
            assert leg.transport is not None
            leg.transport.loseConnection()
            return
        self.target = leg
        assert leg.transport is not None
        _set_nodelay(leg.transport)
        self.start_relaying()

    # -- relaying ---------------------------------------------------------

    def start_relaying(self) -> None:
        """
        Join the two sockets.  This is the one place a connection switches
        to bulk transfer, after any prelude has been written.
        """
        assert self.client is not None and self.target is not None
        client, target = self.client.transport, self.target.transport
        assert client is not None and target is not None
        self.state = RelayState.RELAYING
        if self._try_splice(client, target):
            return
        self._start_userspace(client, target)

    def _try_splice(self, client: Any, target: Any) -> bool:
        context = self._splice_context
        if (
            context is None
            or self._early
            or not SpliceRelay.can_take_over(client)
            or not SpliceRelay.can_take_over(target)
        ):
            return False
        self._splice = SpliceRelay(
            self._reactor,
            client,
            target,
            context.pool,
            self._count_in,
            self._count_out,
            self._splice_done,
            self._splice_unsupported,
        )
        self._splice.start()
        context.announce(self.rule)
        return True

    def _count_in(self, n: int) -> None:
        self._rule_stats.bytes_in += n
        self._port_stats.bytes_in += n

    def _count_out(self, n: int) -> None:
        self._rule_stats.bytes_out += n
        self._port_stats.bytes_out += n

    def _splice_done(self, reset: bool) -> None:
        self._eof[_Side.CLIENT] = self._eof[_Side.TARGET] = True
        self._close_all(reset=reset)

    def _splice_unsupported(self) -> None:
        assert self._splice_context is not None
        assert self.client is not None and self.target is not None
        self._splice = None
        self._splice_context.fell_back(self.rule)
        self._start_userspace(self.client.transport, self.target.transport)
        if self.target.transport is not None:
            self.target.transport.resumeProducing()

    def _start_userspace(self, client: Any, target: Any) -> None:
        for chunk in self._early:
            self.data_received(_Side.CLIENT, chunk)
        self._early.clear()
        client.registerProducer(target, True)
        target.registerProducer(client, True)
        if self._eof[_Side.CLIENT]:
            self._shutdown_peer_writes(_Side.CLIENT)
        else:
            client.resumeProducing()

    def data_received(self, side: _Side, data: bytes) -> None:
        if self.state is RelayState.DIALING:
            self._early.append(data)
            return
        if side is _Side.CLIENT:
            assert self.target is not None and self.target.transport is not None
            self._rule_stats.bytes_in += len(data)
            self._port_stats.bytes_in += len(data)
            self.target.transport.write(data)
        else:
            assert self.client is not None and self.client.transport is not None
            self._rule_stats.bytes_out += len(data)
            self._port_stats.bytes_out += len(data)
            self.client.transport.write(data)

    def eof_received(self, side: _Side) -> None:
        """A half-close: pass it to the other socket once its writes drain."""
        self._eof[side] = True
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
        if all(self._eof.values()):
            _unregister_producer(own.transport)
            own.transport.loseConnection()
            peer.transport.loseConnection()
        else:
            peer.transport.loseWriteConnection()

    def leg_lost(self, side: _Side, reason: Failure) -> None:
        leg = self.client if side is _Side.CLIENT else self.target
        if leg is None:
            # A target that connected after the client left, closed at once.
            return
        self._lost.add(side)
        if self.state is RelayState.CLOSING:
            self._maybe_finish()
            return
        if self.state is RelayState.CLOSED:
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
        if self.state in (RelayState.CLOSING, RelayState.CLOSED):
            return
        was_dialing = self.state is RelayState.DIALING
        self.state = RelayState.CLOSING
        if self._splice is not None:
            self._splice.stop()
        if was_dialing and self._dialing is not None:
            self._dialing.disconnect()
            self._dialing = None
        for leg in (self.client, self.target):
            if leg is None or leg.side in self._lost or leg.transport is None:
                continue
            if reset:
                _reset(leg.transport)
            else:
                leg.transport.loseConnection()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        legs = {leg.side for leg in (self.client, self.target) if leg is not None}
        if self.state is not RelayState.CLOSING or not legs <= self._lost:
            return
        self.state = RelayState.CLOSED
        for stats in (self._rule_stats, self._port_stats):
            stats.active_connections -= 1
        self._on_closed(self)

    def abort(self) -> None:
        """Cut the connection now (drain deadline passed, rule removed)."""
        if self.state is RelayState.CLOSED:
            return
        if self._splice is not None:
            self._splice.stop()
        self.state = RelayState.CLOSING
        for leg in (self.client, self.target):
            if leg is not None and leg.side not in self._lost and leg.transport is not None:
                leg.transport.abortConnection()
        self._maybe_finish()


def _unregister_producer(transport: Any) -> None:
    if transport.producer is not None:
        transport.unregisterProducer()


def _set_nodelay(transport: Any) -> None:
    if ITCPTransport.providedBy(transport):
        with contextlib.suppress(OSError):
            transport.setTcpNoDelay(True)


class InboundFactory(Factory):
    """Accepts client connections on one listen port of one rule."""

    noisy = False

    def __init__(
        self,
        reactor: Any,
        rule: Rule,
        listen_port: int,
        rule_stats: RuleStats,
        on_opened: Callable[[TcpRelay], None],
        on_closed: Callable[[TcpRelay], None],
        connect_timeout: float = CONNECT_TIMEOUT_SECS,
        splice: SpliceContext | None = None,
    ) -> None:
        self._reactor = reactor
        self._splice = splice
        self.rule = rule
        self.listen_port = listen_port
        self._rule_stats = rule_stats
        self._port_stats = rule_stats.for_port(listen_port)
        self._on_opened = on_opened
        self._on_closed = on_closed
        self._connect_timeout = connect_timeout

    def buildProtocol(self, addr: Any) -> Protocol:
        relay = TcpRelay(
            self._reactor,
            self.rule,
            self.listen_port,
            self._rule_stats,
            self._port_stats,
            self._on_closed,
            self._connect_timeout,
            self._splice,
        )
        self._on_opened(relay)
        leg = _ClientLeg(relay)
        leg.factory = self
        return leg
