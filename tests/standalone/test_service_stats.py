"""
The standalone service with its stats socket: what the socket reports of
a real forwarder, and the reload and log-level requests it carries.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane import SUPPORTED_PROTOCOLS
from portunus.dataplane.workers.forwarder import WorkerForwarder
from portunus.errors import PortunusError
from portunus.logging import JSONLinesObserver
from portunus.standalone.config import parse_config
from portunus.standalone.service import StandaloneService
from portunus.standalone.tap import Options, stats_socket_path
from tests._net import LOOPBACK, collect, echo_factory, free_port
from tests.dataplane.workers._fakes import FakeLauncher, link_of
from tests.standalone._socket import short_tmp_dir

reactor: Any = _reactor


def config_text(listen_port: int, target_port: int, stats: str = "") -> str:
    return f"""
[global]
listen_addresses = ["{LOOPBACK}"]
[stats]
refresh_ms = 250
{stats}
[[rule]]
name = "echo"
listen_port = {listen_port}
target = "{LOOPBACK}:{target_port}"
"""


class Lines(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._waiters: list[tuple[Any, Deferred[dict[str, Any]]]] = []

    def lineReceived(self, line: bytes) -> None:
        message = json.loads(line)
        self.received.append(message)
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(message):
                self._waiters.remove(waiter)
                d.callback(message)

    def next_matching(self, predicate: Any) -> Deferred[dict[str, Any]]:
        for message in self.received:
            if predicate(message):
                return Deferred.fromCoroutine(_value(message))
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiters.append((predicate, d))
        return d.addTimeout(10, reactor)

    def request(self, **fields: Any) -> Deferred[dict[str, Any]]:
        self.sendLine(json.dumps(fields).encode())
        return self.next_matching(lambda m: m.get("reply") == fields.get("cmd"))


async def _value(message: dict[str, Any]) -> dict[str, Any]:
    return message


class ServiceSocketTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        target = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(target.stopListening)
        self.listen_port = free_port()
        self.path = os.path.join(short_tmp_dir(self, "svc"), "s.sock")
        config = parse_config(
            config_text(self.listen_port, target.getHost().port),
            "test.toml",
            SUPPORTED_PROTOCOLS,
        )
        self.observer = JSONLinesObserver(io.StringIO(), LogLevel.warn)
        self.service = StandaloneService(
            config,
            reactor,
            log_observer=self.observer,
            stderr=io.StringIO(),
            stats_socket=self.path,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.client = Lines()
        connected: Deferred[None] = Deferred()
        factory = ClientFactory.forProtocol(lambda: self.client)
        self.client.connectionMade = lambda: connected.callback(None)  # type: ignore[method-assign]
        connector = reactor.connectUNIX(self.path, factory)
        self.addCleanup(connector.disconnect)
        yield connected

    @inlineCallbacks
    def test_reports_the_forwarders_counters(self) -> Any:
        """The Hello lists the config's rule; Snapshots count the bytes it forwarded."""
        hello = yield self.client.next_matching(lambda m: "v" in m)
        (rule,) = hello["rules"]
        self.assertEqual(
            (rule["name"], rule["listen"], rule["targets"][0]["host"], hello["refresh_ms"]),
            ("echo", str(self.listen_port), LOOPBACK, 250),
        )
        echoed = yield collect(reactor, self.listen_port, b"x" * 1000)
        self.assertEqual(len(echoed), 1000)
        snapshot = yield self.client.next_matching(
            lambda m: any(r.get("in") == 1000 and r.get("out") == 1000 for r in m.get("r", ()))
        )
        (counters,) = snapshot["r"]
        self.assertEqual((counters["id"], counters["conns_total"]), (rule["id"], 1))
        self.assertGreater(snapshot["process"]["rss_bytes"], 0)

    @inlineCallbacks
    def test_log_level_request(self) -> Any:
        """log-level changes the running observer's level and says so in the log."""
        with capturedLogs() as events:
            reply = yield self.client.request(cmd="log-level", spec="debug")
        self.assertEqual(
            reply, {"reply": "log-level", "ok": True, "level": "debug", "previous": "warn"}
        )
        self.assertIs(self.observer.level, LogLevel.debug)
        (event,) = [e for e in events if e.get("event") == "standalone.log_level_changed"]
        self.assertEqual((event["previous"], event["current"]), ("warn", "debug"))

    @inlineCallbacks
    def test_log_level_filter_refused(self) -> Any:
        """A per-module filter is refused (not yet supported); the level stays."""
        reply = yield self.client.request(cmd="log-level", spec="portunus.dataplane=debug")
        self.assertEqual((reply["ok"], reply["code"]), (False, "log_level_invalid"))
        self.assertIn("per-module filters are not supported yet", reply["message"])
        self.assertIs(self.observer.level, LogLevel.warn)

    @inlineCallbacks
    def test_reload_not_supported_yet(self) -> Any:
        """reload answers reload_unsupported and the service keeps forwarding."""
        reply = yield self.client.request(cmd="reload")
        self.assertEqual((reply["ok"], reply["code"]), (False, "reload_unsupported"))
        self.assertIn("restart", reply["hint"])
        echoed = yield collect(reactor, self.listen_port, b"y" * 10)
        self.assertEqual(echoed, b"y" * 10)

    @inlineCallbacks
    def test_stop_removes_the_socket(self) -> Any:
        """Stopping the service removes the socket file."""
        self.assertTrue(os.path.exists(self.path))
        yield self.service.stopService()
        self.assertFalse(os.path.exists(self.path))


class SetLogLevelTests(SynchronousTestCase):
    def service(self, observer: Any) -> StandaloneService:
        config = parse_config(config_text(free_port(), 9), "t.toml", SUPPORTED_PROTOCOLS)
        return StandaloneService(config, reactor, log_observer=observer)

    def test_error_level_announced_at_error(self) -> None:
        """Going quieter than warn still leaves the change in the log."""
        observer = JSONLinesObserver(io.StringIO(), LogLevel.info)
        with capturedLogs() as events:
            self.service(observer).set_log_level("error")
        (event,) = [e for e in events if e.get("event") == "standalone.log_level_changed"]
        self.assertIs(event["log_level"], LogLevel.error)
        self.assertIs(observer.level, LogLevel.error)

    def test_workers_follow(self) -> None:
        """With --workers, each worker is told the new level too."""
        config = parse_config(config_text(free_port(), 9), "t.toml", SUPPORTED_PROTOCOLS)
        workers = WorkerForwarder(Clock(), 2, event_prefix="standalone", launch=FakeLauncher())
        workers.start()
        observer = JSONLinesObserver(io.StringIO(), LogLevel.warn)
        service = StandaloneService(config, reactor, forwarder=workers, log_observer=observer)
        service.set_log_level("info")
        for worker in workers.workers.values():
            self.assertIn({"op": "log_level", "level": "info"}, link_of(worker).messages())

    def test_without_observer(self) -> None:
        """A service started without its own observer refuses: log_level_unavailable."""
        error = self.assertRaises(PortunusError, self.service(None).set_log_level, "info")
        self.assertEqual(error.code, "log_level_unavailable")


class StatsSocketOptionTests(SynchronousTestCase):
    def options(self, stats: str, *argv: str) -> Options:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(config_text(8080, 80, stats))
        options = Options(stdout=io.StringIO(), stderr=io.StringIO())
        options.parseOptions(["--config", path, *argv])
        return options

    def test_socket_path_sources(self) -> None:
        """--no-stats and enabled = false turn it off; --stats-socket beats the config."""
        self.assertEqual(
            stats_socket_path(self.options('socket_path = "/run/a.sock"')), "/run/a.sock"
        )
        self.assertEqual(
            stats_socket_path(self.options("", "--stats-socket", "/run/b.sock")), "/run/b.sock"
        )
        self.assertEqual(stats_socket_path(self.options("")), "/run/portunus/standalone.sock")
        self.assertIsNone(stats_socket_path(self.options("", "--no-stats")))
        self.assertIsNone(stats_socket_path(self.options("enabled = false")))

    def test_stats_socket_checked_like_the_config_key(self) -> None:
        """--stats-socket gets the socket_path check: a path too long for a socket is refused."""
        error = self.assertRaises(
            usage.UsageError, self.options, "", "--stats-socket", "/" + "x" * 107
        )
        self.assertIn("a Unix socket path holds at most 107", str(error))
