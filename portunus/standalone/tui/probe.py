"""
The TUI's own reachability check: a TCP connect to each TCP rule's active
target every 2 s, given 1 s (Portunus §10).  It measures the path from
the operator's host, which is usually the forwarder's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from portunus.reactors import IStatsClientReactor
from portunus.standalone.tui.feed import RuleInfo

__all__ = ["PROBE_INTERVAL_SECS", "PROBE_TIMEOUT_SECS", "ProbeResult", "Prober"]

PROBE_INTERVAL_SECS = 2.0
PROBE_TIMEOUT_SECS = 1.0
#: Probes in flight at once, however many rules there are.
MAX_IN_FLIGHT = 64


@attrs.frozen
class ProbeResult:
    """C{ok} with the connect time, C{timeout}, or C{down} (refused, unreachable ...)."""

    state: str
    rtt_ms: float | None = None


def _dial(reactor: IStatsClientReactor, host: str, port: int) -> Deferred[Any]:
    endpoint = HostnameEndpoint(reactor, host, port, timeout=PROBE_TIMEOUT_SECS)
    return endpoint.connect(Factory.forProtocol(Protocol))


class Prober:
    """Probes the active target of every TCP rule, one probe per rule at a time."""

    def __init__(
        self,
        reactor: IStatsClientReactor,
        rules: Callable[[], Iterable[RuleInfo]],
        on_result: Callable[[str, ProbeResult], None],
        dial: Callable[[IStatsClientReactor, str, int], Deferred[Any]] = _dial,
    ) -> None:
        self._reactor = reactor
        self._rules = rules
        self._on_result = on_result
        self._dial = dial
        self._in_flight: dict[str, Deferred[Any]] = {}
        self._loop = LoopingCall(self.probe_all)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(PROBE_INTERVAL_SECS, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        pending = list(self._in_flight.values())
        self._in_flight.clear()
        for d in pending:
            d.cancel()

    def probe_all(self) -> None:
        for rule in self._rules():
            target = rule.active_target
            if rule.proto != "tcp" or target is None or rule.id in self._in_flight:
                continue
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                return
            self._probe(rule.id, target.host, target.port)

    def _probe(self, rule_id: str, host: str, port: int) -> None:
        started = self._reactor.seconds()
        d = self._dial(self._reactor, host, port)
        self._in_flight[rule_id] = d
        d.addTimeout(PROBE_TIMEOUT_SECS, self._reactor)

        def connected(protocol: Any) -> ProbeResult:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return ProbeResult("ok", (self._reactor.seconds() - started) * 1000)

        def failed(failure: Failure) -> ProbeResult | None:
            if failure.check(CancelledError) and rule_id not in self._in_flight:
                return None  # stopped
            if failure.check(DeferredTimeout, ConnectTimeout, CancelledError):
                return ProbeResult("timeout")
            return ProbeResult("down")

        def report(result: ProbeResult | None) -> None:
            self._in_flight.pop(rule_id, None)
            if result is not None:
                self._on_result(rule_id, result)

        d.addCallbacks(connected, failed).addCallback(report)
