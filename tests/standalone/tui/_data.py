"""Hello and Snapshot messages for the TUI's tests, as the daemon sends them."""

from __future__ import annotations

from typing import Any

from portunus.standalone.tui.feed import Hello, Snapshot, parse_hello, parse_snapshot

ERR_KEYS = (
    "upstream_connect_failed",
    "icmp_evict",
    "flows_pending_drops",
    "send_dropped",
    "dns_failures",
    "flows_dropped_overflow",
)


def hello_message(refresh_ms: int = 1000) -> dict[str, Any]:
    return {
        "v": 1,
        "daemon_version": "9.9.9",
        "daemon_started_at_ms": 1_700_000_000_000,
        "refresh_ms": refresh_ms,
        "rules": [
            {
                "id": "1",
                "name": "web",
                "proto": "tcp",
                "listen": "8080",
                "targets": [
                    {"host": "10.0.0.9", "port": 80, "priority": 1, "proxy_protocol": None},
                    {"host": "10.0.0.5", "port": 80, "priority": 0, "proxy_protocol": "v2"},
                ],
                "splice_capable": True,
            },
            {
                "id": "2",
                "name": "Alpha",
                "proto": "tcp",
                "listen": "9000-9009",
                "targets": [{"host": "::1", "port": 7000, "priority": 0, "proxy_protocol": None}],
                "splice_capable": False,
            },
            {
                "id": "3",
                "name": "dns",
                "proto": "udp",
                "listen": "53",
                "targets": [
                    {"host": "10.0.0.7", "port": 53, "priority": 0, "proxy_protocol": None}
                ],
                "udp_max_flows": 100,
            },
        ],
    }


def counters(rule_id: str, **values: int) -> dict[str, Any]:
    err = {key: values.pop(key, 0) for key in ERR_KEYS}
    base = {
        "id": rule_id,
        "in": 0,
        "out": 0,
        "conns_active": 0,
        "conns_total": 0,
        "datagrams_in": 0,
        "datagrams_out": 0,
        "flows_active": 0,
        "target_failovers_total": 0,
    }
    base.update(values)
    base["err"] = err
    return base


def snapshot_message(seq: int, uptime_ms: int, *rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "t_ms": 1_700_000_000_000 + uptime_ms,
        "uptime_ms": uptime_ms,
        "seq": seq,
        "process": {"fd_open": 17, "fd_limit": 1024, "rss_bytes": 3 << 20},
        "r": list(rules),
    }


def hello(refresh_ms: int = 1000) -> Hello:
    return parse_hello(hello_message(refresh_ms))


def snapshot(seq: int, uptime_ms: int, *rules: dict[str, Any]) -> Snapshot:
    return parse_snapshot(snapshot_message(seq, uptime_ms, *rules))
