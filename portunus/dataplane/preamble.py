"""
What a connection sends before its relay starts: a PROXY header from a
trusted load balancer, a TLS ClientHello that picks the rule by SNI, or
both (in that order).

A L{Preamble} protocol reads just enough of those, under one time limit
per stage, then hands the socket to a L{TcpRelay} of the chosen rule with
the original client address and every byte read so far (replayed verbatim
to the target).  Connections that need neither use the relay directly.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from portunus.dataplane.descriptors import DescriptorBudget
from portunus.dataplane.proxyprotocol import (
    HEADER_READ_TIMEOUT_SECS,
    ProxyHeaderReader,
    ProxyHeaderRejected,
    TrustedSources,
)
from portunus.dataplane.runtime import RuleRuntime
from portunus.dataplane.selfconnect import DialedSockets, came_back
from portunus.dataplane.sni import (
    PEEK_TIMEOUT_SECS,
    ClientHelloError,
    ClientHelloParser,
    SniCounters,
    SniRouteTable,
)
from portunus.dataplane.stats import LogThrottle
from portunus.dataplane.tcp import TcpRelay, client_leg_for

__all__ = ["ListenerRoutes", "Preamble", "PreambleFactory"]

log = Logger()


class ListenerRoutes:
    """
    How one listening port picks the rule of a connection: a single rule,
    or an SNI route table shared by several; optionally behind PROXY headers.
    """

    def __init__(
        self,
        single: RuleRuntime | None = None,
        trusted: TrustedSources | None = None,
    ) -> None:
        self.single = single
        self.trusted = trusted
        self.sni: SniRouteTable[RuleRuntime] | None = (
            None if single is not None else SniRouteTable()
        )
        self.counters = SniCounters()

    @property
    def rule_label(self) -> str:
        if self.single is not None:
            return self.single.rule.name
        return "sni:" + ",".join(r.rule.name for _, r in self.sni or ())


class Preamble(Protocol):
    """Reads the PROXY header and/or ClientHello of one connection."""

    def __init__(
        self,
        routes: ListenerRoutes,
        listen_port: int,
        clock: IReactorTime,
        on_done: Any = None,
        dialed: DialedSockets | None = None,
    ) -> None:
        """
        @param on_done: called once, when the socket is handed over or closed.
        @param dialed: this process's dialled sockets: a connection from one
            is closed at once.
        """
        self._on_done = on_done
        self._dialed = dialed
        self._routes = routes
        self._port = listen_port
        self._clock = clock
        self._proxy: ProxyHeaderReader | None = None
        self._hello: ClientHelloParser | None = None
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int] | None = None
        self._timer: IDelayedCall | None = None
        self._done = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        if came_back(self._dialed, self.transport, self._port):
            self._close()
            return
        peer: Any = self.transport.getPeer()
        self._client = (peer.host, peer.port)
        trusted = self._routes.trusted
        if trusted is not None:
            try:
                trusted.check(peer.host)
            except ProxyHeaderRejected as e:
                self._refuse_proxy(e)
                return
            self._proxy = ProxyHeaderReader()
            self._start_timer(HEADER_READ_TIMEOUT_SECS, self._proxy_timeout)
        elif self._routes.sni is not None:
            self._start_hello()

    def _start_timer(self, seconds: float, expired: Any) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.callLater(seconds, expired)

    def _start_hello(self) -> None:
        self._hello = ClientHelloParser()
        self._start_timer(PEEK_TIMEOUT_SECS, self._hello_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        if self._proxy is not None:
            try:
                header = self._proxy.feed(data)
            except ProxyHeaderRejected as e:
                self._refuse_proxy(e)
                return
            if header is None:
                return
            self._proxy = None
            if header.source is not None:
                self._client = header.source
                self._server = header.destination
            data = header.remaining
            if self._routes.sni is None:
                assert self._routes.single is not None
                self._hand_over(self._routes.single, data)
                return
            self._start_hello()
            if not data:
                return
        assert self._hello is not None
        try:
            hello = self._hello.feed(data)
        except ClientHelloError as e:
            self._hello_failed(e)
            return
        if hello is not None:
            self._route(hello.server_name, hello.captured)

    def _route(self, server_name: str | None, captured: bytes) -> None:
        assert self._routes.sni is not None
        found = self._routes.sni.lookup(server_name)
        self._routes.counters.count(found[1] if found else None)
        if found is None:
            log.info(
                "port {port}: no rule for TLS server name {server_name}; dropped",
                event="tls.sni_no_match" if server_name else "tls.no_sni",
                port=self._port,
                server_name=server_name,
                client=self._client[0] if self._client else None,
            )
            self._close()
            return
        runtime, kind = found
        if server_name is None:
            log.debug(
                "port {port}: ClientHello without SNI goes to the fallback rule {rule}",
                event="tls.no_sni",
                port=self._port,
                rule=runtime.rule.name,
            )
        log.debug(
            "port {port}: {server_name} -> rule {rule} ({kind})",
            event="tls.sni_routed",
            port=self._port,
            server_name=server_name,
            rule=runtime.rule.name,
            kind=kind,
        )
        self._hand_over(runtime, captured)

    def _finished(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done()

    def _hand_over(self, runtime: RuleRuntime, early: bytes) -> None:
        self._done = True
        self._finished()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        transport = self.transport
        assert transport is not None
        relay = TcpRelay(
            runtime,
            self._port,
            client_address=self._client,
            early=early,
            server_address=self._server,
        )
        runtime.relay_opened(relay)
        leg = client_leg_for(relay)
        transport.protocol = leg  # type: ignore[attr-defined]
        leg.makeConnection(transport)

    def _refuse_proxy(self, error: ProxyHeaderRejected) -> None:
        log.info(
            "port {port}: PROXY header refused ({reason}): {detail}",
            event="rule.proxy_header_rejected",
            port=self._port,
            rule=self._routes.rule_label,
            reason=error.reason,
            detail=error.detail,
            peer=self._client[0] if self._client else None,
        )
        self._close()

    def _proxy_timeout(self) -> None:
        assert self._proxy is not None
        self._refuse_proxy(self._proxy.timed_out())

    def _hello_timeout(self) -> None:
        self._routes.counters.count(None)
        log.info(
            "port {port}: no complete TLS ClientHello within {secs}s; dropped",
            event="tls.client_hello_timeout",
            port=self._port,
            secs=PEEK_TIMEOUT_SECS,
        )
        self._close()

    def _hello_failed(self, error: ClientHelloError) -> None:
        self._routes.counters.count(None)
        log.info(
            "port {port}: could not read a TLS ClientHello ({reason}); dropped",
            event="tls.parse_failed",
            port=self._port,
            reason=error.reason,
        )
        self._close()

    def _close(self) -> None:
        self._done = True
        self._finished()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._done:
            return
        self._done = True
        self._finished()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._proxy is not None:
            rejected = self._proxy.connection_lost()
            if rejected is not None:
                self._refuse_proxy(rejected)


class PreambleFactory(ServerFactory):
    """
    Accepts connections on one port whose rule is chosen by a preamble.

    While a connection's preamble is read it holds one descriptor of the
    process's budget, and a port holds at most C{max_conns_per_rule} such
    connections (a slow or silent client must not hold the port's rules
    off); refusals are counted on the port's rule when it has only one.
    """

    noisy = False

    def __init__(
        self,
        routes: ListenerRoutes,
        listen_port: int,
        clock: IReactorTime,
        budget: DescriptorBudget | None = None,
        dialed: DialedSockets | None = None,
    ) -> None:
        self.routes = routes
        self.listen_port = listen_port
        self._clock = clock
        self._budget = budget
        self._dialed = dialed
        #: Connections whose preamble is being read.
        self.pending = 0
        self._throttle = LogThrottle()

    def buildProtocol(self, addr: Any) -> Protocol | None:
        on_done = None
        budget = self._budget
        if budget is not None:
            if not self._admit(budget, addr.host):
                return None
            self.pending += 1
            on_done = self._done
        protocol = Preamble(self.routes, self.listen_port, self._clock, on_done, self._dialed)
        protocol.factory = self
        return protocol

    def _admit(self, budget: DescriptorBudget, client: str) -> bool:
        single = self.routes.single
        if self.pending >= budget.per_rule:
            if single is not None:
                single.stats.conn_cap_rejects += 1
            self._refused(client, "{pending} connections are still sending their preamble")
            return False
        if not budget.take(1):
            if single is not None:
                single.stats.fd_reserve_rejects += 1
            self._refused(client, "the process is down to its descriptor reserve (reserve_fds)")
            return False
        return True

    def _refused(self, client: str, why: str) -> None:
        held = self._throttle.allow(self._clock.seconds())
        if held is not None:
            log.warn(
                "port {port}: " + why + "; a connection from {client} refused "
                "({held} more since the last report)",
                event="rule.preamble_refused",
                port=self.listen_port,
                pending=self.pending,
                client=client,
                held=held,
            )

    def _done(self) -> None:
        self.pending -= 1
        if self._budget is not None:
            self._budget.give_back(1)
