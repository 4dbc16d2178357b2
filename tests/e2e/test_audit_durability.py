"""
The audit log survives kill -9: writes made through the operator API are
listed by C{GET /v1/audit}, the server is killed with SIGKILL, and a new
server on the same data dir lists the same entries.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from tests._net import LOOPBACK
from tests.e2e.test_control_plane_process import _ProcessCase, reactor

#: Polls of GET /v1/audit before giving up, 0.1 s apart.
POLLS = 100


class OperatorApi(_ProcessCase):
    """A process case that calls the server's operator API with the operator token."""

    def token(self) -> str:
        with open(os.path.join(self.data_dir, "operator.token")) as f:
            return f.read().strip()

    @inlineCallbacks
    def api(self, method: str, path: str, body: object = None) -> Any:
        response = yield treq.request(
            method,
            f"http://{LOOPBACK}:{self.http_port}{path}",
            headers={"Authorization": f"Bearer {self.token()}"},
            json=body,
            persistent=False,
        )
        content = yield treq.content(response)
        return response.code, json.loads(content) if content else None


class AuditDurabilityTests(OperatorApi):
    @inlineCallbacks
    def enrollment_entries(self, wanted: int) -> Any:
        """Poll the audit log until it lists C{wanted} enrollment writes."""
        for _ in range(POLLS):
            status, entries = yield self.api("GET", "/v1/audit?actor=_legacy&limit=1000")
            self.assertEqual(status, 200, entries)
            found = [e for e in entries if e["path"] == "/v1/client-enrollments"]
            if len(found) >= wanted:
                return found
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail(f"the audit log never listed {wanted} enrollments: {entries}")

    @inlineCallbacks
    def test_entries_survive_sigkill(self) -> Any:
        server = self.start_server()
        yield server.wait_for("server.started")
        for name in ("edge-a", "edge-b", "edge-c"):
            status, body = yield self.api(
                "POST", "/v1/client-enrollments", {"name": name, "address": LOOPBACK}
            )
            self.assertEqual(status, 201, body)
        before = yield self.enrollment_entries(3)
        self.assertEqual({e["outcome"] for e in before}, {"allow"})
        self.assertEqual({e["method"] for e in before}, {"POST"})

        server.transport.signalProcess("KILL")
        yield server.exited
        server = self.start_server()
        yield server.wait_for("server.started")

        after = yield self.enrollment_entries(3)
        self.assertEqual(
            [(e["seq"], e["correlation_id"]) for e in after],
            [(e["seq"], e["correlation_id"]) for e in before],
        )
