"""
twistd portunus-client options: --workers picks the data plane; with more
than one, the edge gets a WorkerForwarder and a service that starts its
workers.  makeService is given a memory reactor (nothing starts).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from portunus.client.service import EdgeClientService, WorkerPoolService
from portunus.client.tap import Options, makeService
from portunus.dataplane import Forwarder
from portunus.dataplane.workers import forwarder as workers
from portunus.dataplane.workers.forwarder import WorkerForwarder
from portunus.tapsupport import SighupService

BUNDLE = {
    "version": 1,
    "client_name": "edge-01",
    "server_endpoint": "127.0.0.1:7443",
    "server_cert_sha256": "ab" * 32,
    "token": "t" * 32,
}


def forwarding(root: IService) -> list[Any]:
    """The root's services but the SIGHUP handler every edge has."""
    children = list(root)  # type: ignore[call-overload]
    sighup = [c for c in children if isinstance(c, SighupService)]
    assert len(sighup) == 1, children
    return [c for c in children if not isinstance(c, SighupService)]


class WorkersOptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bundle = self.mktemp()
        with open(self.bundle, "w") as f:
            json.dump(BUNDLE, f)

    def options(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--bundle", self.bundle, *args])
        return options

    def test_default_is_one_process(self) -> None:
        """Without --workers the edge forwards in its own process, as before."""
        options = self.options()
        self.assertEqual(options.workers, 1)
        [edge] = forwarding(makeService(options, MemoryReactorClock()))
        self.assertIsInstance(edge, EdgeClientService)
        self.assertIsInstance(edge.agent.forwarder, Forwarder)

    def test_workers_serve_from_worker_processes(self) -> None:
        """--workers 3: a WorkerForwarder of 3, started by a service beside the edge."""
        root = makeService(self.options("--workers", "3"), MemoryReactorClock())
        [both] = forwarding(root)
        pool, edge = list(both)
        self.assertIsInstance(pool, WorkerPoolService)
        self.assertIsInstance(edge, EdgeClientService)
        self.assertIsInstance(edge.agent.forwarder, WorkerForwarder)
        self.assertIs(pool.forwarder, edge.agent.forwarder)
        self.assertEqual(pool.forwarder.count, 3)

    def test_workers_report_at_the_stats_interval(self) -> None:
        """Workers report as often as the edge reads their counters, and are told so."""
        root = makeService(
            self.options("--workers", "2", "--stats-report-interval-secs", "7"),
            MemoryReactorClock(),
        )
        [both] = forwarding(root)
        pool, _edge = list(both)
        spawned: list[list[str]] = []
        self.patch(workers, "spawn_worker", lambda reactor, worker, args: spawned.append(args))
        pool.forwarder.start()
        self.assertEqual(len(spawned), 2)
        for args in spawned:
            self.assertEqual(args[args.index("--report-secs") + 1], "7.0")

    def test_stopping_the_edge_stops_the_workers_once(self) -> None:
        """
        The pool service starts the workers; stopping the whole service
        stops them once, through the edge's agent, and waits for that.
        """
        root = makeService(self.options("--workers", "2"), MemoryReactorClock())
        [both] = forwarding(root)
        pool, _edge = list(both)
        calls: list[str] = []
        stopped: Deferred[None] = Deferred()
        self.patch(pool.forwarder, "start", lambda: calls.append("start"))

        def stop(drain_timeout: float) -> Deferred[None]:
            calls.append("stop")
            return stopped

        self.patch(pool.forwarder, "stop", stop)
        both.startService()
        self.assertEqual(calls, ["start"])
        d = both.stopService()
        self.assertEqual(calls, ["start", "stop"])
        self.assertNoResult(d)
        stopped.callback(None)
        self.successResultOf(d)

    def test_auto_and_bad_counts(self) -> None:
        self.assertGreaterEqual(self.options("--workers", "auto").workers, 1)
        for bad in ("0", "65", "many"):
            error = self.assertRaises(usage.UsageError, self.options, "--workers", bad)
            self.assertIn("'auto' or a whole number from 1 to 64", str(error))
