"""
Tests for L{portunus.standalone.tui.probe}: the TUI's TCP connect probe.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.standalone.tui.feed import parse_hello
from portunus.standalone.tui.probe import PROBE_INTERVAL_SECS, Prober, ProbeResult
from tests._net import LOOPBACK, free_port
from tests.standalone.tui._data import hello, hello_message

reactor: Any = _reactor


class FakeDial:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, Deferred[Any]]] = []

    def __call__(self, reactor: Any, host: str, port: int) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((host, port, d))
        return d


class ProberTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dial = FakeDial()
        self.results: list[tuple[str, ProbeResult]] = []
        rules = hello().rules
        self.prober = Prober(
            self.clock, lambda: rules, lambda i, r: self.results.append((i, r)), self.dial
        )

    def test_active_targets_of_tcp_rules(self) -> None:
        """Each TCP rule's lowest-priority target is dialled; UDP rules are not."""
        self.prober.start()
        self.assertEqual(
            [(host, port) for host, port, _ in self.dial.calls],
            [("10.0.0.5", 80), ("::1", 7000)],
        )

    def test_rtt_timeout_and_down(self) -> None:
        """A connect reports its time; 1 s without one is a timeout; a refusal is down."""
        self.prober.start()
        (_, _, web), (_, _, alpha) = self.dial.calls
        self.clock.advance(0.012)
        connected = Protocol()
        web.callback(connected)
        alpha.errback(ConnectionRefusedError())
        self.assertEqual(self.results[0][0], "1")
        self.assertAlmostEqual(self.results[0][1].rtt_ms, 12.0)  # type: ignore[arg-type]
        self.assertEqual(self.results[1], ("2", ProbeResult("down")))
        self.clock.advance(PROBE_INTERVAL_SECS - 0.012)
        _, _, web_again = self.dial.calls[2]
        self.clock.advance(1.0)
        self.assertEqual(
            self.results[-2:], [("1", ProbeResult("timeout")), ("2", ProbeResult("timeout"))]
        )
        self.assertTrue(web_again.called)

    def test_one_probe_per_rule_at_a_time(self) -> None:
        """A rule whose probe is still out is not probed again."""
        self.prober.start()
        self.prober.probe_all()
        self.assertEqual(len(self.dial.calls), 2)

    def test_stop_is_silent(self) -> None:
        """Stopping cancels probes in flight without reporting them."""
        self.prober.start()
        self.prober.stop()
        self.assertEqual(self.results, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RealProbeTests(TestCase):
    timeout = 10

    def test_listening_and_closed(self) -> Any:
        """Against 127.0.0.1: a listening port is ok with an RTT, a closed one is down."""
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface=LOOPBACK)
        self.addCleanup(port.stopListening)

        message = hello_message()
        message["rules"][0]["targets"] = [
            {"host": LOOPBACK, "port": port.getHost().port, "priority": 0, "proxy_protocol": None}
        ]
        message["rules"][1]["targets"] = [
            {"host": LOOPBACK, "port": free_port(), "priority": 0, "proxy_protocol": None}
        ]
        rules = parse_hello(message).rules
        done: Deferred[None] = Deferred()
        results: dict[str, ProbeResult] = {}

        def got(rule_id: str, result: ProbeResult) -> None:
            results[rule_id] = result
            if len(results) == 2 and not done.called:
                done.callback(None)

        prober = Prober(reactor, lambda: rules, got)
        prober.start()
        self.addCleanup(prober.stop)

        def check(_: None) -> None:
            self.assertEqual(results["1"].state, "ok")
            self.assertGreaterEqual(results["1"].rtt_ms, 0)  # type: ignore[arg-type]
            self.assertEqual(results["2"], ProbeResult("down"))

        return done.addCallback(check)
