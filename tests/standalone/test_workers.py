"""
The standalone forwarder with --workers: its config makes a WorkerForwarder
for the 'standalone' role; the service binds every rule here (SNI rules
sharing a port: once), hands them all to each worker as it starts, logs
the workers' summed counters (an exited worker's stay, its open ones do
not), restarts a dead worker with every rule, and drains them on stop.
Workers are fakes on a Clock (no processes).
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane import Forwarder
from portunus.dataplane.resolver import ResolverSettings
from portunus.dataplane.workers import forwarder as forwarder_module
from portunus.dataplane.workers.forwarder import WorkerForwarder
from portunus.dataplane.workers.pool import RESTART_MIN_SECS
from portunus.dataplane.workers.process import WorkerProcess
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.standalone.config import StandaloneConfig
from portunus.standalone.forwarder import forwarder_for
from portunus.standalone.service import StandaloneService
from tests._net import LOOPBACK, free_port, inode
from tests.dataplane.workers._fakes import (
    FakeLauncher,
    drain_and_exit,
    ended,
    link_of,
    logged,
    reply,
)


def rule(protocol: Protocol = Protocol.TCP, target: str = LOOPBACK) -> Rule:
    kind = socket.SOCK_STREAM if protocol is Protocol.TCP else socket.SOCK_DGRAM
    return Rule(
        name=f"r-{protocol.value}",
        protocol=protocol,
        listen=PortRange.single(free_port(kind)),
        targets=(Target(target, PortRange.single(9)),),
        listen_addresses=(LOOPBACK,),
    )


class ForwarderForTests(SynchronousTestCase):
    def spawned_args(self, config: StandaloneConfig, **kw: Any) -> list[str]:
        """The command line of the first worker C{forwarder_for(config)} starts."""
        spawned: list[list[str]] = []
        self.patch(
            forwarder_module, "spawn_worker", lambda reactor, worker, args: spawned.append(args)
        )
        forwarder = forwarder_for(config, Clock(), workers=2, **kw)
        assert isinstance(forwarder, WorkerForwarder)
        self.assertEqual((forwarder.count, forwarder.event_prefix), (2, "standalone"))
        forwarder.start()
        return spawned[0]

    def test_workers_serve_for_the_standalone_role(self) -> None:
        """
        --workers 2 makes a WorkerForwarder whose workers log standalone.*
        events at the service's level, drain for shutdown_drain_secs, report
        rule totals only (all the service logs) and, with IP targets only,
        have no DNS resolver.
        """
        config = StandaloneConfig(source="t.toml", rules=(rule(),), shutdown_drain_secs=7.5)
        args = self.spawned_args(config, log_level="info", log_format="pretty")
        self.assertEqual(args[args.index("--event-prefix") + 1], "standalone")
        self.assertEqual(args[args.index("--drain-secs") + 1], "7.5")
        self.assertEqual(args[args.index("--log-level") + 1], "info")
        self.assertEqual(args[args.index("--log-format") + 1], "pretty")
        self.assertIn("--no-port-stats", args)
        self.assertNotIn("--resolver", args)

    def test_host_name_targets_give_the_workers_the_resolver_settings(self) -> None:
        """The [resolver] table reaches every worker intact."""
        settings = ResolverSettings(nameservers=("127.0.0.1:5353",), cache_entries=17)
        config = StandaloneConfig(
            source="t.toml", rules=(rule(target="db.internal"),), resolver=settings
        )
        args = self.spawned_args(config)
        sent = json.loads(args[args.index("--resolver") + 1])
        self.assertEqual(ResolverSettings(**sent), settings)

    def test_one_worker_is_this_process(self) -> None:
        config = StandaloneConfig(source="t.toml", rules=(rule(),))
        self.assertIsInstance(forwarder_for(config, Clock(), workers=1), Forwarder)


class ServiceWithWorkersTestCase(SynchronousTestCase):
    def start(self, *rules: Rule) -> None:
        self.clock = Clock()
        self.launcher = FakeLauncher()
        self.forwarder = WorkerForwarder(
            self.clock, 2, event_prefix="standalone", port_stats=False, launch=self.launcher
        )
        config = StandaloneConfig(source="t.toml", rules=rules, stats_log_interval_secs=1)
        self.service = StandaloneService(config, self.clock, forwarder=self.forwarder)
        self.assertEqual(self.service.bind_all(), [])
        self.service.startService()
        self.addCleanup(self._close_everything)

    def _close_everything(self) -> None:
        if self.service.running:
            self.service.stopService()
        for worker in self.launcher.launched:
            worker.link.connectionLost(Failure(ConnectionDone()))

    def adds(self, worker: WorkerProcess) -> list[dict[str, Any]]:
        """The rules handed to C{worker} since last asked, each acknowledged."""
        adds = [m for m in link_of(worker).messages() if m["op"] == "add"]
        for add in adds:
            reply(worker, {"op": "added", "key": add["key"]})
        return adds


class ServiceWithWorkersTests(ServiceWithWorkersTestCase):
    def setUp(self) -> None:
        self.tcp, self.udp = rule(Protocol.TCP), rule(Protocol.UDP)
        self.start(self.tcp, self.udp)

    def test_every_worker_is_handed_every_rule(self) -> None:
        """
        Each worker gets every rule, in config order: the TCP listener
        shared, a UDP socket of its own.
        """
        handed = []
        for worker in self.launcher.launched:
            handed.append([inode(fd) for fd in link_of(worker).fds])
            adds = self.adds(worker)
            self.assertEqual([a["rule"]["name"] for a in adds], ["r-tcp", "r-udp"])
        self.assertEqual(len(handed), 2)
        self.assertEqual(handed[0][0], handed[1][0])
        self.assertNotEqual(handed[0][1], handed[1][1])

    def report(self, worker: WorkerProcess, key: int, **counters: int) -> None:
        reply(worker, {"op": "report", "rules": {str(key): {"stats": counters}}})

    def test_stats_sum_the_workers_and_keep_what_a_dead_one_counted(self) -> None:
        """
        standalone.stats logs the sum of the workers' reports; a worker that
        dies still counts what it counted, not what it had open, and is
        restarted with every rule.
        """
        first, second = self.forwarder.workers[0], self.forwarder.workers[1]
        self.adds(first)
        [key, _] = [a["key"] for a in self.adds(second)]
        self.report(first, key, bytes_in=100, total_connections=2, active_connections=4)
        self.report(second, key, bytes_in=50, total_connections=1, active_connections=1)
        events = logged(self)
        self.clock.advance(1)
        [stats] = [
            e for e in events if e.get("event") == "standalone.stats" and e["rule"] == "r-tcp"
        ]
        self.assertEqual(
            (stats["bytes_in"], stats["total_connections"], stats["active_connections"]),
            (150, 3, 5),
        )

        first.processEnded(ended(None, 9))
        self.assertIn("standalone.worker_exited", [e.get("event") for e in events])
        stats = self.forwarder.stats()[self.tcp.id]
        self.assertEqual((stats.bytes_in, stats.active_connections), (150, 1))
        self.clock.advance(RESTART_MIN_SECS)
        again = self.forwarder.workers[0]
        self.assertIsNot(again, first)
        self.assertEqual([a["rule"]["name"] for a in self.adds(again)], ["r-tcp", "r-udp"])

    def test_stop_drains_every_worker_then_lets_them_exit(self) -> None:
        """
        Stopping removes every rule from every worker with the config's
        drain, then lets them exit; it fires once they have, with no restart.
        """
        events = logged(self)
        d = self.service.stopService()
        self.assertNoResult(d)
        removals = drain_and_exit(self.launcher.launched)
        drain = self.service.config.shutdown_drain_secs
        self.assertEqual([m["drain"] for m in removals], [drain] * 4)
        self.successResultOf(d)
        self.assertIn("standalone.stopped", [e.get("event") for e in events])
        self.clock.advance(60)
        self.assertEqual(len(self.launcher.launched), 2, "no restart while stopping")


class SniWorkersTests(ServiceWithWorkersTestCase):
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

    def test_the_port_is_bound_once_for_all_its_rules(self) -> None:
        """
        The first SNI rule of a port binds it; the others share that
        listener and bind nothing (before, they failed with port_in_use).
        """
        config = StandaloneConfig(source="test.toml", rules=self.rules)
        forwarder = WorkerForwarder(Clock(), 2, event_prefix="standalone", launch=FakeLauncher())
        service = StandaloneService(config, Clock(), forwarder=forwarder)
        self.assertEqual(service.bind_all(), [])
        bound = service._bound or []
        self.addCleanup(lambda: [group.close() for group in bound])
        self.assertEqual([len(group.shared) for group in bound], [1, 0, 0])
        self.assertEqual([group.rule.name for group in bound], ["a", "b", "rest"])

    def test_every_worker_gets_the_listener_with_the_first_rule(self) -> None:
        """
        Each worker is handed every rule of the port, the listener with the
        first, so it is served before the others join it.
        """
        self.start(*self.rules)
        for worker in self.launcher.launched:
            adds = self.adds(worker)
            self.assertEqual(
                [(a["rule"]["name"], len(a["sockets"])) for a in adds],
                [("a", 1), ("b", 0), ("rest", 0)],
            )

    def test_one_process_binds_the_port_once_and_serves_every_rule(self) -> None:
        """
        Without workers too: the first SNI rule binds the port, the others
        join its listener when activated (they used to fail port_in_use).
        """
        reactor = MemoryReactorClock()
        forwarder = Forwarder(reactor)
        config = StandaloneConfig(source="test.toml", rules=self.rules)
        service = StandaloneService(config, reactor, forwarder=forwarder)
        self.assertEqual(service.bind_all(), [])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(sorted(r.name for r in forwarder.rules), ["a", "b", "rest"])
        self.assertEqual(len(reactor.adoptedPorts), 1)
