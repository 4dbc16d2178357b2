"""
The server's Prometheus metrics: the families and labels of the exposition,
per-rule values that follow the control plane's stats cache, a series count
bounded by the live rules whatever the traffic and churn, and the
C{/metrics} resource.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from portunus.model import PortRange, Protocol, Rule, Target
from portunus.server.metrics import (
    AUTH_FAILURE_REASONS,
    CONTENT_TYPE,
    RULE_COUNTERS,
    RuleMetricsRow,
    ServerMetrics,
)
from portunus.server.metricsweb import MetricsRoot
from tests._net import LOOPBACK, free_port, free_port_range
from tests.server.test_control_session import Harness, tcp_rule

#: Every per-rule family name as exposed (counters with their C{_total}).
RULE_FAMILIES = {
    f"{name}_total" if kind == "counter" else name: key for name, key, kind, _ in RULE_COUNTERS
}


def samples(metrics: ServerMetrics) -> list[Sample]:
    """Every sample of one scrape, parsed back from the text exposition."""
    text = metrics.render().decode("utf-8")
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(metrics: ServerMetrics, name: str, **labels: str) -> float | None:
    """The value of the one sample C{name{labels}}, or None if absent."""
    found = [s.value for s in samples(metrics) if s.name == name and s.labels == labels]
    assert len(found) <= 1, found
    return found[0] if found else None


def rule_samples(metrics: ServerMetrics) -> list[Sample]:
    return [s for s in samples(metrics) if s.name.startswith("portunus_rule_")]


class FakeSource:
    """A L{MetricsSource} whose rows and client count a test sets."""

    def __init__(self) -> None:
        self.rows: list[RuleMetricsRow] = []
        self.clients = 0

    def metrics_snapshot(self) -> list[RuleMetricsRow]:
        return list(self.rows)

    def connected_clients(self) -> int:
        return self.clients


def row(rule_id: int, **kw: Any) -> RuleMetricsRow:
    values: dict[str, Any] = dict(
        rule_id=rule_id,
        client_id="01HCLIENT",
        client_name="edge-01",
        owner="alice",
        protocol="tcp",
        multi_target=False,
        sni=False,
    )
    values.update(kw)
    return RuleMetricsRow(**values)


class ExpositionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.source = FakeSource()
        self.metrics = ServerMetrics(self.source)

    def test_families_types_and_help(self) -> None:
        """Every family of the reference that exists today is declared, with its type."""
        text = self.metrics.render().decode("utf-8")
        expected = {
            "portunus_clients_connected": "gauge",
            "portunus_auth_failures_total": "counter",
            "portunus_operator_requests_total": "counter",
            "portunus_audit_queue_full_waits_total": "counter",
            "portunus_operator_unauthenticated_failures_total": "counter",
            "portunus_audit_durable_writer_lag_seconds": "gauge",
            "portunus_store_busy_total": "counter",
            "portunus_tls_sni_routes_active": "gauge",
            **{name: "counter" if name.endswith("_total") else "gauge" for name in RULE_FAMILIES},
        }
        for name, kind in expected.items():
            self.assertIn(f"# TYPE {name} {kind}\n", text)
            self.assertIn(f"# HELP {name} ", text)

    def test_auth_failure_reasons_start_at_zero(self) -> None:
        """Each known reason is exported before it happens, so rate() sees the first one."""
        for reason in AUTH_FAILURE_REASONS:
            self.assertEqual(value(self.metrics, "portunus_auth_failures_total", reason=reason), 0)
        self.metrics.auth_failed("token_revoked")
        self.metrics.auth_failed("token_revoked")
        self.assertEqual(
            value(self.metrics, "portunus_auth_failures_total", reason="token_revoked"), 2
        )

    def test_request_done_counts_by_outcome_and_reason(self) -> None:
        """request_done(outcome, reason) adds one to that pair only."""
        self.metrics.request_done("allow", "ok")
        self.metrics.request_done("allow", "ok")
        self.metrics.request_done("deny", "rbac.forbidden")
        name = "portunus_operator_requests_total"
        self.assertEqual(value(self.metrics, name, outcome="allow", reason="ok"), 2)
        self.assertEqual(value(self.metrics, name, outcome="deny", reason="rbac.forbidden"), 1)
        self.assertIsNone(value(self.metrics, name, outcome="deny", reason="ok"))

    def test_audit_and_store_hooks(self) -> None:
        """The audit writer's and store's hooks move their series."""
        for _ in range(5):
            self.metrics.audit_waited()
        self.metrics.audit_lag(2.5)
        self.metrics.store_busy()
        self.metrics.unauthenticated_failure("credential_invalid")
        self.metrics.unauthenticated_failure("credential_invalid")
        self.metrics.unauthenticated_failure("unauthenticated")
        self.assertEqual(value(self.metrics, "portunus_audit_queue_full_waits_total"), 5)
        name = "portunus_operator_unauthenticated_failures_total"
        self.assertEqual(value(self.metrics, name, reason="credential_invalid"), 2)
        self.assertEqual(value(self.metrics, name, reason="unauthenticated"), 1)
        self.assertEqual(value(self.metrics, "portunus_audit_durable_writer_lag_seconds"), 2.5)
        self.assertEqual(value(self.metrics, "portunus_store_busy_total"), 1)

    def test_clients_connected_is_read_at_scrape(self) -> None:
        self.assertEqual(value(self.metrics, "portunus_clients_connected"), 0)
        self.source.clients = 3
        self.assertEqual(value(self.metrics, "portunus_clients_connected"), 3)

    def test_rule_rows_labels_and_values(self) -> None:
        """A row's counters appear under client, rule and owner labels; zeros before stats."""
        self.source.rows = [
            row(7, stats={"bytes_in": 10, "bytes_out": 20, "active_connections": 2}),
            row(8, client_name="edge-02", owner=""),
        ]
        labels = {"client": "edge-01", "rule": "7", "owner": "alice"}
        self.assertEqual(value(self.metrics, "portunus_rule_bytes_in_total", **labels), 10)
        self.assertEqual(value(self.metrics, "portunus_rule_bytes_out_total", **labels), 20)
        self.assertEqual(value(self.metrics, "portunus_rule_active_connections", **labels), 2)
        empty = {"client": "edge-02", "rule": "8", "owner": ""}
        for name in RULE_FAMILIES:
            if name != "portunus_rule_target_failovers_total":
                self.assertEqual(value(self.metrics, name, **empty), 0, name)

    def test_failovers_only_for_multi_target_rules(self) -> None:
        self.source.rows = [
            row(1, stats={"target_failovers_total": 9}),
            row(2, multi_target=True, stats={"target_failovers_total": 3}),
        ]
        failovers = [
            s for s in samples(self.metrics) if s.name == "portunus_rule_target_failovers_total"
        ]
        self.assertEqual([(s.labels["rule"], s.value) for s in failovers], [("2", 3)])

    def test_sni_routes_active_counts_sni_rows(self) -> None:
        self.source.rows = [row(1, sni=True), row(2, sni=True), row(3)]
        self.assertEqual(value(self.metrics, "portunus_tls_sni_routes_active"), 2)

    def test_garbage_in_a_report_reads_as_zero(self) -> None:
        """A client's report is input: a non-number never breaks the scrape."""
        self.source.rows = [row(1, stats={"bytes_in": "lots", "bytes_out": True})]
        labels = {"client": "edge-01", "rule": "1", "owner": "alice"}
        self.assertEqual(value(self.metrics, "portunus_rule_bytes_in_total", **labels), 0)
        self.assertEqual(value(self.metrics, "portunus_rule_bytes_out_total", **labels), 0)

    def test_own_registry_not_the_global_one(self) -> None:
        """Two instances coexist, and nothing lands in prometheus_client's default registry."""
        other = ServerMetrics(FakeSource())
        other.request_done("allow", "ok")
        self.assertIsNone(
            value(self.metrics, "portunus_operator_requests_total", outcome="allow", reason="ok")
        )
        names = {m.name for m in REGISTRY.collect()}
        self.assertFalse({n for n in names if n.startswith("portunus_")})


class PlaneTests(SynchronousTestCase):
    """A real ControlPlane (store, sessions, an edge over iosim) behind the metrics."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.metrics = ServerMetrics(self.h.plane)
        self.h.plane.auth_failure_observer = self.metrics.auth_failed
        self.bundle = self.h.enroll()["bundle"]

    def connect(self) -> Any:
        _, _, server_session, _ = self.h.edge(self.bundle.token)
        return server_session

    def labels(self, rule_id: int) -> dict[str, str]:
        return {"client": "edge-01", "rule": str(rule_id), "owner": ""}

    def test_values_follow_the_stats_cache(self) -> None:
        """Zeros after the push, then exactly what the client's last report said."""
        session = self.connect()
        view = self.h.successful(self.h.push(self.bundle.client_id, tcp_rule(free_port())))
        labels = self.labels(view.rule.id)
        self.assertEqual(value(self.metrics, "portunus_rule_bytes_in_total", **labels), 0)
        report = {
            "rule_id": view.rule.id,
            "bytes_in": 1500,
            "bytes_out": 90000,
            "active_connections": 4,
            "dns_failures": 2,
        }
        self.h.plane.stats_received(session, 1000, [report])
        self.assertEqual(value(self.metrics, "portunus_rule_bytes_in_total", **labels), 1500)
        self.assertEqual(value(self.metrics, "portunus_rule_bytes_out_total", **labels), 90000)
        self.assertEqual(value(self.metrics, "portunus_rule_active_connections", **labels), 4)
        self.assertEqual(value(self.metrics, "portunus_rule_dns_failures_total", **labels), 2)
        self.h.plane.stats_received(session, 6000, [dict(report, active_connections=1)])
        self.assertEqual(value(self.metrics, "portunus_rule_active_connections", **labels), 1)

    def test_owner_label_is_the_pushing_user(self) -> None:
        """A rule pushed for a user carries its id; one pushed for nobody, ""."""
        self.h.successful(self.h.store.accounts.create_user("alice", "user", "Alice", None, 0.0))
        self.connect()
        owned = ensureDeferred(
            self.h.plane.push_rule(
                self.bundle.client_id, tcp_rule(free_port(), "owned"), 2.0, owner_user_id="alice"
            )
        )
        self.h.settle(self.h.pump)
        owned_id = self.h.successful(owned).rule.id
        plain_id = self.h.successful(
            self.h.push(self.bundle.client_id, tcp_rule(free_port(), "plain"))
        ).rule.id
        owners = {
            s.labels["rule"]: s.labels["owner"]
            for s in samples(self.metrics)
            if s.name == "portunus_rule_bytes_in_total"
        }
        self.assertEqual(owners, {str(owned_id): "alice", str(plain_id): ""})

    def test_removed_rule_series_disappear(self) -> None:
        """Removing a rule drops its rows at the next scrape (bounded cardinality)."""
        self.connect()
        view = self.h.successful(self.h.push(self.bundle.client_id, tcp_rule(free_port())))
        self.assertTrue(rule_samples(self.metrics))
        self.h.successful(self.h.plane.remove_rule(view.rule.id))
        self.h.settle(self.h.pump)
        self.assertEqual(rule_samples(self.metrics), [])

    def test_multi_target_and_sni_flags_come_from_the_rule(self) -> None:
        self.connect()
        port = free_port()
        multi = Rule(
            name="multi",
            protocol=Protocol.TCP,
            listen=PortRange.single(free_port()),
            targets=(
                Target("10.0.0.5", PortRange.single(80)),
                Target("10.0.0.6", PortRange.single(80), priority=1),
            ),
            listen_addresses=(LOOPBACK,),
        )
        sni = Rule(
            name="sni",
            protocol=Protocol.TCP,
            listen=PortRange.single(port),
            targets=(Target("10.0.0.7", PortRange.single(443)),),
            listen_addresses=(LOOPBACK,),
            sni_pattern="app.example.com",
        )
        multi_id = self.h.successful(self.h.push(self.bundle.client_id, multi)).rule.id
        self.h.successful(self.h.push(self.bundle.client_id, sni))
        failovers = [
            s.labels["rule"]
            for s in samples(self.metrics)
            if s.name == "portunus_rule_target_failovers_total"
        ]
        self.assertEqual(failovers, [str(multi_id)])
        self.assertEqual(value(self.metrics, "portunus_tls_sni_routes_active"), 1)

    def test_clients_connected_and_auth_failures(self) -> None:
        """The gauge follows the sessions; a refused Hello counts its reason."""
        self.assertEqual(value(self.metrics, "portunus_clients_connected"), 0)
        self.connect()
        self.assertEqual(value(self.metrics, "portunus_clients_connected"), 1)
        self.h.edge("not-a-token")
        self.assertEqual(
            value(self.metrics, "portunus_auth_failures_total", reason="token_not_found"), 1
        )

    def test_cardinality_is_live_rules_times_families(self) -> None:
        """
        A thousand connections' worth of reports (per-port detail included)
        and rule churn leave exactly one row per live rule and family:
        nothing per port, per connection, or for removed rules.
        """
        session = self.connect()
        live: dict[int, bool] = {}  # rule id -> multi-target
        block = free_port_range(3 * 100)
        for round in range(20):
            pushed = []
            for i in range(5):
                start = block + 3 * (5 * round + i)
                targets = [Target("10.0.0.5", PortRange(9000, 9002))]
                if i % 2:
                    targets.append(Target("10.0.0.6", PortRange(9000, 9002), priority=1))
                rule = Rule(
                    name=f"r{round}-{i}",
                    protocol=Protocol.UDP if i == 4 else Protocol.TCP,
                    listen=PortRange(start, start + 2),
                    targets=tuple(targets),
                    listen_addresses=(LOOPBACK,),
                )
                view = self.h.successful(self.h.push(self.bundle.client_id, rule))
                pushed.append(view.rule.id)
                live[view.rule.id] = len(targets) > 1
            for rule_id in pushed[:3]:
                self.h.successful(self.h.plane.remove_rule(rule_id))
                del live[rule_id]
            self.h.settle(self.h.pump)
        for conn in range(1000):
            report = [
                {
                    "rule_id": rule_id,
                    "bytes_in": conn * 100,
                    "bytes_out": conn * 1000,
                    "active_connections": conn % 7,
                    "total_connections": conn + 1,
                    "ports": {str(p): {"bytes_in": conn} for p in range(9000, 9003)},
                }
                for rule_id in live
            ]
            self.h.plane.stats_received(session, conn * 5000, report)
        families = len(RULE_FAMILIES)
        expected = sum(families if multi else families - 1 for multi in live.values())
        got = rule_samples(self.metrics)
        self.assertEqual(len(live), 40)
        self.assertEqual(len(got), expected)
        self.assertEqual({s.labels["rule"] for s in got}, {str(r) for r in live})
        self.assertEqual({tuple(sorted(s.labels)) for s in got}, {("client", "owner", "rule")})
        some = next(iter(live))
        self.assertEqual(
            value(self.metrics, "portunus_rule_bytes_in_total", **self.labels(some)), 99900
        )


class MetricsResourceTests(SynchronousTestCase):
    """GET /metrics through a real twisted.web Site (StubTreq)."""

    def setUp(self) -> None:
        self.metrics = ServerMetrics(FakeSource())
        self.http = StubTreq(MetricsRoot(self.metrics))

    def test_get_metrics(self) -> None:
        """200, the exposition content type, and the rendered body."""
        response = self.successResultOf(self.http.get("http://127.0.0.1/metrics"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), [CONTENT_TYPE])
        body = self.successResultOf(response.content())
        self.assertIn(b"# TYPE portunus_clients_connected gauge", body)

    def test_other_paths_are_404(self) -> None:
        for path in ("/", "/metric", "/metrics/x", "/v1/metrics"):
            response = self.successResultOf(self.http.get("http://127.0.0.1" + path))
            self.assertEqual(response.code, 404, path)

    def test_post_is_405(self) -> None:
        response = self.successResultOf(self.http.post("http://127.0.0.1/metrics", data=b""))
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])
