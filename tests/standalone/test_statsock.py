"""
Tests for L{portunus.standalone.statsock}: the NDJSON messages, the
clients' limits, requests, and the socket file's life.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus import __version__
from portunus.dataplane.stats import RuleStats
from portunus.errors import PortunusError
from portunus.model import (
    PortRange,
    ProxyProtocolVersion,
    RateLimit,
    Rule,
    Target,
    rule_id_for_name,
)
from portunus.model import (
    Protocol as RuleProtocol,
)
from portunus.procstats import ProcessStats
from portunus.standalone.statsock import (
    MAX_CLIENTS,
    MAX_REQUEST_BYTES,
    WRITE_TIMEOUT_SECS,
    StatsPublisher,
    StatsSocketFactory,
    StatsSocketService,
)
from tests.standalone._socket import short_tmp_dir

reactor: Any = _reactor

WEB = Rule(
    name="web",
    protocol=RuleProtocol.TCP,
    listen=PortRange.single(2222),
    targets=(
        Target("10.0.0.5", PortRange.single(22), priority=0),
        Target("backup.example", PortRange.single(22), priority=1),
    ),
    id=rule_id_for_name("web"),
)
RANGE = Rule(
    name="range",
    protocol=RuleProtocol.TCP,
    listen=PortRange(8000, 8009),
    targets=(
        Target(
            "10.0.0.6",
            PortRange(9000, 9009),
            proxy_protocol=ProxyProtocolVersion.V2,
        ),
    ),
    rate_limit=RateLimit(bandwidth_in_bps=1_000_000),
    id=rule_id_for_name("range"),
)
DNS = Rule(
    name="dns",
    protocol=RuleProtocol.UDP,
    listen=PortRange.single(5353),
    targets=(Target("10.0.0.7", PortRange.single(53)),),
    udp_max_flows=77,
    id=rule_id_for_name("dns"),
)
RULES = (WEB, RANGE, DNS)
PROCESS = ProcessStats(
    rss_bytes=5 << 20, fd_open=12, fd_limit=1024, cpu_user_secs=1.0, cpu_system_secs=0.5
)


class Ticking:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeCommands:
    def __init__(self) -> None:
        self.levels: list[str] = []
        self.reloads: list[Deferred[dict[str, Any]]] = []

    def reload(self) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.reloads.append(d)
        return d

    def set_log_level(self, spec: str) -> dict[str, Any]:
        if spec == "nope":
            raise PortunusError("log_level_invalid", "'nope' is not a log level")
        if spec == "boom":
            raise RuntimeError("a bug")
        self.levels.append(spec)
        return {"level": spec, "previous": "warn"}


def publisher(
    clock: Clock,
    counters: dict[int, RuleStats] | None = None,
    monotonic: Ticking | None = None,
    splice: bool = True,
) -> StatsPublisher:
    return StatsPublisher(
        clock,
        rules=lambda: RULES,
        counters=lambda: counters if counters is not None else {},
        refresh_ms=500,
        splice=splice,
        monotonic=monotonic or Ticking(),
        process=lambda: PROCESS,
    )


def lines(transport: StringTransport) -> list[dict[str, Any]]:
    return [json.loads(line) for line in transport.value().splitlines()]


class MessageTests(SynchronousTestCase):
    """The Hello and the Snapshots, field by field."""

    def test_hello(self) -> None:
        """Hello: version 1, daemon facts, and each rule's shape and capabilities."""
        clock = Clock()
        clock.advance(1_700_000_000.25)
        hello = publisher(clock).hello()
        self.assertEqual(
            hello,
            {
                "v": 1,
                "daemon_version": __version__,
                "daemon_started_at_ms": 1_700_000_000_250,
                "refresh_ms": 500,
                "rules": [
                    {
                        "id": str(WEB.id),
                        "name": "web",
                        "proto": "tcp",
                        "listen": "2222",
                        "targets": [
                            {"host": "10.0.0.5", "port": 22, "priority": 0, "proxy_protocol": None},
                            {
                                "host": "backup.example",
                                "port": 22,
                                "priority": 1,
                                "proxy_protocol": None,
                            },
                        ],
                        "splice_capable": True,
                    },
                    {
                        "id": str(RANGE.id),
                        "name": "range",
                        "proto": "tcp",
                        "listen": "8000-8009",
                        "targets": [
                            {
                                "host": "10.0.0.6",
                                "port": 9000,
                                "priority": 0,
                                "proxy_protocol": "v2",
                            }
                        ],
                        # A bandwidth cap needs the userspace relay.
                        "splice_capable": False,
                    },
                    {
                        "id": str(DNS.id),
                        "name": "dns",
                        "proto": "udp",
                        "listen": "5353",
                        "targets": [
                            {"host": "10.0.0.7", "port": 53, "priority": 0, "proxy_protocol": None}
                        ],
                        "udp_max_flows": 77,
                    },
                ],
            },
        )

    def test_hello_without_splice(self) -> None:
        """No rule claims splice where the host cannot splice."""
        hello = publisher(Clock(), splice=False).hello()
        self.assertEqual([r.get("splice_capable") for r in hello["rules"]], [False, False, None])

    def test_snapshot(self) -> None:
        """A Snapshot carries time, uptime, seq, process figures and every counter."""
        clock = Clock()
        clock.advance(50.0)
        ticking = Ticking()
        web = RuleStats(
            bytes_in=10,
            bytes_out=20,
            active_connections=2,
            total_connections=7,
            connect_failures=3,
            target_failovers_total=1,
        )
        dns = RuleStats(
            datagrams_in=5,
            datagrams_out=4,
            active_flows=3,
            icmp_evictions=1,
            send_dropped=2,
            dns_failures=6,
            flows_dropped_overflow=8,
            flows_pending_drops=9,
            bandwidth_dropped_in=10,
            bandwidth_dropped_out=11,
            rate_limit_rejects=12,
        )
        pub = publisher(clock, {WEB.id: web, DNS.id: dns}, ticking)
        clock.advance(2.5)
        ticking.now += 2.5
        snapshot = pub.snapshot()
        self.assertEqual(snapshot["t_ms"], 52_500)
        self.assertEqual(snapshot["uptime_ms"], 2500)
        self.assertEqual(snapshot["seq"], 1)
        self.assertEqual(
            snapshot["process"], {"fd_open": 12, "fd_limit": 1024, "rss_bytes": 5 << 20}
        )
        # A rule without counters yet (a worker has not reported) is left out.
        self.assertEqual([r["id"] for r in snapshot["r"]], [str(WEB.id), str(DNS.id)])
        zero_err = dict.fromkeys(
            (
                "upstream_connect_failed",
                "icmp_evict",
                "flows_pending_drops",
                "bandwidth_dropped_in",
                "bandwidth_dropped_out",
                "send_dropped",
                "dns_failures",
                "flows_dropped_overflow",
                "rate_limit_rejects",
            ),
            0,
        )
        self.assertEqual(
            snapshot["r"][0],
            {
                "id": str(WEB.id),
                "in": 10,
                "out": 20,
                "conns_active": 2,
                "conns_total": 7,
                "datagrams_in": 0,
                "datagrams_out": 0,
                "flows_active": 0,
                "target_failovers_total": 1,
                "err": {**zero_err, "upstream_connect_failed": 3},
            },
        )
        self.assertEqual(
            snapshot["r"][1]["err"],
            {
                "upstream_connect_failed": 0,
                "icmp_evict": 1,
                "flows_pending_drops": 9,
                "bandwidth_dropped_in": 10,
                "bandwidth_dropped_out": 11,
                "send_dropped": 2,
                "dns_failures": 6,
                "flows_dropped_overflow": 8,
                "rate_limit_rejects": 12,
            },
        )
        self.assertEqual(
            (snapshot["r"][1]["datagrams_in"], snapshot["r"][1]["flows_active"]), (5, 3)
        )

    def test_seq_counts_and_wraps_to_one(self) -> None:
        """seq goes 1, 2, 3 ... and after 2**64 - 1 starts again at 1, never 0."""
        pub = publisher(Clock())
        self.assertEqual([pub.snapshot()["seq"] for _ in range(3)], [1, 2, 3])
        pub._seq = 2**64 - 2
        self.assertEqual([pub.snapshot()["seq"] for _ in range(3)], [2**64 - 1, 1, 2])


class Harness:
    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self.clock = Clock()
        self.counters = {WEB.id: RuleStats(bytes_in=1)}
        self.commands = FakeCommands()
        self.factory = StatsSocketFactory(
            self.clock, publisher(self.clock, self.counters), self.commands, max_clients
        )

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


class ClientTests(SynchronousTestCase):
    """Admission, broadcast and back-pressure."""

    def test_hello_then_snapshots(self) -> None:
        """A client reads the Hello at once, then one Snapshot per broadcast."""
        h = Harness()
        _, transport = h.connect()
        self.assertEqual(lines(transport)[0]["v"], 1)
        h.factory.broadcast()
        h.counters[WEB.id].bytes_in = 99
        h.factory.broadcast()
        got = lines(transport)
        self.assertEqual([m.get("seq") for m in got], [None, 1, 2])
        self.assertEqual(got[2]["r"][0]["in"], 99)
        self.assertTrue(transport.value().endswith(b"\n"))

    def test_no_snapshot_built_without_clients(self) -> None:
        """Nobody connected: broadcasting builds nothing (seq does not move)."""
        h = Harness()
        h.factory.broadcast()
        _, transport = h.connect()
        h.factory.broadcast()
        self.assertEqual(lines(transport)[1]["seq"], 1)

    def test_seventeenth_client_dropped(self) -> None:
        """The 17th concurrent client is dropped with standalone.stats_conn_limit_reached."""
        h = Harness()
        clients = [h.connect() for _ in range(MAX_CLIENTS)]
        with capturedLogs() as events:
            extra, transport = h.connect()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        (event,) = [e for e in events if e.get("event") == "standalone.stats_conn_limit_reached"]
        self.assertEqual((event["limit"], event["refused"]), (16, 1))
        extra.connectionLost(None)
        self.assertEqual(len(h.factory.clients), MAX_CLIENTS)
        # One leaves: the next is served.
        first, _ = clients[0]
        first.connectionLost(None)
        _, transport = h.connect()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(lines(transport)[0]["v"], 1)

    def test_limit_warning_is_throttled(self) -> None:
        """A flood over the limit logs one warning a minute, with the count dropped."""
        h = Harness(max_clients=1)
        h.connect()
        with capturedLogs() as events:
            for _ in range(5):
                h.connect()
            h.clock.advance(60)
            h.connect()
        refused = [
            e["refused"] for e in events if e.get("event") == "standalone.stats_conn_limit_reached"
        ]
        self.assertEqual(refused, [1, 5])

    def test_slow_client_dropped_after_write_timeout(self) -> None:
        """
        A client whose socket stays full skips snapshots and is dropped after
        5 s (standalone.stats_client_slow); one that drains in time is kept.
        """
        h = Harness()
        protocol, transport = h.connect()
        self.assertIs(transport.producer, protocol)
        # Full, then drained within the timeout: kept, nothing lost after.
        protocol.pauseProducing()
        h.clock.advance(WRITE_TIMEOUT_SECS - 0.1)
        protocol.resumeProducing()
        h.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        # Full again: snapshots are skipped, then the client is dropped.
        protocol.pauseProducing()
        before = transport.value()
        h.factory.broadcast()
        self.assertEqual(transport.value(), before)
        with capturedLogs() as events:
            h.clock.advance(WRITE_TIMEOUT_SECS)
        self.assertTrue(transport.disconnected)
        (event,) = [e for e in events if e.get("event") == "standalone.stats_client_slow"]
        self.assertEqual(event["skipped"], 1)
        protocol.connectionLost(None)
        self.assertEqual(h.factory.clients, [])

    def test_a_gone_client_leaves_no_timer(self) -> None:
        """A client that disconnects while blocked leaves no timer behind."""
        h = Harness()
        protocol, _ = h.connect()
        protocol.pauseProducing()
        protocol.connectionLost(None)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class RequestTests(SynchronousTestCase):
    """reload and log-level requests on the socket."""

    def request(self, h: Harness, protocol: Any, transport: StringTransport, data: bytes) -> Any:
        transport.clear()
        protocol.dataReceived(data)
        return lines(transport)

    def test_log_level(self) -> None:
        """log-level with a spec calls the service and answers ok with its fields."""
        h = Harness()
        protocol, transport = h.connect()
        replies = self.request(h, protocol, transport, b'{"cmd":"log-level","spec":"debug"}\n')
        self.assertEqual(
            replies, [{"reply": "log-level", "ok": True, "level": "debug", "previous": "warn"}]
        )
        self.assertEqual(h.commands.levels, ["debug"])
        self.assertEqual(transport.producerState, "producing")

    def test_refusal_carries_code_message_hint(self) -> None:
        """A PortunusError from the service is answered with its code, message and hint."""
        h = Harness()
        protocol, transport = h.connect()
        (reply,) = self.request(h, protocol, transport, b'{"cmd":"log-level","spec":"nope"}\n')
        self.assertEqual(
            (reply["reply"], reply["ok"], reply["code"]), ("log-level", False, "log_level_invalid")
        )
        self.assertIn("nope", reply["message"])
        self.assertIn("debug, info", reply["hint"])

    def test_unexpected_failure_is_internal(self) -> None:
        """A bug in the service answers 'internal' and is logged, the client stays."""
        h = Harness()
        protocol, transport = h.connect()
        (reply,) = self.request(h, protocol, transport, b'{"cmd":"log-level","spec":"boom"}\n')
        self.assertEqual(reply["code"], "internal")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(transport.disconnecting)

    def test_bad_requests(self) -> None:
        """Not JSON, not an object, unknown or incomplete commands: stats_request_invalid."""
        h = Harness()
        protocol, transport = h.connect()
        for data, cmd in (
            (b"hello\n", None),
            (b"[1]\n", None),
            (b'{"cmd":"shutdown"}\n', "shutdown"),
            (b'{"cmd":5}\n', None),
            (b'{"cmd":"log-level"}\n', "log-level"),
            (b'{"cmd":"log-level","spec":3}\n', "log-level"),
        ):
            (reply,) = self.request(h, protocol, transport, data)
            self.assertEqual(
                (reply["reply"], reply["ok"], reply["code"]),
                (cmd, False, "stats_request_invalid"),
                data,
            )
        self.assertFalse(transport.disconnecting)

    def test_one_request_at_a_time(self) -> None:
        """
        Requests are answered in order, one at a time; reading pauses while
        one is running.
        """
        h = Harness()
        protocol, transport = h.connect()
        transport.clear()
        protocol.dataReceived(b'{"cmd":"reload"}\n{"cmd":"log-level","spec":"info"}\n')
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual((len(h.commands.reloads), h.commands.levels), (1, []))
        h.commands.reloads[0].callback({"rules": 3})
        self.assertEqual(
            lines(transport),
            [
                {"reply": "reload", "ok": True, "rules": 3},
                {"reply": "log-level", "ok": True, "level": "info", "previous": "warn"},
            ],
        )
        self.assertEqual(transport.producerState, "producing")

    def test_request_flood_drops_client(self) -> None:
        """More than 16 requests waiting drops the connection."""
        h = Harness()
        protocol, transport = h.connect()
        protocol.dataReceived(b'{"cmd":"reload"}\n' * 16)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b'{"cmd":"reload"}\n')
        self.assertTrue(transport.disconnected)

    def test_long_request_line(self) -> None:
        """A request longer than 4 KiB is refused and the connection closed."""
        h = Harness()
        protocol, transport = h.connect()
        (reply,) = self.request(h, protocol, transport, b"x" * (MAX_REQUEST_BYTES + 1))
        self.assertEqual(reply["code"], "stats_request_invalid")
        self.assertTrue(transport.disconnecting)

    def test_answer_after_disconnect_is_dropped(self) -> None:
        """A reply ready after the client left is not written."""
        h = Harness()
        protocol, transport = h.connect()
        protocol.dataReceived(b'{"cmd":"reload"}\n')
        protocol.connectionLost(None)
        transport.clear()
        h.commands.reloads[0].callback({})
        self.assertEqual(transport.value(), b"")


class LineCollector(Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.first: Deferred[dict[str, Any]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer and not self.first.called:
            self.first.callback(json.loads(self.buffer.split(b"\n")[0]))


class SocketFileTests(TestCase):
    """The socket file on a real reactor: created, guarded, removed."""

    def service(self, path: str) -> StatsSocketService:
        factory = StatsSocketFactory(reactor, publisher(Clock()), FakeCommands())
        service = StatsSocketService(reactor, path, factory)
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    def short_dir(self) -> str:
        return short_tmp_dir(self, "statsock")

    @inlineCallbacks
    def test_serves_and_removes(self) -> Any:
        """
        The missing directory is made 0750, the socket 0660, a client gets
        the Hello, and stopping removes the socket.
        """
        directory = self.short_dir()
        path = os.path.join(directory, "s.sock")
        service = self.service(path)
        with capturedLogs() as events:
            service.startService()
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o750)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
        self.assertIn("standalone.stats_socket_listening", [e.get("event") for e in events])
        collector = LineCollector()
        factory = ClientFactory.forProtocol(lambda: collector)
        connector = reactor.connectUNIX(path, factory)
        hello = yield collector.first
        self.assertEqual(hello["refresh_ms"], 500)
        connector.disconnect()
        yield service.stopService()
        self.assertFalse(os.path.exists(path))

    @inlineCallbacks
    def test_stale_socket_replaced(self) -> Any:
        """A socket file nobody serves is replaced."""
        directory = self.short_dir()
        os.makedirs(directory)
        path = os.path.join(directory, "s.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        service = self.service(path)
        service.startService()
        self.assertIsNotNone(service.port)
        yield service.stopService()

    @inlineCallbacks
    def test_live_socket_and_other_files_left_alone(self) -> Any:
        """
        A socket another process serves, or a file that is not a socket, is
        left in place: bind failure is logged and is not fatal.
        """
        directory = self.short_dir()
        os.makedirs(directory)
        live_path = os.path.join(directory, "live.sock")
        live = socket.socket(socket.AF_UNIX)
        live.bind(live_path)
        live.listen(1)
        self.addCleanup(live.close)
        file_path = os.path.join(directory, "file")
        with open(file_path, "w") as f:
            f.write("keep me")
        for path, phrase in ((live_path, "another process"), (file_path, "not a socket")):
            service = self.service(path)
            with capturedLogs() as events:
                service.startService()
            self.assertIsNone(service.port)
            self.assertTrue(service.running)
            (event,) = [
                e for e in events if e.get("event") == "standalone.stats_socket_bind_failed"
            ]
            self.assertIn(phrase, event["reason"])
            yield service.stopService()
        with open(file_path) as f:
            self.assertEqual(f.read(), "keep me")
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(live_path)
        probe.close()

    def test_unbindable_path_is_not_fatal(self) -> None:
        """A directory that cannot be made: logged, the service runs without a socket."""
        directory = self.short_dir()
        os.makedirs(directory)
        blocker = os.path.join(directory, "file")
        with open(blocker, "w"):
            pass
        service = self.service(os.path.join(blocker, "sub", "s.sock"))
        with capturedLogs() as events:
            service.startService()
        self.assertIsNone(service.port)
        self.assertIn("standalone.stats_socket_bind_failed", [e.get("event") for e in events])
        return service.stopService()  # type: ignore[no-any-return]

    @inlineCallbacks
    def test_snapshots_every_refresh(self) -> Any:
        """Running, the service sends Snapshots every refresh_ms to connected clients."""
        directory = self.short_dir()
        path = os.path.join(directory, "s.sock")
        clock = Clock()
        factory = StatsSocketFactory(clock, publisher(clock), FakeCommands())
        fake_reactor = _ClockedUnixReactor(clock)
        service = StatsSocketService(fake_reactor, path, factory)
        service.startService()
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        clock.advance(0.5)
        clock.advance(0.5)
        self.assertEqual([m.get("seq") for m in lines(transport)], [None, 1, 2])
        yield service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(transport.disconnected)


class _ClockedUnixReactor:
    """Real Unix listening, fake time."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def listenUNIX(self, *args: Any, **kwargs: Any) -> Any:
        return reactor.listenUNIX(*args, **kwargs)

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self._clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self._clock.seconds()
