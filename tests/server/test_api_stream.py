"""
C{GET /v1/rules/<id>/stats/stream} over a real HTTP/1.1 channel: the API's
Klein resource in a L{Site} whose connection is a L{StringTransport}, so the
headers, the chunked body, the transport pausing the stream and the client
going away are Twisted's own, and time moves only with the L{Clock}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from portunus.server.api import streams
from portunus.server.plane import IControlPlane
from tests._net import free_port
from tests.server._apiharness import TOKEN, ApiHarness
from tests.server._fakeplane import FakePlane
from tests.server.test_control_session import Harness, tcp_rule


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    """The body of a chunked response so far, and whether it has ended."""
    body = b""
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body, True
        if len(rest) < size + 2:
            break
        body += rest[:size]
        data = rest[size + 2 :]
    return body, False


class Connection:
    """One client connection to the API, as raw HTTP/1.1."""

    def __init__(self, site: Site, path: str, headers: dict[str, str]) -> None:
        self.transport = StringTransport()
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert self.channel is not None
        self.channel.makeConnection(self.transport)
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:7080"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _parts(self) -> tuple[int, dict[str, str], bytes, bool]:
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body, ended = _dechunk(rest)
        else:
            body, ended = rest, True
        return int(status_line.split()[1]), headers, body, ended

    @property
    def status(self) -> int:
        return self._parts()[0]

    @property
    def headers(self) -> dict[str, str]:
        return self._parts()[1]

    @property
    def ended(self) -> bool:
        """The response is complete (the zero-length chunk was sent)."""
        return self._parts()[3]

    def json(self) -> Any:
        return json.loads(self._parts()[2])

    def events(self) -> list[tuple[str, Any]]:
        """Every event so far: C{(name, data)}, comments as C{(":", text)}."""
        found: list[tuple[str, Any]] = []
        for block in self._parts()[2].decode("utf-8").split("\n\n"):
            if not block:
                continue
            if block.startswith(":"):
                found.append((":", block[1:].strip()))
                continue
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            found.append((fields["event"], json.loads(fields["data"])))
        return found

    def pause(self) -> None:
        """The kernel's send buffer is full: the transport pauses its producer."""
        assert self.transport.producer is not None
        self.transport.producer.pauseProducing()

    def resume(self) -> None:
        assert self.transport.producer is not None
        self.transport.producer.resumeProducing()

    def close(self) -> None:
        """The client goes away."""
        self.channel.connectionLost(Failure(ConnectionDone()))


class StreamTestCase(SynchronousTestCase):
    """An API over a L{FakePlane}: rule 1 is bob's, rule 2 carol's."""

    def setUp(self) -> None:
        self.plane = FakePlane()
        self.edge = self.plane.add_client("edge-01")
        self.api = ApiHarness(self, self.plane)
        self.clock = self.api.clock
        self.site = Site(self.api.app.resource(), reactor=self.clock)
        self.api.onboard()
        self.api.add_user("bob")
        self.api.add_user("carol")
        self.bob = self.api.login("bob", "a long enough password")
        self.bobs = self._push(8080, "bob")
        self.carols = self._push(8081, "carol")

    def _push(self, port: int, owner: str) -> int:
        view = self.successResultOf(
            ensureDeferred(
                self.plane.push_rule(self.edge.client_id, tcp_rule(port), 2.0, owner_user_id=owner)
            )
        )
        rule_id: int = view.rule.id
        return rule_id

    def open(
        self, rule_id: int, query: str = "", cookie: str | None = None, token: str | None = TOKEN
    ) -> Connection:
        headers = {}
        if cookie is not None:
            headers["Cookie"] = f"portunus_session={cookie}"
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return Connection(self.site, f"/v1/rules/{rule_id}/stats/stream{query}", headers)


class StreamTests(StreamTestCase):
    def test_snapshot_first(self) -> None:
        """
        The stream answers 200 as C{text/event-stream}, uncached and
        unbuffered by proxies, and opens with the cached snapshot: the
        JSON of C{GET /stats}, without the per-port rows.
        """
        self.plane.emit_stats(self.bobs, bytes_in=10, per_port=[{"port": 8080}])
        status, stats, _ = self.api.request("GET", f"/v1/rules/{self.bobs}/stats")
        self.assertEqual(status, 200)
        self.assertNotIn("per_port", stats)

        conn = self.open(self.bobs, "?per_target=true")

        self.assertEqual(conn.status, 200)
        self.assertEqual(conn.headers["content-type"], "text/event-stream")
        self.assertEqual(conn.headers["cache-control"], "no-cache")
        self.assertEqual(conn.headers["x-accel-buffering"], "no")
        self.assertEqual(conn.events(), [("stats", stats)])
        self.assertFalse(conn.ended)

    def test_snapshot_before_any_report(self) -> None:
        """Before the first report the snapshot has zeros and updated_at null."""
        conn = self.open(self.bobs)
        [(name, data)] = conn.events()
        self.assertEqual((name, data["rule_id"], data["updated_at"]), ("stats", self.bobs, None))

    def test_per_target_on_request(self) -> None:
        """The per-target rows come only with C{?per_target=true|1|yes}."""
        self.plane.emit_stats(self.bobs, per_target=[{"host": "10.0.0.5", "healthy": True}])
        self.assertNotIn("per_target", self.open(self.bobs).events()[0][1])
        self.assertNotIn("per_target", self.open(self.bobs, "?per_target=no").events()[0][1])
        for value in ("true", "1", "yes"):
            data = self.open(self.bobs, f"?per_target={value}").events()[0][1]
            self.assertEqual(data["per_target"], [{"host": "10.0.0.5", "healthy": True}])

    def test_each_report_is_an_event(self) -> None:
        """Every report of the rule becomes one C{stats} event, in order."""
        conn = self.open(self.bobs)
        self.plane.emit_stats(self.bobs, bytes_in=1)
        self.plane.emit_stats(self.carols, bytes_in=99)
        self.plane.emit_stats(self.bobs, bytes_in=2)
        events = conn.events()
        self.assertEqual([name for name, _ in events], ["stats"] * 3)
        self.assertEqual([data.get("bytes_in") for _, data in events[1:]], [1, 2])
        self.assertEqual(events[1][1]["updated_at"], "2023-11-14T22:13:20Z")

    def test_keepalive(self) -> None:
        """A C{: keepalive} comment every 30 s of the clock, and nothing sooner."""
        conn = self.open(self.bobs)
        self.clock.advance(29.9)
        self.assertEqual(len(conn.events()), 1)
        self.clock.advance(0.1)
        self.assertEqual(conn.events()[1:], [(":", "keepalive")])
        self.clock.advance(30)
        self.clock.advance(30)
        self.assertEqual(conn.events()[1:], [(":", "keepalive")] * 3)
        self.assertFalse(conn.ended)

    def test_removed_ends_the_stream(self) -> None:
        """
        Removing the rule sends C{event: removed} and completes the
        response; the subscription and the keepalive timer go with it.
        """
        conn = self.open(self.bobs)
        status, _, _ = self.api.request("DELETE", f"/v1/rules/{self.bobs}")
        self.assertEqual(status, 204)
        self.assertEqual(conn.events()[-1], ("removed", {"rule_id": self.bobs}))
        self.assertTrue(conn.ended)
        self.assertEqual(self.plane.subscribers, {})
        before = conn.transport.value()
        self.clock.advance(120)
        self.assertEqual(conn.transport.value(), before)

    def test_removed_by_a_cascade(self) -> None:
        """A rule dropped by a user or grant cascade (forget_rules) ends its stream too."""
        conn = self.open(self.bobs)

        class Record:
            rule_id = self.bobs

        self.successResultOf(ensureDeferred(self.plane.forget_rules([Record()])))
        self.assertEqual(conn.events()[-1], ("removed", {"rule_id": self.bobs}))
        self.assertTrue(conn.ended)

    def test_disconnect_unsubscribes(self) -> None:
        """
        A client that goes away is unsubscribed and its keepalive timer
        stopped; later reports and ticks write nothing and log no error.
        """
        conn = self.open(self.bobs)
        self.assertIn(self.bobs, self.plane.subscribers)
        conn.close()
        self.assertEqual(self.plane.subscribers, {})
        before = conn.transport.value()
        self.plane.emit_stats(self.bobs, bytes_in=5)
        self.clock.advance(120)
        self.assertEqual(conn.transport.value(), before)

    def test_keep_alive_connection_serves_the_next_request(self) -> None:
        """
        After a stream ends, the same connection answers another request:
        the stream let go of the connection (its producer is unregistered).
        """
        conn = self.open(self.bobs)
        self.successResultOf(ensureDeferred(self.plane.remove_rule(self.bobs)))
        self.assertTrue(conn.ended)
        conn.transport.clear()
        request = (
            f"GET /v1/rules/{self.carols}/stats/stream HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n"
        )
        conn.channel.dataReceived(request.encode())
        self.assertEqual(conn.status, 200)
        self.assertEqual(conn.events()[0][1]["rule_id"], self.carols)


class StreamAccessTests(StreamTestCase):
    def test_owner(self) -> None:
        """A user streams their own rule."""
        conn = self.open(self.bobs, cookie=self.bob)
        self.assertEqual((conn.status, conn.events()[0][0]), (200, "stats"))

    def test_not_owner(self) -> None:
        """Someone else's rule is 403 not_owner, as for GET /stats, and no subscription."""
        conn = self.open(self.carols, cookie=self.bob)
        self.assertEqual(conn.status, 403)
        self.assertEqual(conn.json()["error"]["code"], "not_owner")
        self.assertTrue(conn.ended)
        self.assertEqual(self.plane.subscribers, {})
        denied = [e for e in self.api.audit.entries if e.outcome == "deny"]
        self.assertEqual([(e.actor, e.reason) for e in denied], [("bob", "not_owner")])

    def test_superadmin_streams_any_rule(self) -> None:
        self.assertEqual(self.open(self.carols).status, 200)

    def test_unauthenticated(self) -> None:
        conn = self.open(self.bobs, token=None)
        self.assertEqual((conn.status, conn.json()["error"]["code"]), (401, "unauthenticated"))

    def test_unknown_rule(self) -> None:
        conn = self.open(999)
        self.assertEqual((conn.status, conn.json()["error"]["code"]), (404, "rule_not_found"))

    def test_reads_are_not_audited(self) -> None:
        """An allowed stream is a read: no audit entry, as for any GET."""
        before = len(self.api.audit.entries)
        self.open(self.bobs)
        self.assertEqual(len(self.api.audit.entries), before)


class StreamLimitTests(StreamTestCase):
    def test_per_user_limit(self) -> None:
        """
        One user may hold MAX_STREAMS_PER_USER streams; one more is 429
        rate_limited saying so, and closing one makes room.
        """
        self.patch(streams, "MAX_STREAMS_PER_USER", 2)
        first = self.open(self.bobs, cookie=self.bob)
        self.open(self.bobs, cookie=self.bob)
        refused = self.open(self.bobs, cookie=self.bob)
        self.assertEqual(refused.status, 429)
        error = refused.json()["error"]
        self.assertEqual((error["code"], error["limit"]), ("rate_limited", 2))
        self.assertIn("limit per user", error["message"])
        self.assertEqual(self.open(self.carols).status, 200)

        first.close()
        self.assertEqual(self.open(self.bobs, cookie=self.bob).status, 200)

    def test_total_limit(self) -> None:
        """The server serves at most MAX_STREAMS streams, whoever holds them."""
        self.patch(streams, "MAX_STREAMS", 3)
        self.open(self.bobs)
        self.open(self.bobs)
        ended = self.open(self.carols)
        refused = self.open(self.bobs, cookie=self.bob)
        self.assertEqual(refused.status, 429)
        self.assertIn("the server already serves 3", refused.json()["error"]["message"])

        self.successResultOf(ensureDeferred(self.plane.remove_rule(self.carols)))
        self.assertTrue(ended.ended)
        self.assertEqual(self.open(self.bobs, cookie=self.bob).status, 200)


class StreamLagTests(StreamTestCase):
    def test_backed_up_reader_gets_only_the_newest(self) -> None:
        """
        While the transport's buffer is full nothing is written and only
        the newest snapshot is held; when it drains that one is sent and
        C{stats_stream.lagged} counts the skipped ones.
        """
        conn = self.open(self.bobs)
        conn.pause()
        before = conn.transport.value()
        with capturedLogs() as logged:
            for n in range(1, 101):
                self.plane.emit_stats(self.bobs, bytes_in=n)
            self.clock.advance(30)
            self.assertEqual(conn.transport.value(), before)
            conn.resume()
        events = conn.events()
        self.assertEqual(len(events), 2)
        self.assertEqual(events[1][1]["bytes_in"], 100)
        lagged = [e for e in logged if e.get("event") == "stats_stream.lagged"]
        self.assertEqual([(e["rule_id"], e["skipped"]) for e in lagged], [(str(self.bobs), 99)])

        self.plane.emit_stats(self.bobs, bytes_in=101)
        self.assertEqual(conn.events()[-1][1]["bytes_in"], 101)

    def test_removed_while_backed_up(self) -> None:
        """A removal still ends a paused stream; the held snapshot counts as skipped."""
        conn = self.open(self.bobs)
        conn.pause()
        with capturedLogs() as logged:
            self.plane.emit_stats(self.bobs, bytes_in=1)
            self.successResultOf(ensureDeferred(self.plane.remove_rule(self.bobs)))
        self.assertEqual(conn.events()[1:], [("removed", {"rule_id": self.bobs})])
        self.assertTrue(conn.ended)
        lagged = [e["skipped"] for e in logged if e.get("event") == "stats_stream.lagged"]
        self.assertEqual(lagged, [1])

    def test_no_lag_no_log(self) -> None:
        """A reader that keeps up never logs stats_stream.lagged."""
        conn = self.open(self.bobs)
        with capturedLogs() as logged:
            for n in range(5):
                self.plane.emit_stats(self.bobs, bytes_in=n)
        self.assertEqual(len(conn.events()), 6)
        self.assertFalse([e for e in logged if e.get("event") == "stats_stream.lagged"])


class PlaneSubscriptionTests(SynchronousTestCase):
    """The real ControlPlane's stats subscription, with an edge connected over iosim."""

    def setUp(self) -> None:
        self.h = Harness(self)
        bundle = self.h.enroll()["bundle"]
        _, _, self.session, _ = self.h.edge(bundle.token)
        self.client_id = bundle.client_id
        self.rule_id = self.h.successful(self.h.push(self.client_id, tcp_rule(free_port()))).rule.id
        self.told: list[dict[str, Any] | None] = []

    def test_reports_reach_subscribers(self) -> None:
        """Each report for the rule reaches its subscriber as rule_stats would answer it."""
        self.h.plane.subscribe_stats(self.rule_id, self.told.append)
        self.h.plane.stats_received(self.session, 1000, [{"rule_id": self.rule_id, "bytes_in": 7}])
        self.h.plane.stats_received(self.session, 1000, [{"rule_id": 999, "bytes_in": 8}])
        [entry] = self.told
        assert entry is not None
        self.assertEqual(entry, self.h.successful(self.h.plane.rule_stats(self.rule_id)))
        self.assertEqual((entry["bytes_in"], entry["client_id"]), (7, self.client_id))

    def test_unsubscribe(self) -> None:
        """After unsubscribing (twice is harmless) nothing more arrives."""
        stop = self.h.plane.subscribe_stats(self.rule_id, self.told.append)
        stop()
        stop()
        self.h.plane.stats_received(self.session, 1000, [{"rule_id": self.rule_id}])
        self.assertEqual(self.told, [])

    def test_removal_tells_none_once(self) -> None:
        """Removing the rule tells each subscriber C{None} once and drops them."""
        self.h.plane.subscribe_stats(self.rule_id, self.told.append)
        self.h.successful(self.h.plane.remove_rule(self.rule_id))
        self.assertEqual(self.told, [None])
        self.h.plane.stats_received(self.session, 1000, [{"rule_id": self.rule_id}])
        self.assertEqual(self.told, [None])

    def test_a_failing_subscriber_does_not_stop_the_others(self) -> None:
        """One subscriber raising is logged; the cache and the others still get the report."""

        def broken(entry: object) -> None:
            raise RuntimeError("boom")

        self.h.plane.subscribe_stats(self.rule_id, broken)
        self.h.plane.subscribe_stats(self.rule_id, self.told.append)
        self.h.plane.stats_received(self.session, 1000, [{"rule_id": self.rule_id}])
        self.assertEqual(len(self.told), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_interfaces(self) -> None:
        """The ControlPlane and the FakePlane both provide IControlPlane, subscription included."""
        self.assertTrue(verifyObject(IControlPlane, self.h.plane))
        self.assertTrue(verifyObject(IControlPlane, FakePlane()))
