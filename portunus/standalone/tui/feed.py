"""
What a stats-socket client keeps: the Hello, 60 s of Snapshots, and the
rates and totals drawn from them.

Sans-IO: L{parse_hello} and L{parse_snapshot} turn decoded JSON into
values (or raise L{FeedError} naming the bad field), and L{History} is a
ring of Snapshots with the arithmetic the screen needs.  Rates come from
the last two Snapshots, as Portunus: C{Δcounter * 1000 / Δuptime_ms}.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import attrs

__all__ = [
    "MAX_LINE_BYTES",
    "FeedError",
    "Hello",
    "History",
    "RuleCounters",
    "RuleInfo",
    "Snapshot",
    "TargetInfo",
    "parse_hello",
    "parse_snapshot",
    "ring_size",
]

#: A line longer than this ends the session (Portunus' client limit).
MAX_LINE_BYTES = 1 << 20
#: The history the screen draws.
WINDOW_MS = 60_000
_MAX_RING = 4096
_SUPPORTED_VERSION = 1


class FeedError(Exception):
    """The daemon sent something this client cannot read."""


def ring_size(refresh_ms: int) -> int:
    """Snapshots kept for a 60 s window: C{ceil(60000 / max(refresh, 50)) + 1}, at most 4096."""
    return min(_MAX_RING, math.ceil(WINDOW_MS / max(refresh_ms, 50)) + 1)


@attrs.frozen
class TargetInfo:
    host: str
    port: int
    priority: int
    proxy_protocol: str | None

    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen
class RuleInfo:
    id: str
    name: str
    proto: str
    listen: str
    targets: tuple[TargetInfo, ...]
    #: TCP rules only.
    splice_capable: bool | None = None
    #: UDP rules only.
    udp_max_flows: int | None = None

    @property
    def active_target(self) -> TargetInfo | None:
        """The target connections go to first: the lowest priority, first in order."""
        if not self.targets:
            return None
        return min(self.targets, key=lambda t: t.priority)


@attrs.frozen
class Hello:
    v: int
    daemon_version: str
    daemon_started_at_ms: int
    refresh_ms: int
    rules: tuple[RuleInfo, ...]


@attrs.frozen
class RuleCounters:
    id: str
    bytes_in: int
    bytes_out: int
    conns_active: int
    conns_total: int
    datagrams_in: int
    datagrams_out: int
    flows_active: int
    target_failovers_total: int
    err: Mapping[str, int]


#: Cumulative counters: rates and baselines apply to these, not to gauges.
COUNTERS = (
    "bytes_in",
    "bytes_out",
    "conns_total",
    "datagrams_in",
    "datagrams_out",
    "target_failovers_total",
)


@attrs.frozen
class Snapshot:
    t_ms: int
    uptime_ms: int
    seq: int
    fd_open: int | None
    fd_limit: int | None
    rss_bytes: int | None
    rules: Mapping[str, RuleCounters]


@attrs.frozen
class Rates:
    """Per second, between the last two Snapshots."""

    bytes_in: float
    bytes_out: float
    conns_total: float
    datagrams_in: float
    datagrams_out: float


# -- parsing ------------------------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if isinstance(value, bool) and kind is int:
        value = None  # JSON true is not a number
    if not isinstance(value, kind):
        raise FeedError(f"{where}.{key} is missing or not a {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "number", str: "string", list: "list", dict: "object", bool: "boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds if k is not type(None))


def _count(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(obj, key, int, where)
    if value < 0:
        raise FeedError(f"{where}.{key} is negative")
    return int(value)


def _optional(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if obj.get(key) is None:
        return None
    return _get(obj, key, kind, where)


def parse_hello(obj: object) -> Hello:
    """
    The first line of a session.

    @raise FeedError: not a Hello, or of a protocol version this client
        does not speak.
    """
    if not isinstance(obj, dict) or "v" not in obj:
        raise FeedError("the first line is not a Hello (no 'v'); is this a Portunus stats socket?")
    version = _get(obj, "v", int, "hello")
    if version != _SUPPORTED_VERSION:
        raise FeedError(
            f"the daemon speaks stats protocol v{version}; this client reads v{_SUPPORTED_VERSION}"
        )
    rules = []
    for index, raw in enumerate(_get(obj, "rules", list, "hello")):
        where = f"hello.rules[{index}]"
        if not isinstance(raw, dict):
            raise FeedError(f"{where} is not an object")
        targets = []
        for t_index, t in enumerate(_get(raw, "targets", list, where)):
            t_where = f"{where}.targets[{t_index}]"
            if not isinstance(t, dict):
                raise FeedError(f"{t_where} is not an object")
            targets.append(
                TargetInfo(
                    host=_get(t, "host", str, t_where),
                    port=_count(t, "port", t_where),
                    priority=_get(t, "priority", int, t_where),
                    proxy_protocol=_optional(t, "proxy_protocol", str, t_where),
                )
            )
        rules.append(
            RuleInfo(
                id=_get(raw, "id", str, where),
                name=_get(raw, "name", str, where),
                proto=_get(raw, "proto", str, where),
                listen=_get(raw, "listen", str, where),
                targets=tuple(targets),
                splice_capable=_optional(raw, "splice_capable", bool, where),
                udp_max_flows=_optional(raw, "udp_max_flows", int, where),
            )
        )
    return Hello(
        v=version,
        daemon_version=_get(obj, "daemon_version", str, "hello"),
        daemon_started_at_ms=_count(obj, "daemon_started_at_ms", "hello"),
        refresh_ms=max(1, _count(obj, "refresh_ms", "hello")),
        rules=tuple(rules),
    )


def parse_snapshot(obj: Mapping[str, Any]) -> Snapshot:
    """
    One Snapshot line.

    @raise FeedError: naming the first field that is missing or wrong.
    """
    process = obj.get("process")
    if not isinstance(process, dict):
        raise FeedError("snapshot.process is missing or not an object")
    rules: dict[str, RuleCounters] = {}
    for index, raw in enumerate(_get(obj, "r", list, "snapshot")):
        where = f"snapshot.r[{index}]"
        if not isinstance(raw, dict):
            raise FeedError(f"{where} is not an object")
        err = _get(raw, "err", dict, where)
        counters = RuleCounters(
            id=_get(raw, "id", str, where),
            bytes_in=_count(raw, "in", where),
            bytes_out=_count(raw, "out", where),
            conns_active=_count(raw, "conns_active", where),
            conns_total=_count(raw, "conns_total", where),
            datagrams_in=_count(raw, "datagrams_in", where),
            datagrams_out=_count(raw, "datagrams_out", where),
            flows_active=_count(raw, "flows_active", where),
            target_failovers_total=_count(raw, "target_failovers_total", where),
            err={str(k): _count(err, k, f"{where}.err") for k in err},
        )
        rules[counters.id] = counters
    return Snapshot(
        t_ms=_count(obj, "t_ms", "snapshot"),
        uptime_ms=_count(obj, "uptime_ms", "snapshot"),
        seq=_count(obj, "seq", "snapshot"),
        fd_open=_optional(process, "fd_open", int, "snapshot.process"),
        fd_limit=_optional(process, "fd_limit", int, "snapshot.process"),
        rss_bytes=_optional(process, "rss_bytes", int, "snapshot.process"),
        rules=rules,
    )


# -- history ------------------------------------------------------------------


class History:
    """
    The last 60 s of Snapshots, and a baseline the totals count from
    (C{c} in the TUI resets it to now).
    """

    def __init__(self, refresh_ms: int) -> None:
        self.snapshots: deque[Snapshot] = deque(maxlen=ring_size(refresh_ms))
        self.baseline: Snapshot | None = None

    def add(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    def copy(self) -> History:
        """A frozen copy (what a paused screen keeps showing)."""
        other = History.__new__(History)
        other.snapshots = deque(self.snapshots, maxlen=self.snapshots.maxlen)
        other.baseline = self.baseline
        return other

    @property
    def latest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def reset_baseline(self) -> None:
        self.baseline = self.latest

    def counters(self, rule_id: str) -> RuleCounters | None:
        latest = self.latest
        return latest.rules.get(rule_id) if latest is not None else None

    def rates(self, rule_id: str) -> Rates | None:
        """Per-second rates between the last two Snapshots; None before there are two."""
        if len(self.snapshots) < 2:
            return None
        return _rates(self.snapshots[-2], self.snapshots[-1], rule_id)

    def totals(self, rule_id: str) -> RuleCounters | None:
        """The latest counters less the baseline's (gauges as they are)."""
        current = self.counters(rule_id)
        if current is None:
            return None
        base = self.baseline.rules.get(rule_id) if self.baseline is not None else None
        if base is None:
            return current
        changes: dict[str, Any] = {
            name: max(0, getattr(current, name) - getattr(base, name)) for name in COUNTERS
        }
        changes["err"] = {k: max(0, v - base.err.get(k, 0)) for k, v in current.err.items()}
        return attrs.evolve(current, **changes)

    def errors(self, rule_id: str) -> dict[str, int]:
        """The rule's error counters that are not zero (since the baseline)."""
        totals = self.totals(rule_id)
        if totals is None:
            return {}
        return {k: v for k, v in sorted(totals.err.items()) if v}

    def series(self, rule_id: str, counter: str) -> list[float]:
        """The rate of C{counter} over each interval of the window, oldest first."""
        out = []
        for older, newer in pairwise(self.snapshots):
            rates = _rates(older, newer, rule_id)
            out.append(getattr(rates, counter) if rates is not None else 0.0)
        return out


def _rates(older: Snapshot, newer: Snapshot, rule_id: str) -> Rates | None:
    before, after = older.rules.get(rule_id), newer.rules.get(rule_id)
    elapsed_ms = newer.uptime_ms - older.uptime_ms
    if before is None or after is None or elapsed_ms <= 0:
        return None

    def rate(name: str) -> float:
        # A counter that went back (a worker restarted) has no rate this once.
        return max(0, getattr(after, name) - getattr(before, name)) * 1000 / elapsed_ms

    return Rates(
        bytes_in=rate("bytes_in"),
        bytes_out=rate("bytes_out"),
        conns_total=rate("conns_total"),
        datagrams_in=rate("datagrams_in"),
        datagrams_out=rate("datagrams_out"),
    )
