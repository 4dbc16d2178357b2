"""
What an edge may tell the server: Hello's fields, enrollment codes and
StatsReport entries, checked before anything is kept.

An edge holds a token, but it is still another machine: whatever it sends
ends up in the client list, the rule stats routes, the live stats streams
and the metrics.  So every field is bounded (lengths, counts, ranges) and
typed here, once, and the session keeps only what passed:

  - a Hello with a malformed field is refused (C{malformed_hello});
  - a StatsReport with a malformed entry is ignored whole, and counted;
    keys this server does not know are dropped (newer edges report more).

Each checker raises L{EdgeInputError} naming the first problem; the caller
decides what refusing means.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import attrs

from portunus.addresses import local_form
from portunus.bounds import PORT, TARGET_PRIORITY
from portunus.control.commands import MAX_HELLO_ADDRESSES
from portunus.dataplane.failover import Health
from portunus.dataplane.stats import PortStats, RuleStats
from portunus.rulespec import MAX_TARGETS

__all__ = [
    "MAX_CLIENT_VERSION_CHARS",
    "MAX_COUNTER",
    "MAX_ENROLL_CODE_CHARS",
    "MAX_FEATURES",
    "MAX_STATS_ENTRIES",
    "MAX_TOKEN_CHARS",
    "TARGET_KEYS",
    "EdgeInputError",
    "check_enroll_code",
    "check_hello",
    "check_hello_addresses",
    "check_stats",
]

#: Tokens and enrollment codes are 43 characters; anything this long is not one.
MAX_TOKEN_CHARS = 256
MAX_ENROLL_CODE_CHARS = 256
MAX_PROTOCOL_VERSION_CHARS = 32
MAX_CLIENT_VERSION_CHARS = 128
#: Feature names a Hello may declare (this code knows nine).
MAX_FEATURES = 64
MAX_FEATURE_NAME_CHARS = 64
_FEATURE = re.compile(rf"[a-z0-9_]{{1,{MAX_FEATURE_NAME_CHARS}}}")
#: Rule entries in one StatsReport (one AMP value holds far fewer).
MAX_STATS_ENTRIES = 4096
#: The largest counter value kept (a signed 64-bit integer).
MAX_COUNTER = 2**63 - 1
#: The largest time or duration in seconds kept (exact in a float).
_MAX_SECONDS = float(2**53)
_MAX_HOST_CHARS = 253
_MAX_TARGET_CHARS = 300


class EdgeInputError(ValueError):
    """What an edge sent does not pass; the message names the field."""


# -- values ------------------------------------------------------------------


def _counter(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EdgeInputError(f"{where} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= MAX_COUNTER:
        raise EdgeInputError(f"{where} is {value}, outside 0 to 2**63-1")
    return value


def _seconds(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EdgeInputError(f"{where} must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value <= _MAX_SECONDS):
        raise EdgeInputError(f"{where} is {value!r}, not a number of seconds from 0 to 2**53")
    return float(value)


def _maybe_seconds(value: object, where: str) -> float | None:
    return None if value is None else _seconds(value, where)


def _port(value: object, where: str) -> int:
    if value not in PORT:
        raise EdgeInputError(f"{where} must be a port from {PORT.span()}, not {value!r:.40}")
    assert isinstance(value, int)
    return value


def _text(limit: int) -> Callable[[object, str], str]:
    def check(value: object, where: str) -> str:
        if not isinstance(value, str):
            raise EdgeInputError(f"{where} must be a string, not {type(value).__name__}")
        if not 1 <= len(value) <= limit or not value.isprintable():
            raise EdgeInputError(f"{where} must be 1 to {limit} printable characters")
        return value

    return check


def _health(value: object, where: str) -> str:
    if value not in {h.value for h in Health}:
        raise EdgeInputError(f"{where} must be one of {', '.join(h.value for h in Health)}")
    assert isinstance(value, str)
    return value


def _priority(value: object, where: str) -> int:
    number = _counter(value, where)
    if number not in TARGET_PRIORITY:
        raise EdgeInputError(f"{where} is {number}, outside {TARGET_PRIORITY.span()}")
    return number


# -- StatsReport -------------------------------------------------------------

_Check = Callable[[object, str], object]


def _counter_checks(cls: type) -> dict[str, _Check]:
    """One check per counter of C{cls}: integers, and seconds for float fields."""
    checks: dict[str, _Check] = {}
    for field in attrs.fields(cls):
        if isinstance(field.default, bool):
            continue
        if isinstance(field.default, int):
            checks[field.name] = _counter
        elif isinstance(field.default, float):
            checks[field.name] = _seconds
    return checks


#: What an edge reports per port: L{PortStats}'s counters.
_PORT_KEYS: Mapping[str, _Check] = _counter_checks(PortStats)
#: Per rule: L{RuleStats}'s counters (C{ports} and C{per_target} apart).
_RULE_KEYS: Mapping[str, _Check] = _counter_checks(RuleStats)

#: What an edge reports per target of a multi-target rule (the keys of
#: L{portunus.dataplane.failover.TargetSelector.snapshot}).
TARGET_KEYS: Mapping[str, _Check] = {
    "host": _text(_MAX_HOST_CHARS),
    "port": _port,
    "target": _text(_MAX_TARGET_CHARS),
    "priority": _priority,
    "weight": _priority,
    "health": _health,
    "consecutive_failures": _counter,
    "last_success_at": _maybe_seconds,
    "last_failure_at": _maybe_seconds,
    "bytes_in": _counter,
    "bytes_out": _counter,
    "active_connections": _counter,
    "total_connections": _counter,
}


def _known(value: object, keys: Mapping[str, _Check], where: str) -> dict[str, object]:
    """The known keys of the object C{value}, each checked; unknown keys dropped."""
    if not isinstance(value, dict):
        raise EdgeInputError(f"{where} must be an object, not {type(value).__name__}")
    return {key: keys[key](item, f"{where}.{key}") for key, item in value.items() if key in keys}


def _ports(value: object, where: str) -> dict[str, dict[str, object]]:
    if not isinstance(value, dict):
        raise EdgeInputError(f"{where} must be an object, not {type(value).__name__}")
    if len(value) > 65535:
        raise EdgeInputError(f"{where} has {len(value)} ports, more than 65535")
    ports = {}
    for key, counters in value.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) <= 5):
            raise EdgeInputError(f"{where} key {key!r:.20} is not a port number")
        _port(int(key), f"{where} key")
        ports[str(int(key))] = _known(counters, _PORT_KEYS, f"{where}.{key}")
    return ports


def _targets(value: object, where: str) -> list[dict[str, object]]:
    if not isinstance(value, list):
        raise EdgeInputError(f"{where} must be a list, not {type(value).__name__}")
    if len(value) > MAX_TARGETS:
        raise EdgeInputError(f"{where} has {len(value)} targets, more than {MAX_TARGETS}")
    return [_known(item, TARGET_KEYS, f"{where}[{i}]") for i, item in enumerate(value)]


def _entry(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise EdgeInputError(f"{where} must be an object, not {type(value).__name__}")
    rule_id = value.get("rule_id")
    if isinstance(rule_id, bool) or not isinstance(rule_id, int) or rule_id < 1:
        raise EdgeInputError(f"{where}.rule_id must be a positive integer")
    entry = _known(value, _RULE_KEYS, where)
    entry["rule_id"] = _counter(rule_id, f"{where}.rule_id")
    if "ports" in value:
        entry["ports"] = _ports(value["ports"], f"{where}.ports")
    if "per_target" in value:
        entry["per_target"] = _targets(value["per_target"], f"{where}.per_target")
    return entry


def check_stats(sent_at_ms: object, stats: object) -> list[dict[str, object]]:
    """
    The entries of one StatsReport, each with only the keys this server
    knows, all checked.

    @raise EdgeInputError: naming the first malformed field; nothing of the
        report may be kept then.
    """
    _counter(sent_at_ms, "sent_at_ms")
    if not isinstance(stats, list):
        raise EdgeInputError(f"stats must be a list, not {type(stats).__name__}")
    if len(stats) > MAX_STATS_ENTRIES:
        raise EdgeInputError(f"stats has {len(stats)} entries, more than {MAX_STATS_ENTRIES}")
    return [_entry(item, f"stats[{i}]") for i, item in enumerate(stats)]


# -- Hello and Enroll ----------------------------------------------------------


def _ascii_word(value: str, where: str, limit: int, empty: bool = False) -> None:
    if not (empty or value) or len(value) > limit:
        raise EdgeInputError(f"{where} must be {0 if empty else 1} to {limit} characters")
    if not all("\x21" <= c <= "\x7e" for c in value):
        raise EdgeInputError(f"{where} must be printable ASCII without spaces")


def check_hello(
    token: str, protocol_version: str, client_version: str, features: list[str]
) -> frozenset[str]:
    """
    The declared features, once every Hello field is within bounds.  An
    empty token passes (the plane refuses it as C{missing_token}); feature
    names this server does not know are kept, since newer edges declare
    more.

    @raise EdgeInputError: naming the first malformed field.
    """
    _ascii_word(token, "token", MAX_TOKEN_CHARS, empty=True)
    _ascii_word(protocol_version, "protocol_version", MAX_PROTOCOL_VERSION_CHARS)
    _text(MAX_CLIENT_VERSION_CHARS)(client_version, "client_version")
    if len(features) > MAX_FEATURES:
        raise EdgeInputError(f"features has {len(features)} names, more than {MAX_FEATURES}")
    for name in features:
        if not _FEATURE.fullmatch(name):
            raise EdgeInputError(
                f"feature {name!r:.40} is not 1 to {MAX_FEATURE_NAME_CHARS} lowercase letters, "
                "digits and _"
            )
    return frozenset(features)


#: An IPv6 address with a scope is under this many characters.
_MAX_ADDRESS_CHARS = 64


def check_hello_addresses(addresses: list[str] | None) -> frozenset[str]:
    """
    The edge's interface addresses from its Hello, in one written form
    (none from an edge too old to send them).

    @raise EdgeInputError: more than L{MAX_HELLO_ADDRESSES}, or one that is
        not an IP address.
    """
    if addresses is None:
        return frozenset()
    if len(addresses) > MAX_HELLO_ADDRESSES:
        raise EdgeInputError(
            f"addresses has {len(addresses)} entries, more than {MAX_HELLO_ADDRESSES}"
        )
    kept = set()
    for i, text in enumerate(addresses):
        form = local_form(text) if len(text) <= _MAX_ADDRESS_CHARS else None
        if form is None or text.partition("%")[0] in ("0.0.0.0", "::"):
            raise EdgeInputError(f"addresses[{i}] {text!r:.70} is not an IP address")
        kept.add(str(form))
    return frozenset(kept)


def check_enroll_code(code: str) -> None:
    """@raise EdgeInputError: C{code} cannot be an enrollment code."""
    _ascii_word(code, "code", MAX_ENROLL_CODE_CHARS)
