"""
Tests for L{portunus.standalone.tui.client}: splitting the socket's lines,
and --once and requests against a real stats socket.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane.stats import RuleStats
from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, Rule, Target, rule_id_for_name
from portunus.standalone.tui.client import StatsClientProtocol, read_once, send_request
from portunus.standalone.tui.feed import MAX_LINE_BYTES, FeedError, Hello, Snapshot
from tests.standalone._socket import serve_stats_socket
from tests.standalone.tui._data import counters, hello_message, snapshot_message

reactor: Any = _reactor


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def hello(self, raw: dict[str, Any], hello: Hello) -> None:
        self.events.append(("hello", hello.refresh_ms))

    def snapshot(self, raw: dict[str, Any], snapshot: Snapshot) -> None:
        self.events.append(("snapshot", snapshot.seq))

    def reply(self, raw: dict[str, Any]) -> None:
        self.events.append(("reply", raw["reply"]))

    def ended(self, error: str | None) -> None:
        self.events.append(("ended", error))


def line(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


class ProtocolTests(SynchronousTestCase):
    def connect(self) -> tuple[StatsClientProtocol, StringTransport, Sink]:
        sink = Sink()
        protocol = StatsClientProtocol(sink)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport, sink

    def test_lines_sorted_out(self) -> None:
        """Hello first, then Snapshots and replies; unknown lines are skipped."""
        protocol, _, sink = self.connect()
        data = (
            line(hello_message(250))
            + line(snapshot_message(1, 0, counters("1")))
            + line({"reply": "reload", "ok": False})
            + line({"something": "newer"})
            + line(snapshot_message(2, 250))
        )
        # Byte by byte: lines may arrive split anywhere.
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
        protocol.connectionLost(None)
        self.assertEqual(
            sink.events,
            [
                ("hello", 250),
                ("snapshot", 1),
                ("reply", "reload"),
                ("snapshot", 2),
                ("ended", None),
            ],
        )

    def test_errors_end_the_session(self) -> None:
        """No Hello first, bad JSON, or a bad Snapshot close the socket with the reason."""
        for data, phrase in (
            (line(snapshot_message(1, 0)), "not a Hello"),
            (line(hello_message()) + b"{oops\n", "not JSON"),
            (line(hello_message()) + line({"seq": 1, "r": []}), "snapshot.process"),
        ):
            protocol, transport, sink = self.connect()
            protocol.dataReceived(data + line(snapshot_message(9, 0)))
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(None)
            ended = sink.events[-1]
            self.assertEqual(ended[0], "ended")
            self.assertIn(phrase, ended[1])
            self.assertNotIn(("snapshot", 9), sink.events)

    def test_line_limit(self) -> None:
        """A line over 1 MiB ends the session."""
        protocol, transport, sink = self.connect()
        protocol.dataReceived(line(hello_message()) + b"x" * (MAX_LINE_BYTES + 1))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertIn("longer than 1048576 bytes", sink.events[-1][1])

    def test_request_is_one_line(self) -> None:
        """send_request writes one JSON line."""
        protocol, transport, _ = self.connect()
        protocol.send_request(cmd="log-level", spec="info")
        self.assertEqual(json.loads(transport.value()), {"cmd": "log-level", "spec": "info"})
        self.assertEqual(transport.value().count(b"\n"), 1)


class Commands:
    def reload(self) -> dict[str, Any]:
        raise PortunusError("reload_unsupported", "not yet")

    def set_log_level(self, spec: str) -> dict[str, Any]:
        return {"level": spec, "previous": "warn"}


RULE = Rule(
    name="web",
    protocol=Protocol.TCP,
    listen=PortRange.single(8080),
    targets=(Target("127.0.0.1", PortRange.single(80)),),
    id=rule_id_for_name("web"),
)


class RealSocketTests(TestCase):
    """read_once and send_request against a real stats socket."""

    timeout = 20

    def setUp(self) -> None:
        self.path = serve_stats_socket(
            self, reactor, Commands(), (RULE,), lambda: {RULE.id: RuleStats(bytes_in=42)}
        )

    @inlineCallbacks
    def test_read_once(self) -> Any:
        """--once gets the Hello and the first Snapshot, as sent."""
        both = yield read_once(reactor, self.path)
        self.assertEqual(both["hello"]["rules"][0]["name"], "web")
        self.assertEqual(both["snapshot"]["seq"], 1)
        self.assertEqual(both["snapshot"]["r"][0]["in"], 42)

    @inlineCallbacks
    def test_requests(self) -> Any:
        """A request gets its reply, ok or refused."""
        reply = yield send_request(reactor, self.path, 5, cmd="log-level", spec="info")
        self.assertEqual(
            reply, {"reply": "log-level", "ok": True, "level": "info", "previous": "warn"}
        )
        reply = yield send_request(reactor, self.path, 5, cmd="reload")
        self.assertEqual((reply["ok"], reply["code"]), (False, "reload_unsupported"))

    @inlineCallbacks
    def test_nothing_there(self) -> Any:
        """No socket: FeedError saying what to check."""
        with self.assertRaises(FeedError) as raised:
            yield read_once(reactor, self.path + ".missing")
        self.assertIn("No such file or directory", str(raised.exception))
        self.assertIn("--socket PATH", str(raised.exception))


class SilentSocketTests(SynchronousTestCase):
    def test_snapshot_timeout(self) -> None:
        """A daemon that sends a Hello and then nothing: --once gives up with a FeedError."""
        clock = MemoryReactorClock()
        d = read_once(clock, "/nowhere")
        (connector,) = clock.unixClients
        factory = connector[1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        # The endpoint's wrapper fires connect() when the protocol connects.
        protocol.dataReceived(line(hello_message(1000)))
        clock.advance(2 * 1.0 + 5.0 + 0.1)
        failure = self.failureResultOf(d, FeedError)
        self.assertIn("within 7 s", str(failure.value))
        self.assertTrue(transport.disconnecting)
