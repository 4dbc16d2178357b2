"""
The one table of numbers an operator can set: every bound (lowest and
highest value, default, what it means) is written here once.

The TOML dialects (standalone config, C{server.toml}, the C{[resolver]}
table), the API's rule validation, the OpenAPI document, the CLI's checks
and help, and the error registry's hints all read these values, and
C{tests/test_bounds.py} fails when a bound's numbers are written anywhere
else in C{portunus/} or when C{docs/} state different ones.

A leaf module: it imports nothing from Portunus.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import attrs

__all__ = [
    "ACK_TIMEOUT_SECS",
    "AUDIT_PAGE_LIMIT",
    "BOUNDS",
    "CONTROL_HANDSHAKE_TIMEOUT_SECS",
    "CONTROL_HELLO_TIMEOUT_SECS",
    "CONTROL_MAX_UNAUTHENTICATED",
    "CONTROL_MAX_UNAUTHENTICATED_PER_SOURCE",
    "ENROLLMENT_TTL_SECS",
    "HEALTH_CHECK_INTERVAL_SECS",
    "MAX_CONNS_PER_RULE",
    "PORT",
    "RANGE_RULE_MAX_PORTS",
    "RATE_LIMIT_BURST_MAX_FACTOR",
    "RATE_LIMIT_BURST_MIN_DIVISOR",
    "RATE_LIMIT_CAP",
    "RESERVE_FDS",
    "RESOLVER_CACHE_ENTRIES",
    "SHUTDOWN_DRAIN_SECS",
    "STATS_LOG_INTERVAL_SECS",
    "STATS_REFRESH_MS",
    "TARGET_PRIORITY",
    "TARGET_WEIGHT",
    "UDP_FLOW_IDLE_SECS",
    "UDP_MAX_FLOWS",
    "WORKERS",
    "Bound",
    "burst_range",
]

N = TypeVar("N", int, float)


@attrs.frozen
class Bound(Generic[N]):
    """
    The values one setting may take: C{low} to C{high}, inclusive.

    @ivar default: the value when the setting is left out; C{None} when
        leaving it out means "off" (no health checks, no cap).
    @ivar description: what the number means, for API schemas and help.
    @ivar unit: how a message names the unit (C{"seconds"}), or C{""}.
    """

    low: N
    high: N
    default: N | None
    description: str
    unit: str = ""

    @property
    def integral(self) -> bool:
        """Whether only whole numbers are allowed."""
        return isinstance(self.low, int) and isinstance(self.high, int)

    @property
    def fallback(self) -> N:
        """The default of a bound that has one (a programming error otherwise)."""
        if self.default is None:
            raise ValueError(f"{self.description}: this bound has no default")
        return self.default

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integral and not isinstance(value, int):
            return False
        # NaN fails both comparisons; a huge integer is compared exactly.
        return self.low <= value <= self.high

    def span(self, between: str = " to ") -> str:
        """C{"30 to 300"}; C{span("..")} gives C{"30..300"}."""
        if self.integral:
            return f"{self.low}{between}{self.high}"
        return f"{self.low:g}{between}{self.high:g}"

    def schema(self, description: str | None = None, *, default: bool = True) -> dict[str, Any]:
        """
        The JSON-schema fragment of this setting (OpenAPI):
        C{{"type": "integer", "minimum": 30, "maximum": 300, "default": 60,
        "description": ...}}.  C{default=False} leaves the default out (for
        bodies where leaving the key out means something else).
        """
        fragment: dict[str, Any] = {
            "type": "integer" if self.integral else "number",
            "minimum": self.low,
            "maximum": self.high,
        }
        if default and self.default is not None:
            fragment["default"] = self.default
        fragment["description"] = description if description is not None else self.description
        return fragment


#: A TCP or UDP port: listen ports, target ports, listener addresses.
PORT = Bound(1, 65535, None, "A TCP or UDP port")
#: A target's place in the failover order.
TARGET_PRIORITY = Bound(0, 65535, 0, "Lower is tried first")
#: A target's share of connections under C{balance = "weighted"}.
TARGET_WEIGHT = Bound(1, 1000, 1, 'Share of connections under balance "weighted"')
#: Concurrent UDP flows per rule (C{udp_max_flows}, C{udp_max_flows_per_rule}).
UDP_MAX_FLOWS = Bound(1, 65535, 1024, "Concurrent UDP flows per rule; new flows past it drop")
#: Seconds an idle UDP flow is kept.
UDP_FLOW_IDLE_SECS = Bound(
    30, 300, 60, "Seconds a UDP flow may stay idle before it is closed", "seconds"
)
#: Seconds between active probes of each target (unset: passive health only).
HEALTH_CHECK_INTERVAL_SECS = Bound(
    1, 3600, None, "Seconds between active TCP probes of each target", "seconds"
)
#: Every C{rate_limit} value: a rate (bytes or connections per second), a
#: concurrency cap or a burst.
RATE_LIMIT_CAP = Bound(1, 10**12, None, "A rate, a concurrency cap or a burst")
#: A burst is allowed from C{max(1, rate / this)} ...
RATE_LIMIT_BURST_MIN_DIVISOR = 100
#: ... to C{rate x this}.
RATE_LIMIT_BURST_MAX_FACTOR = 60
#: How long a rule push waits for the client's answer.
ACK_TIMEOUT_SECS = Bound(
    0.1, 60.0, 2.0, "Seconds the server waits for the client to confirm", "seconds"
)
#: The most ports a range rule may span on the server (C{server.toml}).
RANGE_RULE_MAX_PORTS = Bound(1, 65535, 1024, "The most ports one range rule may span")
#: How long a shutdown (or a removed rule) waits for open connections.
SHUTDOWN_DRAIN_SECS = Bound(
    0.0,
    3600.0,
    30.0,
    "Seconds in-flight connections get to finish; 0 closes them at once",
    "seconds",
)
#: Seconds between the standalone forwarder's stats log lines.
STATS_LOG_INTERVAL_SECS = Bound(1, 3600, 60, "Seconds between stats log lines", "seconds")
#: Milliseconds between two snapshots on the standalone's stats socket (Portunus: 250..=5000).
STATS_REFRESH_MS = Bound(
    250, 5000, 1000, "Milliseconds between stats socket snapshots", "milliseconds"
)
#: Names the target resolver caches.
RESOLVER_CACHE_ENTRIES = Bound(1, 1_000_000, 8192, "Names the target resolver caches")
#: Seconds an enrollment code stays valid.
ENROLLMENT_TTL_SECS = Bound(1, 86_400, 600, "Seconds the code stays valid", "seconds")
#: Worker processes of C{--workers N}.
WORKERS = Bound(1, 64, 1, "Worker processes")
#: Entries one audit-log page holds (C{GET /v1/audit?limit=}).
AUDIT_PAGE_LIMIT = Bound(1, 1000, 100, "Entries per answer")
#: Seconds a control connection gets to finish its TLS handshake.
CONTROL_HANDSHAKE_TIMEOUT_SECS = Bound(
    0.1, 300.0, 10.0, "Seconds a control connection gets for its TLS handshake", "seconds"
)
#: Seconds a control connection gets, after TLS, to be welcomed (Hello or Enroll).
CONTROL_HELLO_TIMEOUT_SECS = Bound(
    0.1,
    300.0,
    10.0,
    "Seconds after the handshake a control connection gets to say Hello",
    "seconds",
)
#: Unauthenticated control connections at once, from everywhere.
CONTROL_MAX_UNAUTHENTICATED = Bound(
    1, 65535, 1024, "Control connections not yet welcomed, in total"
)
#: Unauthenticated control connections at once from one address (IPv6: one /64).
CONTROL_MAX_UNAUTHENTICATED_PER_SOURCE = Bound(
    1, 65535, 64, "Control connections not yet welcomed, from one source address"
)

#: Concurrent connections (TCP) or flows (UDP) one rule may hold in one
#: process; unset, a quarter of the descriptors the reserve leaves
#: (L{portunus.dataplane.descriptors}).
MAX_CONNS_PER_RULE = Bound(
    1,
    1_048_576,
    None,
    "Concurrent connections (TCP) or flows (UDP) one rule may hold; "
    "unset: derived from the open-file limit",
)
#: Descriptors a forwarding process keeps free of connections, for its
#: control link, logs and listeners; unset, an eighth of the open-file
#: limit and at least 64.
RESERVE_FDS = Bound(
    16,
    1_048_576,
    None,
    "Descriptors no connection may take; unset: derived from the open-file limit",
)

#: Every bound by the name of the setting it is best known as.
BOUNDS: Mapping[str, Bound[Any]] = {
    "port": PORT,
    "priority": TARGET_PRIORITY,
    "weight": TARGET_WEIGHT,
    "udp_max_flows": UDP_MAX_FLOWS,
    "udp_flow_idle_secs": UDP_FLOW_IDLE_SECS,
    "health_check_interval_secs": HEALTH_CHECK_INTERVAL_SECS,
    "rate_limit": RATE_LIMIT_CAP,
    "ack_timeout_secs": ACK_TIMEOUT_SECS,
    "range_rule_max_ports": RANGE_RULE_MAX_PORTS,
    "shutdown_drain_secs": SHUTDOWN_DRAIN_SECS,
    "log_interval_secs": STATS_LOG_INTERVAL_SECS,
    "refresh_ms": STATS_REFRESH_MS,
    "cache_entries": RESOLVER_CACHE_ENTRIES,
    "ttl_secs": ENROLLMENT_TTL_SECS,
    "workers": WORKERS,
    "limit": AUDIT_PAGE_LIMIT,
    "control_handshake_timeout_secs": CONTROL_HANDSHAKE_TIMEOUT_SECS,
    "control_hello_timeout_secs": CONTROL_HELLO_TIMEOUT_SECS,
    "control_max_unauthenticated": CONTROL_MAX_UNAUTHENTICATED,
    "control_max_unauthenticated_per_source": CONTROL_MAX_UNAUTHENTICATED_PER_SOURCE,
    "max_conns_per_rule": MAX_CONNS_PER_RULE,
    "reserve_fds": RESERVE_FDS,
}


def burst_range(rate: int) -> tuple[int, int]:
    """
    The bursts allowed for C{rate}: from C{max(1, rate / 100)} (rounded
    up) to C{rate x 60}.
    """
    return max(1, -(-rate // RATE_LIMIT_BURST_MIN_DIVISOR)), rate * RATE_LIMIT_BURST_MAX_FACTOR
