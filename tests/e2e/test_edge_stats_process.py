"""
Rule stats from a real edge, end to end: a two-target failover rule pushed
to a real twistd portunus-client, traffic through it on 127.0.0.1, and the
per-target health and counters the edge reports answered by
C{GET /v1/rules/<id>/stats?per_target=true} and C{rule-stats --per-target}.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from tests._net import LOOPBACK, echo_factory, free_port
from tests.e2e.test_control_plane_process import SERVER_CLI, _ProcessCase, reactor

#: The edge reports every this many seconds here (5 by default).
REPORT_SECS = 1
#: Polls of the stats answer before giving up (each REPORT_SECS apart).
MAX_POLLS = 60


class EdgeStatsProcessTests(_ProcessCase):
    @inlineCallbacks
    def enrolled_edge(self, name: str) -> Any:
        bundle = yield self.enroll_bundle(name)
        edge = self.spawn(
            "portunus-client", "--bundle", bundle, "--stats-report-interval-secs", str(REPORT_SECS)
        )
        yield edge.wait_for("control.connected")
        return edge

    @inlineCallbacks
    def stats_until(self, rule_id: int, done: Any) -> Any:
        """Poll the API's stats until C{done(stats)}; bounded."""
        with open(os.path.join(self.data_dir, "operator.token")) as f:
            headers = {"Authorization": f"Bearer {f.read().strip()}"}
        url = f"http://{LOOPBACK}:{self.http_port}/v1/rules/{rule_id}/stats?per_target=true"
        stats: dict[str, Any] = {}
        for _ in range(MAX_POLLS):
            response = yield treq.get(url, headers=headers, persistent=False)
            self.assertEqual(response.code, 200)
            stats = yield treq.json_content(response)
            if done(stats):
                return stats
            yield deferLater(reactor, REPORT_SECS, lambda: None)
        self.fail(f"stats never matched: {stats}")

    @inlineCallbacks
    def test_failover_rule_reports_each_targets_health(self) -> Any:
        """
        The first target refuses (nothing listens there), so connections
        fail over to the second: the first is reported with its failures
        and no bytes, the second with the connection and its bytes.
        """
        server = self.start_server()
        yield server.wait_for("server.started")
        edge = yield self.enrolled_edge("edge-stats")
        target = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(target.stopListening)
        dead, live = f"{LOOPBACK}:{free_port()}", f"{LOOPBACK}:{target.getHost().port}"
        listen_port = free_port()
        out, err, code = yield self.cli(
            SERVER_CLI,
            "push-rule",
            "edge-stats",
            str(listen_port),
            "--target",
            dead,
            "--target",
            live,
        )
        self.assertEqual(code, 0, err.decode())
        rule_id = int(out.decode().strip())
        yield edge.wait_for("rule.activated")

        payload = os.urandom(64 * 1024)
        received, digest = yield self.send(listen_port, payload)
        self.assertEqual((received, digest), (len(payload), hashlib.sha256(payload).hexdigest()))

        def reported(stats: dict[str, Any]) -> bool:
            rows = stats.get("per_target") or []
            return len(rows) == 2 and rows[1]["bytes_out"] == len(payload)

        stats = yield self.stats_until(rule_id, reported)
        first, second = stats["per_target"]
        self.assertEqual((first["target"], second["target"]), (dead, live))
        self.assertGreaterEqual(first["consecutive_failures"], 1)
        self.assertIsNotNone(first["last_failure_at"])
        self.assertEqual((first["bytes_in"], first["total_connections"]), (0, 0))
        self.assertEqual(second["health"], "healthy")
        self.assertEqual((second["bytes_in"], second["total_connections"]), (len(payload), 1))
        self.assertIsNotNone(second["last_success_at"])

        # The CLI shows the same rows.
        out, err, code = yield self.cli(SERVER_CLI, "rule-stats", str(rule_id), "--per-target")
        self.assertEqual(code, 0, err.decode())
        lines = out.decode().splitlines()
        self.assertTrue(any(f"target={dead}" in line for line in lines), lines)
        self.assertTrue(any(f"target={live}" in line for line in lines), lines)

        # And a rule with one target reports none.
        out, err, code = yield self.cli(
            SERVER_CLI, "push-rule", "edge-stats", str(free_port()), live
        )
        self.assertEqual(code, 0, err.decode())
        single = int(out.decode().strip())
        stats = yield self.stats_until(single, lambda s: s.get("updated_at") is not None)
        self.assertEqual(stats["per_target"], [])
