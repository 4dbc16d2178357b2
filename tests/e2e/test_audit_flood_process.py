"""
The operator API of a real C{twistd portunus-server} under an
unauthenticated flood, on 127.0.0.1: 60,000 requests refused before
authentication while the operator token (a superadmin) makes 30 changes.
After a restart every change's entry and every entry from before the
flood are there and the flood added no row; it was counted in the
metrics and summarized in a few log lines.  And the real server refuses
a body over the cap before it is sent.
"""

from __future__ import annotations

import json
import re
import signal
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks

from tests._net import LOOPBACK, CollectingClient, OneShotClientFactory
from tests.e2e._httpload import pipeline_load
from tests.e2e.test_audit_durability import OperatorApi
from tests.e2e.test_control_plane_process import reactor

#: Requests in the flood, and changes the superadmin makes meanwhile.
FLOOD = 60_000
CHANGES = 30
BEFORE = 3


class AuditFloodTests(OperatorApi):
    # The flood takes about a minute on two busy cores.
    timeout = 300

    def flood_requests(self) -> list[bytes]:
        """One of each kind of refusal before authentication, as raw HTTP/1.1."""
        host = f"Host: {LOOPBACK}:{self.http_port}\r\n"
        login = json.dumps({"user_id": "mallory", "password": "not the password"})
        return [
            # No superadmin has onboarded: 503 bootstrap_required.
            f"GET /v1/clients HTTP/1.1\r\n{host}\r\n".encode(),
            # An unknown bearer token: 401 credential_invalid.
            f"GET /v1/clients HTTP/1.1\r\n{host}Authorization: Bearer not-a-token\r\n\r\n".encode(),
            # Wrong passwords: 401 invalid_login, soon 429 rate_limited.
            (
                f"POST /v1/auth/login HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
                f"Content-Length: {len(login)}\r\n\r\n{login}"
            ).encode(),
        ]

    @inlineCallbacks
    def enroll(self, name: str) -> Any:
        status, body = yield self.api(
            "POST", "/v1/client-enrollments", {"name": name, "address": LOOPBACK}
        )
        self.assertEqual(status, 201, body)

    @inlineCallbacks
    def entries(self) -> Any:
        status, entries = yield self.api("GET", "/v1/audit?limit=1000")
        self.assertEqual(status, 200, entries)
        return entries

    @inlineCallbacks
    def test_flood_keeps_every_accountable_entry(self) -> Any:
        """
        60,000 unauthenticated requests while 30 changes are made: all 30
        change entries and the 3 entries from before are there after a
        restart, and nothing else; the flood is the unauthenticated
        counter and a handful of summary lines.
        """
        server = self.start_server()
        yield server.wait_for("server.started")
        for i in range(BEFORE):
            yield self.enroll(f"before-{i}")
        before = yield self.entries()
        self.assertEqual(len(before), BEFORE)

        flood = pipeline_load(reactor, self.http_port, self.flood_requests(), FLOOD)
        for i in range(CHANGES):
            yield self.enroll(f"during-{i}")
        statuses = yield flood
        self.assertEqual(sum(statuses.values()), FLOOD)
        self.assertLessEqual(set(statuses), {401, 429, 503}, statuses)

        scrape = yield treq.get(f"http://{LOOPBACK}:{self.metrics_port}/metrics", persistent=False)
        text = (yield treq.content(scrape)).decode()
        counted = re.findall(
            r"^portunus_operator_unauthenticated_failures_total\{[^}]*\} (\S+)$", text, re.M
        )
        self.assertEqual(sum(float(n) for n in counted), FLOOD)

        server.signal(signal.SIGTERM)
        self.assertEqual((yield server.exited), 0, server.stderr[-2000:])
        summaries = [e for e in server.events if e.get("event") == "audit.unauthenticated_summary"]
        self.assertEqual(sum(e["total"] for e in summaries), FLOOD)
        # The flood is a few lines of log, not one per request.
        self.assertLess(len(server.events), 200)
        self.assertNotIn("operator.deny", {e.get("event") for e in server.events})

        server = self.start_server()
        yield server.wait_for("server.started")
        after = yield self.entries()
        self.assertEqual(len(after), BEFORE + CHANGES, [e["reason"] for e in after[:10]])
        key = ("seq", "correlation_id", "timestamp")
        self.assertEqual(
            [tuple(e[k] for k in key) for e in after[-BEFORE:]],
            [tuple(e[k] for k in key) for e in before],
        )
        names = sorted(e["details"]["client_name"] for e in after[:CHANGES])
        self.assertEqual(names, sorted(f"during-{i}" for i in range(CHANGES)))
        self.assertEqual({(e["actor"], e["outcome"]) for e in after}, {("_legacy", "allow")})

    @inlineCallbacks
    def test_a_body_over_the_cap_is_refused_before_it_is_sent(self) -> Any:
        """The server answers 413 to a 2 GiB Content-Length, without the body, and closes."""
        server = self.start_server()
        yield server.wait_for("server.started")
        client = CollectingClient(
            (
                f"POST /v1/client-enrollments HTTP/1.1\r\nHost: {LOOPBACK}\r\n"
                f"Authorization: Bearer {self.token()}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {2 * 1024**3}\r\n\r\n"
            ).encode()
        )
        reactor.connectTCP(LOOPBACK, self.http_port, OneShotClientFactory(client), timeout=10)
        answer = yield client.done
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        self.assertEqual(error["code"], "body_too_large")
