"""
Multi-target failover: passive health, dial order, balance modes and active
probes on a deterministic clock, plus one probe round over real sockets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Sequence
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane.failover import (
    ActiveProber,
    Health,
    TargetSelector,
)
from portunus.model import Balance, PortRange, Rule, Target
from portunus.model import Protocol as Proto
from tests._net import LOOPBACK, free_port

reactor: Any = _reactor

HEALTHY = Health.HEALTHY
FAILED = Health.FAILED


def target(host: str, port: int = 80, priority: int = 0, weight: int = 1) -> Target:
    return Target(host=host, ports=PortRange.single(port), priority=priority, weight=weight)


def make_rule(
    *targets: Target,
    balance: Balance = Balance.FAILOVER,
    interval: int | None = None,
) -> Rule:
    return Rule(
        name="web",
        protocol=Proto.TCP,
        listen=PortRange.single(8080),
        targets=targets,
        balance=balance,
        health_check_interval_secs=interval,
    )


def events_named(events: Sequence[LogEvent], name: str) -> list[LogEvent]:
    return [e for e in events if e.get("event") == name]


A = target("10.0.0.1")
B = target("10.0.0.2")
C = target("10.0.0.3")
D = target("10.0.0.4")


class SelectorCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def selector(self, *targets: Target, **kwargs: Any) -> TargetSelector:
        return TargetSelector(make_rule(*targets, **kwargs), self.clock)

    def fail_n(self, selector: TargetSelector, t: Target, times: int = 3) -> None:
        for _ in range(times):
            selector.record_failure(t)


class PassiveHealthTests(SelectorCase):
    def test_starts_healthy(self) -> None:
        """Every target starts healthy: health is not persisted."""
        selector = self.selector(A, B)
        self.assertEqual([selector.health(t) for t in (A, B)], [HEALTHY, HEALTHY])

    def test_three_failures_within_window_fail(self) -> None:
        """Three consecutive failures inside 30 s mark a target failed."""
        selector = self.selector(A, B)
        for delay in (0, 14, 15):
            self.clock.advance(delay)
            selector.record_failure(A)
        self.assertEqual(selector.health(A), FAILED)
        self.assertEqual(selector.health(B), HEALTHY)

    def test_two_failures_do_not_fail(self) -> None:
        """Two failures are not enough."""
        selector = self.selector(A)
        self.fail_n(selector, A, times=2)
        self.assertEqual(selector.health(A), HEALTHY)

    def test_failures_spread_over_window_do_not_fail(self) -> None:
        """Three failures spanning more than 30 s do not; the window slides."""
        selector = self.selector(A)
        for delay in (0, 15, 15.5):
            self.clock.advance(delay)
            selector.record_failure(A)
        self.assertEqual(selector.health(A), HEALTHY)
        # The last three (t=15, 30.5, 31) now fit in 30 s.
        self.clock.advance(0.5)
        selector.record_failure(A)
        self.assertEqual(selector.health(A), FAILED)

    def test_failure_exactly_window_apart_counts(self) -> None:
        """Failures exactly 30 s apart are still within the window."""
        selector = self.selector(A)
        for delay in (0, 10, 20):
            self.clock.advance(delay)
            selector.record_failure(A)
        self.assertEqual(selector.health(A), FAILED)

    def test_success_resets_failure_streak(self) -> None:
        """A success between failures means they are not consecutive."""
        selector = self.selector(A)
        self.fail_n(selector, A, times=2)
        selector.record_success(A)
        self.fail_n(selector, A, times=2)
        self.assertEqual(selector.health(A), HEALTHY)
        self.assertEqual(selector.snapshot()[0]["consecutive_failures"], 2)

    def test_two_successes_recover(self) -> None:
        """Two consecutive successes mark a failed target healthy; one does not."""
        selector = self.selector(A)
        self.fail_n(selector, A)
        selector.record_success(A)
        self.assertEqual(selector.health(A), FAILED)
        selector.record_success(A)
        self.assertEqual(selector.health(A), HEALTHY)

    def test_failure_resets_success_streak(self) -> None:
        """A failure between two successes keeps the target failed."""
        selector = self.selector(A)
        self.fail_n(selector, A)
        selector.record_success(A)
        selector.record_failure(A)
        selector.record_success(A)
        self.assertEqual(selector.health(A), FAILED)
        selector.record_success(A)
        self.assertEqual(selector.health(A), HEALTHY)

    def test_failovers_total_counts_transitions(self) -> None:
        """Each healthy<->failed transition counts once; more failures do not."""
        selector = self.selector(A, B)
        self.assertEqual(selector.failovers_total, 0)
        self.fail_n(selector, A, times=5)
        self.assertEqual(selector.failovers_total, 1)
        selector.record_success(A)
        selector.record_success(A)
        selector.record_success(A)
        self.assertEqual(selector.failovers_total, 2)
        self.fail_n(selector, B)
        self.assertEqual(selector.failovers_total, 3)

    def test_health_changed_event(self) -> None:
        """A transition logs rule.target.health_changed with from and to."""
        selector = self.selector(A)
        with capturedLogs() as events:
            self.fail_n(selector, A)
            selector.record_success(A)
            selector.record_success(A)
        changed = events_named(events, "rule.target.health_changed")
        self.assertEqual(
            [(e["rule"], e["target"], e["from"], e["to"]) for e in changed],
            [
                ("web", "10.0.0.1:80", "healthy", "failed"),
                ("web", "10.0.0.1:80", "failed", "healthy"),
            ],
        )

    def test_record_all_failed(self) -> None:
        """Recording that every target failed logs the event and counts it."""
        selector = self.selector(A, B)
        with capturedLogs() as events:
            selector.record_all_failed(8080)
        (event,) = events_named(events, "rule.conn_error_all_targets_failed")
        self.assertEqual((event["rule"], event["listen_port"]), ("web", 8080))
        self.assertEqual(selector.all_failed_total, 1)

    def test_explicit_window(self) -> None:
        """An explicit failure window replaces the 30 s default."""
        selector = TargetSelector(make_rule(A), self.clock, failure_window=5)
        for delay in (0, 3, 3):
            self.clock.advance(delay)
            selector.record_failure(A)
        self.assertEqual(selector.health(A), HEALTHY)


class StatsTests(SelectorCase):
    def test_snapshot(self) -> None:
        """The snapshot has every per-target counter, in config order."""
        b = target("10.0.0.2", 81, priority=0, weight=3)
        a = target("10.0.0.1", 80, priority=5)
        selector = self.selector(a, b)
        self.clock.advance(100)
        selector.record_success(b)
        selector.connection_opened(b)
        selector.connection_opened(b)
        selector.connection_closed(b)
        selector.add_bytes(b, 10, 200)
        selector.add_bytes(b, 1, 2)
        self.clock.advance(5)
        selector.record_failure(a)
        first, second = selector.snapshot()
        self.assertEqual(first["target"], "10.0.0.1:80")
        self.assertEqual(
            (first["health"], first["consecutive_failures"], first["last_failure_at"]),
            ("healthy", 1, 105.0),
        )
        self.assertIsNone(first["last_success_at"])
        self.assertEqual(
            second,
            {
                "host": "10.0.0.2",
                "port": 81,
                "target": "10.0.0.2:81",
                "priority": 0,
                "weight": 3,
                "health": "healthy",
                "consecutive_failures": 0,
                "last_success_at": 100.0,
                "last_failure_at": None,
                "bytes_in": 11,
                "bytes_out": 202,
                "active_connections": 1,
                "total_connections": 2,
            },
        )


class OrderTests(SelectorCase):
    def test_all_healthy_priority_order(self) -> None:
        """With every target healthy, the order is priority order."""
        a, b, c = target("a", priority=2), target("b", priority=0), target("c", priority=1)
        selector = self.selector(a, b, c)
        self.assertEqual(selector.dial_order(), [b, c, a])

    def test_ties_by_config_order(self) -> None:
        """Equal priorities keep the order of the config."""
        x, y, z = target("x", priority=5), target("y", priority=1), target("z", priority=1)
        selector = self.selector(x, y, z)
        self.assertEqual(selector.dial_order(), [y, z, x])

    def test_first_healthy_then_the_rest(self) -> None:
        """The first healthy target leads; all others follow in priority order."""
        a, b, c = (target(h, priority=p) for h, p in (("a", 0), ("b", 1), ("c", 2)))
        selector = self.selector(a, b, c)
        self.fail_n(selector, a)
        self.assertEqual(selector.dial_order(), [b, a, c])
        self.fail_n(selector, b)
        self.assertEqual(selector.dial_order(), [c, a, b])

    def test_all_failed_priority_order(self) -> None:
        """With every target failed they are still all tried, best first."""
        a, b, c = (target(h, priority=p) for h, p in (("a", 1), ("b", 0), ("c", 2)))
        selector = self.selector(a, b, c)
        for t in (a, b, c):
            self.fail_n(selector, t)
        self.assertEqual(selector.dial_order(), [b, a, c])

    def test_recovered_target_leads_again(self) -> None:
        """A primary back to healthy is tried first again."""
        selector = self.selector(target("a", priority=0), target("b", priority=1))
        a, b = selector.targets
        self.fail_n(selector, a)
        self.assertEqual(selector.dial_order()[0], b)
        selector.record_success(a)
        selector.record_success(a)
        self.assertEqual(selector.dial_order(), [a, b])

    def test_single_target(self) -> None:
        """A rule with one target always dials it, whatever its health."""
        for balance in Balance:
            selector = self.selector(A, balance=balance)
            self.assertEqual(selector.dial_order("192.0.2.1"), [A])
            self.fail_n(selector, A)
            self.assertEqual(selector.dial_order("192.0.2.1"), [A])


class RoundRobinTests(SelectorCase):
    def test_rotates_within_best_tier(self) -> None:
        """Round robin rotates over the best tier; lower tiers only follow."""
        d = target("d", priority=1)
        selector = self.selector(A, B, C, d, balance=Balance.ROUND_ROBIN)
        firsts = [selector.dial_order()[0] for _ in range(6)]
        self.assertEqual(firsts, [A, B, C, A, B, C])
        order = selector.dial_order()
        self.assertEqual(order, [A, B, C, d])
        self.assertEqual(selector.dial_order(), [B, A, C, d])

    def test_skips_failed(self) -> None:
        """A failed target leaves the rotation but stays as a fallback."""
        selector = self.selector(A, B, C, balance=Balance.ROUND_ROBIN)
        self.fail_n(selector, B)
        orders = [selector.dial_order() for _ in range(4)]
        self.assertEqual([o[0] for o in orders], [A, C, A, C])
        self.assertEqual(orders[1], [C, A, B])

    def test_next_tier_when_best_tier_failed(self) -> None:
        """With the whole best tier failed, the next tier rotates."""
        c, d = target("c", priority=1), target("d", priority=1)
        selector = self.selector(A, B, c, d, balance=Balance.ROUND_ROBIN)
        self.fail_n(selector, A)
        self.fail_n(selector, B)
        self.assertEqual(selector.dial_order(), [c, A, B, d])
        self.assertEqual(selector.dial_order(), [d, A, B, c])


class WeightedTests(SelectorCase):
    def test_proportional(self) -> None:
        """Over 1000 picks each target gets exactly its weight's share."""
        a, b = target("a", weight=3), target("b", weight=1)
        c = target("c", priority=1, weight=100)
        selector = self.selector(a, b, c, balance=Balance.WEIGHTED)
        counts = Counter(selector.dial_order()[0] for _ in range(1000))
        self.assertEqual(counts, {a: 750, b: 250})

    def test_smooth(self) -> None:
        """Picks interleave like nginx's smooth weighted round-robin."""
        a, b, c = target("a", weight=5), target("b", weight=1), target("c", weight=1)
        selector = self.selector(a, b, c, balance=Balance.WEIGHTED)
        picks = [selector.dial_order()[0].host for _ in range(7)]
        self.assertEqual(picks, ["a", "a", "b", "a", "c", "a", "a"])

    def test_failed_target_leaves_the_share(self) -> None:
        """A failed target's share goes to the healthy ones, still proportional."""
        a, b, c = target("a", weight=2), target("b", weight=1), target("c", weight=5)
        selector = self.selector(a, b, c, balance=Balance.WEIGHTED)
        self.fail_n(selector, c)
        orders = [selector.dial_order() for _ in range(300)]
        self.assertEqual(Counter(o[0] for o in orders), {a: 200, b: 100})
        self.assertEqual(orders[0][1:], [t for t in (a, b, c) if t != orders[0][0]])


class SourceHashTests(SelectorCase):
    CLIENTS = [f"198.51.100.{i}" if i < 256 else f"2001:db8::{i:x}" for i in range(1000)]

    def test_stable_per_client(self) -> None:
        """The same client always gets the same first target."""
        selector = self.selector(A, B, C, balance=Balance.SOURCE_HASH)
        for client in self.CLIENTS[:50]:
            firsts = {selector.dial_order(client)[0] for _ in range(5)}
            self.assertEqual(len(firsts), 1)

    def test_independent_of_selector(self) -> None:
        """Two selectors (workers, restarts) agree on every client's target."""
        one = self.selector(A, B, C, balance=Balance.SOURCE_HASH)
        two = self.selector(A, B, C, balance=Balance.SOURCE_HASH)
        for client in self.CLIENTS:
            self.assertEqual(one.dial_order(client), two.dial_order(client))

    def test_spreads_clients(self) -> None:
        """Clients spread over every healthy target of the tier."""
        selector = self.selector(A, B, C, D, balance=Balance.SOURCE_HASH)
        counts = Counter(selector.dial_order(c)[0] for c in self.CLIENTS)
        self.assertEqual(set(counts), {A, B, C, D})
        self.assertGreater(min(counts.values()), 180)

    def test_minimal_disruption(self) -> None:
        """When a target fails only its own clients move, and they move back."""
        selector = self.selector(A, B, C, D, balance=Balance.SOURCE_HASH)
        before = {c: selector.dial_order(c)[0] for c in self.CLIENTS}
        self.fail_n(selector, C)
        during = {c: selector.dial_order(c)[0] for c in self.CLIENTS}
        moved = {c for c in self.CLIENTS if before[c] != during[c]}
        self.assertEqual(moved, {c for c in self.CLIENTS if before[c] == C})
        self.assertNotIn(C, during.values())
        # The moved clients spread over the others rather than piling on one.
        self.assertEqual(len({during[c] for c in moved}), 3)
        selector.record_success(C)
        selector.record_success(C)
        self.assertEqual({c: selector.dial_order(c)[0] for c in self.CLIENTS}, before)

    def test_fallbacks_in_priority_order(self) -> None:
        """After the hashed pick, the other targets follow in priority order."""
        selector = self.selector(A, B, C, balance=Balance.SOURCE_HASH)
        for client in self.CLIENTS[:20]:
            order = selector.dial_order(client)
            self.assertEqual(order[1:], [t for t in (A, B, C) if t != order[0]])

    def test_no_client_address(self) -> None:
        """Without a client address the first healthy target is picked."""
        selector = self.selector(A, B, C, balance=Balance.SOURCE_HASH)
        self.assertEqual(selector.dial_order(), [A, B, C])


class ProbeHarness:
    """Answers the probes a prober makes through a MemoryReactorClock."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.answered = 0

    def pending(self) -> list[tuple[str, int]]:
        return [(h, p) for h, p, *_ in self.reactor.tcpClients[self.answered :]]

    def answer(self, ok: bool) -> StringTransport | None:
        """Answer the oldest unanswered probe."""
        host, port, factory, _, _ = self.reactor.tcpClients[self.answered]
        connector = self.reactor.connectors[self.answered]
        self.answered += 1
        if not ok:
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
            return None
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return transport

    def answer_all(self, ok_hosts: set[str]) -> None:
        while self.answered < len(self.reactor.tcpClients):
            self.answer(self.reactor.tcpClients[self.answered][0] in ok_hosts)


class ActiveProberTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = ProbeHarness()
        self.reactor = self.net.reactor

    def prober(self, rule: Rule, interval: float = 10) -> tuple[TargetSelector, ActiveProber]:
        selector = TargetSelector(rule, self.reactor)
        prober = ActiveProber(self.reactor, selector, interval)
        self.addCleanup(prober.stop)
        return selector, prober

    def test_probes_every_target_at_start(self) -> None:
        """Starting probes every target at once with a 5 s connect timeout."""
        _, prober = self.prober(make_rule(A, target("10.0.0.2", 8443)))
        prober.start()
        self.assertEqual(self.net.pending(), [("10.0.0.1", 80), ("10.0.0.2", 8443)])
        self.assertEqual([c[3] for c in self.reactor.tcpClients], [5.0, 5.0])

    def test_range_probes_first_port(self) -> None:
        """A range rule's target is probed on the first port of its range."""
        rule = Rule(
            name="range",
            protocol=Proto.TCP,
            listen=PortRange(10000, 10009),
            targets=[Target("10.0.0.9", PortRange(20000, 20009))],
        )
        _, prober = self.prober(rule)
        prober.start()
        self.assertEqual(self.net.pending(), [("10.0.0.9", 20000)])

    def test_success(self) -> None:
        """A completed handshake is a success; the probe connection is closed."""
        selector, prober = self.prober(make_rule(A))
        self.reactor.advance(42)
        with capturedLogs() as events:
            prober.start()
            transport = self.net.answer(ok=True)
        assert transport is not None
        self.assertTrue(transport.disconnecting)
        self.assertEqual(selector.snapshot()[0]["last_success_at"], 42.0)
        (event,) = events_named(events, "rule.target.probe_ok")
        self.assertEqual((event["target"], event["port"]), ("10.0.0.1:80", 80))

    def test_failure(self) -> None:
        """A refused connect is a failure and logs probe_failed."""
        selector, prober = self.prober(make_rule(A))
        with capturedLogs() as events:
            prober.start()
            self.net.answer(ok=False)
        self.assertEqual(selector.snapshot()[0]["consecutive_failures"], 1)
        self.assertEqual(len(events_named(events, "rule.target.probe_failed")), 1)

    def test_timeout(self) -> None:
        """A handshake not done in 5 s is abandoned and counted as a failure."""
        selector, prober = self.prober(make_rule(A))
        with capturedLogs() as events:
            prober.start()
            self.reactor.advance(4.9)
            self.assertEqual(selector.snapshot()[0]["consecutive_failures"], 0)
            self.reactor.advance(0.1)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(selector.snapshot()[0]["consecutive_failures"], 1)
        self.assertEqual(len(events_named(events, "rule.target.probe_timeout")), 1)
        self.assertEqual(events_named(events, "rule.target.probe_failed"), [])

    def test_no_overlapping_probes(self) -> None:
        """A target still being probed is skipped; the others keep their pace."""
        selector = TargetSelector(make_rule(A, B), self.reactor)
        prober = ActiveProber(self.reactor, selector, interval=2)
        self.addCleanup(prober.stop)
        prober.start()
        self.net.answered = 1
        self.net.answer(ok=True)  # B answers; A hangs until its 5 s timeout
        for _ in range(2):
            self.reactor.advance(2)
            self.assertEqual(self.net.pending(), [("10.0.0.2", 80)])
            self.net.answer(ok=True)
        self.reactor.advance(1)  # t=5: A's probe times out
        self.reactor.advance(1)  # t=6: the next tick probes both again
        self.assertEqual(self.net.pending(), [("10.0.0.1", 80), ("10.0.0.2", 80)])
        self.assertEqual(selector.snapshot()[0]["consecutive_failures"], 1)

    def test_stop(self) -> None:
        """After stop nothing is probed and late answers are not counted."""
        selector, prober = self.prober(make_rule(A))
        prober.start()
        prober.stop()
        self.assertFalse(prober.running)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.net.answer(ok=False)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(selector.snapshot()[0]["consecutive_failures"], 0)

    def test_primary_refuses_then_returns(self) -> None:
        """Refused probes move traffic to the secondary; two good ones move it back."""
        primary, secondary = target("10.0.0.1", priority=0), target("10.0.0.2", priority=1)
        selector, prober = self.prober(make_rule(primary, secondary), interval=10)
        prober.start()
        for tick in range(3):
            self.net.answer_all(ok_hosts={"10.0.0.2"})
            if tick < 2:
                self.assertEqual(selector.dial_order()[0], primary)
                self.reactor.advance(10)
        self.assertEqual(selector.health(primary), FAILED)
        self.assertEqual(selector.dial_order(), [secondary, primary])
        self.reactor.advance(10)
        self.net.answer_all(ok_hosts={"10.0.0.1", "10.0.0.2"})
        self.assertEqual(selector.health(primary), FAILED)
        self.reactor.advance(10)
        self.net.answer_all(ok_hosts={"10.0.0.1", "10.0.0.2"})
        self.assertEqual(selector.health(primary), HEALTHY)
        self.assertEqual(selector.dial_order(), [primary, secondary])
        self.assertEqual(selector.failovers_total, 2)

    def test_rare_probes_still_fail_a_target(self) -> None:
        """Probes a minute apart can fail a target: the window covers three."""
        selector, prober = self.prober(make_rule(A, B, interval=60), interval=60)
        prober.start()
        for _ in range(3):
            self.net.answer_all(ok_hosts={"10.0.0.2"})
            self.reactor.advance(60)
        self.assertEqual(selector.health(A), FAILED)

    def test_custom_connect(self) -> None:
        """A given connect function replaces connectTCP and sees the timeout."""
        calls: list[tuple[str, int, float]] = []

        def connect(host: str, port: int, timeout: float) -> Deferred[None]:
            calls.append((host, port, timeout))
            return succeed(None)

        selector = TargetSelector(make_rule(A), self.reactor)
        prober = ActiveProber(self.reactor, selector, 10, timeout=2.5, connect=connect)
        self.successResultOf(prober.probe_once())
        self.assertEqual(calls, [("10.0.0.1", 80, 2.5)])
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertIsNotNone(selector.snapshot()[0]["last_success_at"])


class _Accepted(Protocol):
    """Server side of a probe; tells the test when the probe has gone."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        factory: Any = self.factory
        factory.lost.append(True)
        if len(factory.lost) == factory.expected:
            factory.all_lost.callback(None)


class RealSocketProbeTests(TestCase):
    @inlineCallbacks
    def test_closed_and_open_port(self) -> Generator[Deferred[Any], Any, None]:
        """Over loopback a closed port fails its probes and an open one passes."""
        closed_port = free_port()
        factory: Any = Factory.forProtocol(_Accepted)
        factory.lost, factory.expected, factory.all_lost = [], 3, Deferred()
        server = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(server.stopListening)
        closed = target(LOOPBACK, closed_port, priority=0)
        opened = target(LOOPBACK, server.getHost().port, priority=1)
        selector = TargetSelector(make_rule(closed, opened), reactor)
        prober = ActiveProber(reactor, selector, interval=3600)
        for _ in range(3):
            yield prober.probe_once()
        # Each probe closes its connection; the server sees all three go.
        yield factory.all_lost
        self.assertEqual(selector.health(closed), FAILED)
        self.assertEqual(selector.health(opened), HEALTHY)
        stats = {s["port"]: s for s in selector.snapshot()}
        self.assertEqual(stats[closed_port]["consecutive_failures"], 3)
        self.assertIsNotNone(stats[opened.ports.start]["last_success_at"])
        self.assertEqual(selector.dial_order(), [opened, closed])
