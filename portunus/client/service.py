"""
The edge client as a Twisted service: one control link to the server, kept
up with jittered exponential backoff, feeding an L{EdgeAgent}.

- Backoff: full jitter, C{uniform(0, min(initial * 2**attempt, max))},
  500 ms .. 30 s by default; the attempt count resets on every connect.
- A server whose certificate does not match the bundle's pin is never sent
  the token: C{control.tls_pinned_mismatch} (expected, got) is logged and
  the process exits 1.
- A refused token (C{token_not_found}, C{token_revoked}) is terminal:
  C{auth.failure} is logged, retrying stops and the edge stops forwarding.
- A lost link is not: the edge keeps forwarding its rules while it
  reconnects, and the server's replay reconciles them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from portunus.client.agent import EdgeAgent
from portunus.client.forwarding import EdgeForwarder
from portunus.client.session import ClientSession
from portunus.compat import clear_exit_signal
from portunus.control.enrollment import Bundle, parse_endpoint
from portunus.control.tls import PinMismatch, PinnedClientTLS
from portunus.dataplane.localaddrs import LocalAddresses
from portunus.dataplane.workers.forwarder import WorkerForwarder
from portunus.exitcode import stop_with_status
from portunus.reactors import IProcessReactor

__all__ = ["EdgeClientService", "WorkerPoolService", "full_jitter_backoff"]

log = Logger()

#: TCP connect timeout of the control link, seconds.
CONNECT_TIMEOUT = 10


def full_jitter_backoff(
    initial: float, maximum: float, rng: Callable[[], float] = random.random
) -> Callable[[int], float]:
    """A ClientService retry policy: uniform(0, min(initial * 2**attempt, maximum))."""

    def policy(attempt: int) -> float:
        ceiling = min(initial * (2 ** min(attempt, 32)), maximum)
        return rng() * ceiling

    return policy


class EdgeClientService(MultiService):
    """Keeps the control link up and the agent in step with the server."""

    def __init__(
        self,
        bundle: Bundle,
        reactor: IProcessReactor,
        forwarder: EdgeForwarder,
        *,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        drain_timeout: float = 30.0,
        stats_interval: float = 5.0,
        endpoint: Any = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__()
        self.bundle = bundle
        self._reactor = reactor
        addresses = LocalAddresses(reactor)
        self.agent = EdgeAgent(forwarder, drain_timeout, addresses.current)
        self._stats_interval = stats_interval
        self.session: ClientSession | None = None
        self.terminal_reason: str | None = None
        self._tls = PinnedClientTLS(bundle.server_cert_sha256)
        if endpoint is None:
            host, port = parse_endpoint(bundle.server_endpoint)
            endpoint = wrapClientTLS(
                self._tls, HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
            )
        sessions = Factory.forProtocol(self._build_session)
        sessions.noisy = False
        self._backoff = full_jitter_backoff(initial_delay, max_delay, rng)
        self.connector = ClientService(
            endpoint, sessions, retryPolicy=self._retry_delay, clock=reactor
        )
        self.connector.setServiceParent(self)

    def _retry_delay(self, attempt: int) -> float:
        """The backoff's delay before C{attempt}, logged in milliseconds."""
        delay = self._backoff(attempt)
        log.info(
            "connecting to {endpoint} again in {delay_secs}s (attempt {attempt})",
            event="control.retry_scheduled",
            endpoint=self.bundle.server_endpoint,
            attempt=attempt,
            delay_secs=round(delay, 3),
        )
        return delay

    def _build_session(self) -> ClientSession:
        return ClientSession(
            self.agent, self.bundle.token, self._reactor, self, self._stats_interval
        )

    def startService(self) -> None:
        log.info(
            "edge {client_name} connecting to {endpoint}",
            event="client.starting",
            client_name=self.bundle.client_name,
            client_id=self.bundle.client_id,
            endpoint=self.bundle.server_endpoint,
        )
        super().startService()

    # -- session events --------------------------------------------------

    def session_welcomed(self, session: ClientSession, welcome: dict[str, Any]) -> None:
        self.session = session
        log.info(
            "connected to server {endpoint} (version {server_version}) as {client_name}",
            event="control.connected",
            endpoint=self.bundle.server_endpoint,
            server_version=welcome.get("server_version"),
            client_name=welcome.get("client_name"),
            client_id=welcome.get("client_id"),
        )

    def session_refused(self, session: ClientSession, reason: str) -> None:
        self.terminal_reason = reason
        log.error(
            "the server refused this client's token ({reason}); not retrying. "
            "Re-enroll the edge: portunus-server enroll-client, then portunus-client enroll",
            event="auth.failure",
            reason=reason,
        )
        self.agent.stop_all(reason)
        self._stop_connecting()

    def _stop_connecting(self) -> None:
        """No more connection attempts; detached, so shutdown does not stop it twice."""
        if self.connector.parent is self:
            self.removeService(self.connector)

    def session_lost(self, session: ClientSession, reason: Failure) -> None:
        if session is self.session:
            self.session = None
        mismatch = reason.value
        if isinstance(mismatch, PinMismatch):
            log.critical(
                "the server at {endpoint} presented certificate {got}, not the pinned "
                "{expected}; refusing to send the token. If the server's certificate "
                "was replaced on purpose, re-enroll this edge",
                event="control.tls_pinned_mismatch",
                endpoint=self.bundle.server_endpoint,
                expected=mismatch.expected,
                got=mismatch.got,
            )
            self.terminal_reason = "tls_pinned_mismatch"
            self._stop_connecting()
            stop_with_status(self._reactor, 1)
            return
        if self.terminal_reason is None and session.welcome is not None:
            log.warn(
                "control link to {endpoint} lost ({why}); still forwarding "
                "{count} rule(s) while reconnecting",
                event="control.disconnected",
                endpoint=self.bundle.server_endpoint,
                why=reason.getErrorMessage(),
                count=len(self.agent.rules),
            )

    def stopService(self) -> Deferred[Any]:
        stopped = super().stopService()

        def drain(_: object) -> Deferred[Any]:
            return self.agent.stop()

        def done(_: object) -> None:
            log.info("edge stopped", event="client.stopped")
            # twistd re-raises the stopping signal at exit; a completed
            # drain is a clean shutdown and exits 0 (as the standalone does).
            clear_exit_signal(self._reactor)

        d = self.agent.stop() if stopped is None else stopped.addCallback(drain)
        return d.addCallback(done)


class WorkerPoolService(Service):
    """
    Starts an edge's workers (C{--workers N}) with the edge.  Stopping them
    is the edge's: its agent's stop() drains every rule and lets the
    workers exit.
    """

    def __init__(self, forwarder: WorkerForwarder) -> None:
        self.forwarder = forwarder

    def startService(self) -> None:
        super().startService()
        self.forwarder.start()
