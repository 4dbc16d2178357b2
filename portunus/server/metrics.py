"""
The server's Prometheus metrics, declared once, on a registry of their own.

L{ServerMetrics} owns a L{CollectorRegistry} (never the process-global
default one, so tests and a second server in one process do not collide).
Event counters (auth failures, operator requests, unauthenticated refusals,
audit queue waits, store busy)
are incremented by the code that sees the event, through the methods here.
Everything about clients and rules is computed at scrape time from the
control plane's live state, through the small L{MetricsSource} interface:
nothing is copied, so nothing goes stale.

Cardinality is bounded by design: one row per live rule, never per listen
port, target or connection.  A removed rule's series disappear with it
(Portunus keeps them until restart; we prefer a series count that follows
the rule count).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from portunus.server.gate import REFUSAL_REASONS

__all__ = [
    "AUTH_FAILURE_REASONS",
    "CONTENT_TYPE",
    "RULE_COUNTERS",
    "MetricsSource",
    "RuleMetricsRow",
    "ServerMetrics",
]

#: The Prometheus text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Why a control connection's token was refused (exported from zero).
AUTH_FAILURE_REASONS = (
    "missing_token",
    "malformed_token",
    "token_not_found",
    "token_revoked",
    "internal_error",
)

#: Per-rule families: (metric name, StatsReport key, kind, help).
RULE_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("portunus_rule_bytes_in", "bytes_in", "counter", "Bytes from clients towards targets."),
    ("portunus_rule_bytes_out", "bytes_out", "counter", "Bytes from targets back to clients."),
    (
        "portunus_rule_active_connections",
        "active_connections",
        "gauge",
        "TCP connections open now.",
    ),
    (
        "portunus_rule_dns_failures",
        "dns_failures",
        "counter",
        "Connections or flows dropped because the target's name did not resolve.",
    ),
    (
        "portunus_rule_target_failovers",
        "target_failovers_total",
        "counter",
        "Healthy<->failed transitions of the rule's targets (multi-target rules only).",
    ),
    (
        "portunus_rule_udp_datagrams_in",
        "datagrams_in",
        "counter",
        "UDP datagrams forwarded from clients to targets.",
    ),
    (
        "portunus_rule_udp_datagrams_out",
        "datagrams_out",
        "counter",
        "UDP datagrams forwarded from targets back to clients.",
    ),
    ("portunus_rule_active_flows", "active_flows", "gauge", "UDP flows open now."),
    (
        "portunus_rule_flows_dropped_overflow",
        "flows_dropped_overflow",
        "counter",
        "Datagrams that would have opened a UDP flow beyond the rule's udp_max_flows.",
    ),
)

_RULE_LABELS = ("client", "rule", "owner")


def _count(value: object) -> float:
    """A counter from a client's report, or 0 for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


@attrs.frozen
class RuleMetricsRow:
    """One live rule as metrics see it: who it belongs to and its last counters."""

    rule_id: int
    client_id: str
    client_name: str
    #: The user id of the rule's owner; C{""} when unknown.
    owner: str
    protocol: str
    multi_target: bool
    sni: bool
    #: The rule's entry of its client's last StatsReport; empty before the first.
    stats: Mapping[str, Any] = attrs.field(factory=dict)

    def counter(self, key: str) -> float:
        """The reported value of C{key}, 0 before the first report."""
        return _count(self.stats.get(key))


class MetricsSource(Protocol):
    """What the metrics read from the control plane at scrape time."""

    def metrics_snapshot(self) -> list[RuleMetricsRow]:
        """One row per live rule."""

    def connected_clients(self) -> int:
        """How many clients hold a control session now."""


class _RuleCollector:
    """Builds the per-rule families from the plane's stats cache at each scrape."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # Registration must not scrape the plane: name the families, no samples.
        return [family for family, _ in self._families()]

    def collect(self) -> Iterable[Metric]:
        rows = self._source.metrics_snapshot()
        families = self._families()
        for row in rows:
            labels = [row.client_name, str(row.rule_id), row.owner]
            for family, key in families:
                if key == "target_failovers_total" and not row.multi_target:
                    continue
                family.add_metric(labels, row.counter(key))
        yield from (family for family, _ in families)
        yield GaugeMetricFamily(
            "portunus_tls_sni_routes_active",
            "Live SNI-routed rules (pattern or fallback).",
            value=sum(1 for row in rows if row.sni),
        )

    @staticmethod
    def _families() -> list[tuple[CounterMetricFamily | GaugeMetricFamily, str]]:
        families: list[tuple[CounterMetricFamily | GaugeMetricFamily, str]] = []
        for name, key, kind, doc in RULE_COUNTERS:
            family = (
                CounterMetricFamily(name, doc, labels=_RULE_LABELS)
                if kind == "counter"
                else GaugeMetricFamily(name, doc, labels=_RULE_LABELS)
            )
            families.append((family, key))
        return families


class ServerMetrics:
    """
    The server's metrics and their registry.  C{render()} is the scrape body
    for both the metrics listener and the operator API's C{/v1/metrics}.
    """

    def __init__(self, source: MetricsSource, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._source = source
        self._clients_connected = Gauge(
            "portunus_clients_connected",
            "Clients holding a control session now.",
            registry=self.registry,
        )
        self._clients_connected.set_function(lambda: float(source.connected_clients()))
        self._auth_failures = Counter(
            "portunus_auth_failures",
            "Control connections refused at Hello, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in AUTH_FAILURE_REASONS:
            self._auth_failures.labels(reason)
        self._operator_requests = Counter(
            "portunus_operator_requests",
            "Operator API requests under /v1, by outcome (allow/deny) and reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self._audit_waits = Counter(
            "portunus_audit_queue_full_waits",
            "Requests that waited for their audit entry to be written: the writer's queue "
            "was full (entries are never dropped).",
            registry=self.registry,
        )
        self._operator_unauthenticated = Counter(
            "portunus_operator_unauthenticated_failures",
            "Operator API requests refused before anyone authenticated, by reason (counted, "
            "not audited one by one).",
            ["reason"],
            registry=self.registry,
        )
        self._audit_lag = Gauge(
            "portunus_audit_durable_writer_lag_seconds",
            "Age of the oldest audit entry not yet written durably.",
            registry=self.registry,
        )
        self._store_busy = Counter(
            "portunus_store_busy",
            "Store operations refused because the database was busy.",
            registry=self.registry,
        )
        self._control_refusals = Counter(
            "portunus_control_refusals",
            "Unauthenticated control connections closed (caps, deadlines, junk, bad Hello) "
            "and enrollment codes refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in REFUSAL_REASONS:
            self._control_refusals.labels(reason)
        self._unauthenticated = Gauge(
            "portunus_control_unauthenticated_connections",
            "Control connections not yet welcomed (TLS handshake or Hello pending).",
            registry=self.registry,
        )
        self._edge_reports_ignored = Counter(
            "portunus_edge_reports_ignored",
            "Malformed stats reports from authenticated edges, dropped unread.",
            registry=self.registry,
        )
        self.registry.register(_RuleCollector(source))

    def auth_failed(self, reason: str) -> None:
        """A control connection was refused for C{reason}."""
        self._auth_failures.labels(reason).inc()

    def request_done(self, outcome: str, reason: str) -> None:
        """An operator request finished: C{allow}/C{deny}, C{ok} or an error code."""
        self._operator_requests.labels(outcome, reason).inc()

    def audit_waited(self) -> None:
        """A request waits for its audit entry: the writer's queue is full."""
        self._audit_waits.inc()

    def unauthenticated_failure(self, reason: str) -> None:
        """An operator request was refused for C{reason} (an error code) before authentication."""
        self._operator_unauthenticated.labels(reason).inc()

    def audit_lag(self, seconds: float) -> None:
        self._audit_lag.set(seconds)

    def store_busy(self) -> None:
        self._store_busy.inc()

    def control_refused(self, reason: str) -> None:
        """The control port's gate refused or closed a connection (or a code)."""
        self._control_refusals.labels(reason).inc()

    def unauthenticated_connections(self, count: int) -> None:
        self._unauthenticated.set(count)

    def edge_report_ignored(self) -> None:
        self._edge_reports_ignored.inc()

    def render(self) -> bytes:
        """The text exposition of every metric (serve with L{CONTENT_TYPE})."""
        return generate_latest(self.registry)
