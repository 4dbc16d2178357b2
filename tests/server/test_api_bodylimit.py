"""
Operator API bodies over the cap are refused before they are read, on a
real socket on 127.0.0.1: C{413 body_too_large} as soon as the
C{Content-Length} is known (the body is never sent) or a chunked body
crosses the cap, whoever asks; accepted bodies never go to a temporary
file; twisted.web's header limits hold.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from portunus.server.api.bodylimit import HEADER_LIMITS, MAX_BODY_BYTES, CappedRequest
from tests._net import LOOPBACK, CollectingClient, OneShotClientFactory
from tests.server._apiharness import TOKEN, ApiHarness
from tests.server._fakeplane import FakePlane

reactor: Any = _reactor


def head(method: str, path: str, *lines: str) -> bytes:
    """A request line and headers, ending the header block."""
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""]).encode()


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
        site = Site(self.api.resource)
        site.requestFactory = CappedRequest
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
        answer = yield self.exchange(
            head(
                "POST",
                "/v1/client-enrollments",
                f"Authorization: Bearer {TOKEN}",
                "Content-Type: application/json",
                f"Content-Length: {10 * 1024**3}",
            )
        )
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
            head(
                "POST",
                "/v1/client-enrollments",
                f"Authorization: Bearer {TOKEN}",
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            )
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
            head(
                "POST",
                "/v1/client-enrollments",
                f"Authorization: Bearer {TOKEN}",
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
                "Connection: close",
            )
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
            head(
                "POST",
                "/v1/client-enrollments",
                f"Authorization: Bearer {TOKEN}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                "Connection: close",
            )
            + body
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
