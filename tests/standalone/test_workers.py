"""
The multi-process supervisor: worker counts, stats summing, restarts, stop;
binding SNI rules that share a port for the workers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane import Forwarder
from portunus.dataplane.listeners import bind_stream_sockets
from portunus.dataplane.workers.pool import (
    RESTART_MAX_SECS,
    RESTART_MIN_SECS,
    bind_for_workers,
    parse_worker_count,
    sum_snapshots,
)
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.standalone.config import StandaloneConfig
from portunus.standalone.service import StandaloneService
from portunus.standalone.worker import EXIT_CONFIG_CHANGED, _bound_rules
from portunus.standalone.workers import WorkerSupervisor
from tests._net import LOOPBACK, free_port


class FakeProcessTransport:
    def __init__(self) -> None:
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class SpawningClock(Clock):
    """A Clock that records spawnProcess calls instead of starting processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        transport = FakeProcessTransport()
        protocol.transport = transport
        self.spawned.append((protocol, args, kw["childFDs"]))
        return transport


def rule(protocol: Protocol = Protocol.TCP) -> Rule:
    return Rule(
        name=f"r-{protocol.value}",
        protocol=protocol,
        listen=PortRange.single(free_port()),
        targets=(Target(LOOPBACK, PortRange.single(9)),),
        listen_addresses=(LOOPBACK,),
    )


def exited(code: int | None = 0, signal: int | None = None) -> Failure:
    if code == 0:
        return Failure(ProcessDone(0))
    return Failure(ProcessTerminated(exitCode=code, signal=signal))


class WorkerCountTests(SynchronousTestCase):
    def test_counts(self) -> None:
        """--workers takes 1..64 or auto; anything else names the allowed values."""
        self.assertEqual(parse_worker_count("2"), 2)
        self.assertGreaterEqual(parse_worker_count("auto"), 1)
        for bad in ("0", "65", "two", ""):
            error = self.assertRaises(ValueError, parse_worker_count, bad)
            self.assertIn("'auto' or a whole number from 1 to 64", str(error))


class SumSnapshotTests(SynchronousTestCase):
    def test_sums_rules_and_ports(self) -> None:
        """Counters from several workers add up per rule and per port."""
        a = {"7": {"bytes_in": 10, "active_connections": 1, "ports": {"80": {"bytes_in": 10}}}}
        b = {"7": {"bytes_in": 5, "active_connections": 2, "ports": {"80": {"bytes_in": 5}}}}
        totals = sum_snapshots([a, b])
        self.assertEqual((totals[7].bytes_in, totals[7].active_connections), (15, 3))
        self.assertEqual(totals[7].ports[80].bytes_in, 15)


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = SpawningClock()
        config = FilePath(self.mktemp())
        config.setContent(b"# config\n")
        self.tcp = bind_for_workers(rule(Protocol.TCP), 2)
        self.udp = bind_for_workers(rule(Protocol.UDP), 2)
        self.addCleanup(self.tcp.close)
        self.addCleanup(self.udp.close)
        self.supervisor = WorkerSupervisor(
            self.clock, config.path, [self.tcp, self.udp], 2, 30.0, "warn", "json"
        )
        self.supervisor.start()

    def test_tcp_shared_udp_per_worker(self) -> None:
        """Each worker gets the shared TCP listener and its own UDP socket."""
        tcp_fd = self.tcp.shared[0].sock.fileno()
        udp_fds = [group[0].sock.fileno() for group in self.udp.per_worker]
        self.assertNotEqual(udp_fds[0], udp_fds[1])
        for index, (_, args, child_fds) in enumerate(self.clock.spawned):
            self.assertIn(tcp_fd, child_fds)
            self.assertIn(udp_fds[index], child_fds)
            self.assertNotIn(udp_fds[1 - index], child_fds)
            self.assertIn("portunus.standalone.worker", args)

    def test_reports_are_summed_and_survive_a_dead_worker(self) -> None:
        """Stats sum the live workers' reports plus the last report of exited ones."""
        p0, p1 = (p for p, _, _ in self.clock.spawned)
        p0.outReceived(b'{"rules": {"1": {"bytes_in": 100, "total_connections": 2}}}\n')
        p1.outReceived(b'{"rules": {"1": {"bytes_in": 50, ')
        p1.outReceived(b'"total_connections": 1}}}\n')
        self.assertEqual(self.supervisor.stats()[1].bytes_in, 150)
        p0.processEnded(exited(None, 9))
        self.assertEqual(self.supervisor.stats()[1].total_connections, 3)

    def test_a_dead_worker_has_nothing_open(self) -> None:
        """An exited worker's counters stay in the sums; its open connections do not."""
        p0, p1 = (p for p, _, _ in self.clock.spawned)
        p0.outReceived(b'{"rules": {"1": {"bytes_in": 100, "active_connections": 4}}}\n')
        p1.outReceived(b'{"rules": {"1": {"bytes_in": 50, "active_connections": 1}}}\n')
        p0.processEnded(exited(None, 9))
        stats = self.supervisor.stats()[1]
        self.assertEqual((stats.bytes_in, stats.active_connections), (150, 1))

    def test_dead_worker_restarts_with_backoff(self) -> None:
        """A worker that dies is restarted; quick repeated deaths back off."""
        first = self.clock.spawned[0][0]
        first.processEnded(exited(None, 9))
        self.assertEqual(len(self.clock.spawned), 2)
        self.clock.advance(RESTART_MIN_SECS)
        self.assertEqual(len(self.clock.spawned), 3)
        again = self.clock.spawned[2][0]
        again.processEnded(exited(1))
        self.clock.advance(RESTART_MIN_SECS)
        self.assertEqual(len(self.clock.spawned), 3)
        self.clock.advance(RESTART_MIN_SECS)
        self.assertEqual(len(self.clock.spawned), 4)
        self.assertEqual(self.supervisor.restarts, 2)

    def test_changed_config_waits_longest(self) -> None:
        """A worker refusing a changed config is retried only after the longest delay."""
        self.clock.spawned[0][0].processEnded(exited(EXIT_CONFIG_CHANGED))
        self.clock.advance(RESTART_MAX_SECS - 1)
        self.assertEqual(len(self.clock.spawned), 2)
        self.clock.advance(1)
        self.assertEqual(len(self.clock.spawned), 3)

    def test_stop_terms_all_and_waits(self) -> None:
        """stop() sends TERM to every worker and fires when all have exited."""
        processes = [p for p, _, _ in self.clock.spawned]
        d = self.supervisor.stop()
        self.assertEqual([p.transport.signals for p in processes], [["TERM"], ["TERM"]])
        processes[0].processEnded(exited(0))
        self.assertNoResult(d)
        processes[1].processEnded(exited(0))
        self.successResultOf(d)
        self.assertEqual(len(self.clock.spawned), 2)  # no restart while stopping

    def test_stop_kills_stragglers_after_the_drain(self) -> None:
        """Workers still running past drain + grace are killed."""
        processes = [p for p, _, _ in self.clock.spawned]
        d = self.supervisor.stop()
        self.clock.advance(35)
        self.assertEqual(processes[0].transport.signals, ["TERM", "KILL"])
        for p in processes:
            p.processEnded(exited(None, 9))
        self.successResultOf(d)


class SniWorkersBindTests(SynchronousTestCase):
    """SNI rules sharing a port, with --workers: one listener, handed over once."""

    def setUp(self) -> None:
        port = free_port()
        self.rules = tuple(
            Rule(
                name=name,
                protocol=Protocol.TCP,
                listen=PortRange.single(port),
                targets=(Target(LOOPBACK, PortRange.single(9)),),
                listen_addresses=(LOOPBACK,),
                sni_pattern=pattern,
                sni_fallback=pattern is None,
            )
            for name, pattern in (("a", "a.example"), ("b", "b.example"), ("rest", None))
        )
        self.config = StandaloneConfig(source="test.toml", rules=self.rules)

    def test_the_port_is_bound_once_for_all_its_rules(self) -> None:
        """
        The first SNI rule of a port binds it; the others share that
        listener and bind nothing (before, they failed with port_in_use).
        """
        service = StandaloneService(self.config, Clock(), forwarder=Forwarder(Clock()), workers=2)
        self.assertEqual(service.bind_all(), [])
        listeners = service._worker_listeners
        self.addCleanup(lambda: [group.close() for group in listeners])
        self.assertEqual([len(group.shared) for group in listeners], [1, 0, 0])
        self.assertEqual([group.rule.name for group in listeners], ["a", "b", "rest"])

    def test_one_process_binds_the_port_once_and_serves_every_rule(self) -> None:
        """
        Without workers too: the first SNI rule binds the port, the others
        join its listener when activated (they used to fail port_in_use).
        """
        reactor = MemoryReactorClock()
        forwarder = Forwarder(reactor)
        service = StandaloneService(self.config, reactor, forwarder=forwarder, workers=1)
        self.assertEqual(service.bind_all(), [])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(sorted(r.name for r in forwarder.rules), ["a", "b", "rest"])
        self.assertEqual(len(reactor.adoptedPorts), 1)

    def test_a_worker_serves_every_rule_the_listener_first(self) -> None:
        """
        A worker activates every rule of its config, those handed sockets
        first, so the shared listener is served before the others join it.
        """
        [bound] = bind_stream_sockets((LOOPBACK,), [self.rules[0].listen.start])
        entry = {"rule": "b", "address": LOOPBACK, "port": bound.port, "fd": bound.sock.detach()}
        rules = _bound_rules(self.config, [entry])
        self.addCleanup(lambda: [r.close() for r in rules])
        self.assertEqual(
            [(r.rule.name, len(r.sockets)) for r in rules], [("b", 1), ("a", 0), ("rest", 0)]
        )
        forwarder = Forwarder(MemoryReactorClock())
        for r in rules:
            forwarder.activate(r)
        self.assertEqual(sorted(r.name for r in forwarder.rules), ["a", "b", "rest"])
