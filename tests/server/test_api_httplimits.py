"""
The operator API site's limits.  Bodies over the cap are refused before
they are read, on a real socket on 127.0.0.1: C{413 body_too_large} as
soon as the C{Content-Length} is known (the body is never sent) or a
chunked body crosses the cap, whoever asks; accepted bodies never go to a
temporary file; twisted.web's header limits hold.  Idle connections are
closed after a minute, on a fake clock.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from portunus.server.api.httplimits import (
    HEADER_LIMITS,
    IDLE_TIMEOUT_SECS,
    MAX_BODY_BYTES,
    apply_limits,
)
from tests._net import LOOPBACK, CollectingClient, OneShotClientFactory
from tests.server._apiharness import TOKEN, ApiHarness
from tests.server._fakeplane import FakePlane

reactor: Any = _reactor


def head(method: str, path: str, *lines: str) -> bytes:
    """A request line and headers, ending the header block."""
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""]).encode()


def enrollment_head(*lines: str) -> bytes:
    """The head of an enrollment by the operator token, with a JSON body to follow."""
    return head(
        "POST",
        "/v1/client-enrollments",
        f"Authorization: Bearer {TOKEN}",
        "Content-Type: application/json",
        *lines,
    )


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, the headers (lower-cased names) and the body of one answer."""
    top, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


class BodyLimitTests(TestCase):
    """The API's site, as the server builds it, over a fake plane."""

    timeout = 30

    def setUp(self) -> None:
        self.plane = FakePlane()
        self.api = ApiHarness(self, self.plane)
        self.api.onboard()
        site = apply_limits(Site(self.api.resource))
        self.port = reactor.listenTCP(0, site, interface=LOOPBACK)
        self.addCleanup(self.port.stopListening)
        self.spooled: list[object] = []
        original = tempfile.TemporaryFile

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.spooled.append(args)
            return original(*args, **kwargs)

        self.patch(tempfile, "TemporaryFile", spy)

    def exchange(self, data: bytes) -> Any:
        """Send C{data} (never half-closing); fire with all that comes back before the close."""
        client = CollectingClient(data)
        reactor.connectTCP(
            LOOPBACK, self.port.getHost().port, OneShotClientFactory(client), timeout=10
        )
        return client.done

    def assert_refused(self, answer: bytes) -> None:
        status, headers, body = parse(answer)
        self.assertEqual(status, 413, answer)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(int(headers["content-length"]), len(body))
        error = json.loads(body)["error"]
        self.assertEqual((error["code"], error["limit"]), ("body_too_large", MAX_BODY_BYTES))
        self.assertIn(str(MAX_BODY_BYTES), error["message"])
        # Nothing reached the pipeline: no plane call, no audit entry.
        self.assertEqual(self.plane.calls, [])
        self.assertEqual(self.spooled, [])

    @inlineCallbacks
    def test_declared_length_refused_before_the_body(self) -> Any:
        """
        A Content-Length over the cap is answered 413 when the headers end;
        the client never sends a byte of the body, and the server closes.
        """
        before = len(self.api.audit.entries)
        answer = yield self.exchange(enrollment_head(f"Content-Length: {10 * 1024**3}"))
        self.assert_refused(answer)
        self.assertEqual(len(self.api.audit.entries), before)

    @inlineCallbacks
    def test_unauthenticated_requests_alike(self) -> Any:
        """Without credentials, and on a public route, the refusal is the same 413."""
        for path in ("/v1/client-enrollments", "/v1/auth/login"):
            answer = yield self.exchange(
                head("POST", path, "Content-Type: application/json", f"Content-Length: {1 << 30}")
            )
            self.assert_refused(answer)

    @inlineCallbacks
    def test_one_byte_over_the_cap(self) -> Any:
        """The cap is inclusive: one byte more is refused."""
        answer = yield self.exchange(
            head("POST", "/v1/auth/login", f"Content-Length: {MAX_BODY_BYTES + 1}")
        )
        self.assert_refused(answer)

    @inlineCallbacks
    def test_no_100_continue_for_a_refused_body(self) -> Any:
        """A client that asks before sending (Expect: 100-continue) gets only the 413."""
        answer = yield self.exchange(
            head(
                "PUT",
                "/v1/settings/advertised-endpoint",
                "Expect: 100-continue",
                f"Content-Length: {MAX_BODY_BYTES * 2}",
            )
        )
        self.assertFalse(answer.startswith(b"HTTP/1.1 100"), answer)
        self.assert_refused(answer)

    @inlineCallbacks
    def test_chunked_body_refused_when_it_crosses_the_cap(self) -> Any:
        """
        A chunked body is refused once its running total passes the cap:
        here a chunk declaring 2 MiB, of which one byte more than the cap
        is sent before the client waits.
        """
        answer = yield self.exchange(
            enrollment_head("Transfer-Encoding: chunked")
            + f"{2 * MAX_BODY_BYTES:x}\r\n".encode()
            + b"x" * (MAX_BODY_BYTES + 1)
        )
        self.assert_refused(answer)

    def enrollment(self, padding: int) -> bytes:
        return json.dumps(
            {"name": "edge-big", "address": LOOPBACK, "padding": "x" * padding}
        ).encode()

    @inlineCallbacks
    def test_chunked_body_under_the_cap_is_served_from_memory(self) -> Any:
        """
        A chunked body under the cap reaches its route, and is never
        spooled to a temporary file (twisted.web spools every chunked body).
        """
        body = self.enrollment(300_000)
        chunks = b"".join(
            f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            for piece in (body[i : i + 65536] for i in range(0, len(body), 65536))
        )
        answer = yield self.exchange(
            enrollment_head("Transfer-Encoding: chunked", "Connection: close")
            + chunks
            + b"0\r\n\r\n"
        )
        status, _, reply = parse(answer)
        self.assertEqual(status, 201, reply)
        self.assertEqual(self.spooled, [])

    @inlineCallbacks
    def test_body_of_exactly_the_cap_is_served_from_memory(self) -> Any:
        """A body of exactly the cap is accepted, and not spooled either."""
        body = self.enrollment(0)
        body = self.enrollment(MAX_BODY_BYTES - len(body))
        self.assertEqual(len(body), MAX_BODY_BYTES)
        answer = yield self.exchange(
            enrollment_head(f"Content-Length: {len(body)}", "Connection: close") + body
        )
        status, _, reply = parse(answer)
        self.assertEqual(status, 201, reply)
        self.assertEqual(self.spooled, [])

    @inlineCallbacks
    def test_header_block_is_bounded(self) -> Any:
        """
        Headers past twisted.web's limits (bytes of the whole block, or
        header lines) get 400 and the connection closes.
        """
        too_long = [
            f"X-Filler-{i}: {'y' * 200}" for i in range(HEADER_LIMITS["header_bytes"] // 200)
        ]
        answer = yield self.exchange(head("GET", "/v1/health", *too_long))
        self.assertEqual(parse(answer)[0], 400, answer[:200])
        too_many = [f"X-{i}: 1" for i in range(HEADER_LIMITS["header_lines"] + 1)]
        answer = yield self.exchange(head("GET", "/v1/health", *too_many))
        self.assertEqual(parse(answer)[0], 400, answer[:200])


class Endless(Resource):
    """Answers every request with a response that never ends (as a live stream)."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        request.write(b"")
        return NOT_DONE_YET


class IdleTimeoutTests(SynchronousTestCase):
    def connect(self) -> tuple[Clock, StringTransport, Any]:
        clock = Clock()
        # Older twisted.web versions wait 12 hours by default.
        site = apply_limits(Site(Endless(), reactor=clock, timeout=12 * 3600))
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        return clock, transport, channel

    def test_a_silent_connection_is_closed(self) -> None:
        """A connection that sends nothing for a minute is closed, whatever the site's default."""
        clock, transport, _ = self.connect()
        clock.advance(IDLE_TIMEOUT_SECS - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_a_request_being_answered_is_not_cut(self) -> None:
        """While a request is answered (a live stream), the idle timeout does not run."""
        clock, transport, channel = self.connect()
        channel.dataReceived(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(IDLE_TIMEOUT_SECS * 10)
        self.assertFalse(transport.disconnecting)
