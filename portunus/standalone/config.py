"""
The standalone forwarder's TOML configuration.

The operator's only interface to C{portunus-standalone} is this file, and
the only feedback loop is C{--check}.  So the parser reports I{every}
problem it can find in one pass, each naming the file, the rule and the
key, and saying how to fix it: a config with five mistakes should take one
edit, not five runs.  Parsing is sans-IO (L{parse_config} takes text) so
the rules are testable without files or a reactor; L{load_config} is the
thin file-reading shell around it.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from portunus.dataplane.proxyprotocol import TrustedSources
from portunus.dataplane.ratelimit import validate_rate_limit
from portunus.dataplane.resolver import ResolverSettings, resolver_settings_from_table
from portunus.dataplane.sni import SniError, normalize_sni_pattern, sni_rule_conflicts
from portunus.errors import PortunusError
from portunus.model import (
    DEFAULT_LISTEN_ADDRESSES,
    Balance,
    PortRange,
    Protocol,
    ProxyProtocolVersion,
    RateLimit,
    Rule,
    Target,
    rule_id_for_name,
)
from portunus.tomltext import describe_value as _describe
from portunus.tomltext import printable as _safe

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_RANGE_PORTS",
    "MAX_RULE_NAME_LENGTH",
    "MAX_TARGETS",
    "ConfigError",
    "ConfigIssue",
    "StandaloneConfig",
    "load_config",
    "parse_config",
]

#: Accepted C{log_level} values, after folding the C{warning} alias.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error")
#: Accepted C{log_format} values.
LOG_FORMATS: tuple[str, ...] = ("json", "pretty")
#: A range rule binds one socket per port; this keeps a typo from binding 60k.
MAX_RANGE_PORTS = 1024
#: Rule names appear in every log line and stats row; keep them readable.
MAX_RULE_NAME_LENGTH = 128
#: Failover lists longer than this are almost certainly a mistake.
MAX_TARGETS = 8

_DEFAULT_PROTOCOL = Protocol.TCP
_DEFAULT_UDP_MAX_FLOWS = 1024
_DEFAULT_UDP_FLOW_IDLE_SECS = 60
_DEFAULT_SHUTDOWN_DRAIN_SECS = 30.0
_DEFAULT_STATS_LOG_INTERVAL_SECS = 60

_TOP_LEVEL_TABLES = ("global", "defaults", "stats", "resolver", "rule")
_GLOBAL_KEYS = ("label", "log_level", "log_format", "shutdown_drain_secs", "listen_addresses")
_DEFAULTS_KEYS = (
    "protocol",
    "udp_max_flows",
    "udp_flow_idle_secs",
    "prefer_ipv6",
    "listen_addresses",
)
_STATS_KEYS = ("enabled", "log_interval_secs")
_RULE_KEYS = (
    "name",
    "protocol",
    "listen_port",
    "listen_ports",
    "target",
    "targets",
    "prefer_ipv6",
    "udp_max_flows",
    "udp_flow_idle_secs",
    "listen_addresses",
    "balance",
    "health_check_interval_secs",
    "sni_pattern",
    "sni_fallback",
    "accept_proxy_protocol",
    "trusted_sources",
    "rate_limit",
)
_TARGET_KEYS = ("host", "port", "priority", "proxy_protocol", "weight")
_RATE_LIMIT_KEYS = tuple(a.name for a in attrs.fields(RateLimit))

_RULE_INDEX_LABEL = re.compile(r"rule #\d+")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# ASCII digits only (\d would accept "٨٠"), and few enough that int() is cheap.
_PORT_RANGE = re.compile(r"\s*([0-9]{1,10})\s*(?:-\s*([0-9]{1,10})\s*)?")


@attrs.frozen
class ConfigIssue:
    """
    One thing wrong with a config file, located precisely enough that the
    operator can go straight to it.

    C{rule} is the rule's name, or C{"rule #N"} (1-based, file order) when
    the name itself is missing or invalid, or C{None} outside C{[[rule]]}.
    C{field} is a dotted key (C{rule.targets[0].port}, C{global.log_level});
    C{None} when the problem is the file as a whole (unreadable, not TOML).
    """

    source: str
    rule: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.source]
        if self.rule is not None:
            parts.append(_rule_display(self.rule))
        if self.field:
            field = self.field
            # Inside "rule 'web'" the "rule." prefix only repeats itself.
            if self.rule is not None and field.startswith("rule."):
                field = field[len("rule.") :]
            parts.append(field)
        parts.append(self.message)
        return ": ".join(parts)

    def to_json(self) -> dict[str, str | None]:
        """The issue as plain data, for JSON logs and API error bodies."""
        return {
            "source": self.source,
            "rule": self.rule,
            "field": self.field,
            "message": self.message,
        }


class ConfigError(PortunusError):
    """
    The config cannot be used; carries every issue found, not just the
    first, so one C{--check} run lists everything to fix.
    """

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        if not self.issues:
            raise ValueError("ConfigError needs at least one issue")
        rendered = "\n".join(str(issue) for issue in self.issues)
        super().__init__(
            "config_invalid",
            rendered,
            issues=[issue.to_json() for issue in self.issues],
        )

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def _rule_tuple(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    # A typed converter: mypy's attrs plugin cannot see through a bare
    # ``converter=tuple`` and would reject a perfectly good tuple argument.
    return tuple(rules)


@attrs.frozen(kw_only=True)
class StandaloneConfig:
    """A fully validated standalone config: nothing here needs re-checking."""

    source: str
    label: str | None = None
    log_level: str = "warn"
    log_format: str = "json"
    shutdown_drain_secs: float = _DEFAULT_SHUTDOWN_DRAIN_SECS
    stats_enabled: bool = True
    stats_log_interval_secs: int = _DEFAULT_STATS_LOG_INTERVAL_SECS
    resolver: ResolverSettings = attrs.field(factory=ResolverSettings)
    rules: tuple[Rule, ...] = attrs.field(converter=_rule_tuple)


# ---------------------------------------------------------------------------
# Entry points


def load_config(
    path: str,
    supported_protocols: frozenset[Protocol] = frozenset({Protocol.TCP}),
) -> StandaloneConfig:
    """
    Read and validate the file at C{path}.

    A missing or unreadable file is a L{ConfigError} like any other, so the
    CLI has exactly one failure to report (and one exit code, 2).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(
            [
                ConfigIssue(
                    path,
                    None,
                    None,
                    f"cannot read the config file ({reason}); "
                    "check the --config path and the file's permissions",
                )
            ]
        ) from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [
                ConfigIssue(
                    path,
                    None,
                    None,
                    f"the file is not valid UTF-8 (bad byte at offset {e.start}); save it as UTF-8",
                )
            ]
        ) from e
    return parse_config(text, path, supported_protocols)


def parse_config(
    text: str,
    source: str,
    supported_protocols: frozenset[Protocol] = frozenset({Protocol.TCP}),
) -> StandaloneConfig:
    """
    Validate TOML C{text} (read from C{source}, used only in messages).

    Raises L{ConfigError} listing every problem; never anything else, so
    callers need exactly one C{except}.
    """
    issues = _Issues(source)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        issues.add(None, None, f"TOML syntax error: {e}; fix the file at that position")
        raise ConfigError(issues.items) from None
    except ValueError as e:
        # tomllib lets int()'s digit limit escape as a bare ValueError.
        issues.add(None, None, f"TOML value cannot be read: {e}; shorten or fix that value")
        raise ConfigError(issues.items) from None
    except RecursionError:
        issues.add(
            None,
            None,
            "TOML syntax error: values are nested too deeply to read; flatten the arrays",
        )
        raise ConfigError(issues.items) from None

    config = _Parser(issues, supported_protocols).document(document)
    if issues.items or config is None:
        raise ConfigError(issues.items)
    return config


# ---------------------------------------------------------------------------
# Internals


class _Absent:
    """Marks a key that is not in its table (distinct from any TOML value)."""


_ABSENT = _Absent()


class _Issues:
    """Collects issues for one source, in the order they are found."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[ConfigIssue] = []

    def add(self, rule: str | None, field: str | None, message: str) -> None:
        self.items.append(ConfigIssue(self.source, rule, field, message))


@attrs.frozen
class _Inherited:
    """Values a rule falls back to when it does not set them itself."""

    protocol: Protocol = _DEFAULT_PROTOCOL
    udp_max_flows: int = _DEFAULT_UDP_MAX_FLOWS
    udp_flow_idle_secs: int = _DEFAULT_UDP_FLOW_IDLE_SECS
    prefer_ipv6: bool = False
    listen_addresses: tuple[str, ...] = DEFAULT_LISTEN_ADDRESSES


@attrs.frozen
class _Listening:
    """What a rule binds, kept even when other parts of the rule are broken."""

    label: str
    index: int
    protocol: Protocol
    ports: PortRange
    addresses: tuple[str, ...]
    port_key: str
    #: Routed by TLS SNI: may share its port with other SNI rules.
    sni: bool = False


def _rule_display(label: str) -> str:
    if _RULE_INDEX_LABEL.fullmatch(label):
        return label
    return f"rule '{label}'"


def _is_int(value: object) -> bool:
    # bool is a subclass of int; "true" is never a valid port or count.
    return isinstance(value, int) and not isinstance(value, bool)


def _unknown_key_message(key: str, allowed: Sequence[str], what: str) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key '{_safe(key)}' in {what}; {hint}allowed keys: {', '.join(allowed)}"


def _has_bad_characters(text: str) -> bool:
    # Control characters corrupt log lines; surrogates cannot be encoded.
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def _valid_hostname(host: str) -> bool:
    """RFC 1123 host names; all-numeric names must be real IPv4 addresses."""
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    # "999.1.1.1" is syntactically a hostname but is always a typo'd address.
    return not all(label.isdigit() for label in labels)


def _host_problem(host: str) -> str | None:
    """Why C{host} (unbracketed) cannot be a target host, or C{None}."""
    if not host:
        return "the host is empty"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    if _valid_hostname(host):
        return None
    return (
        f"'{_safe(host)}' is neither an IP address nor a valid host name "
        "(letters, digits and hyphens in dot-separated labels of up to 63 characters)"
    )


def _addresses_overlap(a: str, b: str) -> bool:
    """Whether two listen addresses would fight over the same port."""
    ia = ipaddress.ip_address(a)
    ib = ipaddress.ip_address(b)
    if ia.version != ib.version:
        return False
    return ia == ib or ia.is_unspecified or ib.is_unspecified


class _Parser:
    """One validation pass over a decoded TOML document."""

    def __init__(self, issues: _Issues, supported_protocols: frozenset[Protocol]) -> None:
        self.issues = issues
        self.supported = supported_protocols

    # -- generic helpers --------------------------------------------------

    def _table(self, document: Mapping[str, object], name: str) -> Mapping[str, object]:
        raw = document.get(name, _ABSENT)
        if isinstance(raw, _Absent):
            return {}
        if not isinstance(raw, dict):
            self.issues.add(
                None,
                name,
                f"'{name}' must be a table, not {_describe(raw)}; write it as a [{name}] section",
            )
            return {}
        return raw

    def _strict(
        self,
        table: Mapping[str, object],
        allowed: Sequence[str],
        rule: str | None,
        prefix: str,
        what: str,
    ) -> None:
        for key in table:
            if key not in allowed:
                self.issues.add(
                    rule, f"{prefix}.{_safe(key)}", _unknown_key_message(key, allowed, what)
                )

    def _int(
        self,
        table: Mapping[str, object],
        key: str,
        rule: str | None,
        field: str,
        low: int,
        high: int,
    ) -> int | _Absent | None:
        raw = table.get(key, _ABSENT)
        if isinstance(raw, _Absent):
            return raw
        if not _is_int(raw):
            self.issues.add(
                rule,
                field,
                f"must be an integer, not {_describe(raw)}; write a number from "
                f"{low} to {high} without quotes or decimals",
            )
            return None
        assert isinstance(raw, int)
        if not low <= raw <= high:
            self.issues.add(rule, field, f"{raw} is out of range; use a value from {low} to {high}")
            return None
        return raw

    def _bool(
        self, table: Mapping[str, object], key: str, rule: str | None, field: str
    ) -> bool | _Absent | None:
        raw = table.get(key, _ABSENT)
        if isinstance(raw, _Absent):
            return raw
        if not isinstance(raw, bool):
            self.issues.add(
                rule,
                field,
                f"must be a boolean, not {_describe(raw)}; write {key} = true or "
                f"{key} = false (no quotes)",
            )
            return None
        return raw

    def _choice(
        self,
        table: Mapping[str, object],
        key: str,
        rule: str | None,
        field: str,
        choices: Sequence[str],
        aliases: Mapping[str, str] | None = None,
    ) -> str | _Absent | None:
        raw = table.get(key, _ABSENT)
        if isinstance(raw, _Absent):
            return raw
        allowed = ", ".join(f'"{c}"' for c in choices)
        if not isinstance(raw, str):
            self.issues.add(
                rule, field, f"must be a string, not {_describe(raw)}; use one of {allowed}"
            )
            return None
        value = raw.strip().lower()
        if aliases:
            value = aliases.get(value, value)
        if value not in choices:
            self.issues.add(rule, field, f"'{_safe(raw)}' is not allowed; use one of {allowed}")
            return None
        return value

    def _protocol(
        self, table: Mapping[str, object], rule: str | None, field: str
    ) -> Protocol | _Absent | None:
        value = self._choice(table, "protocol", rule, field, [p.value for p in Protocol])
        if isinstance(value, str):
            return Protocol(value)
        return value

    def _listen_addresses(
        self, table: Mapping[str, object], rule: str | None, field: str
    ) -> tuple[str, ...] | _Absent | None:
        raw = table.get("listen_addresses", _ABSENT)
        if isinstance(raw, _Absent):
            return raw
        example = 'e.g. listen_addresses = ["0.0.0.0", "::"]'
        if not isinstance(raw, list):
            self.issues.add(
                rule, field, f"must be an array of IP addresses, not {_describe(raw)}; {example}"
            )
            return None
        if not raw:
            self.issues.add(rule, field, f"is empty; list at least one address, {example}")
            return None
        result: list[str] = []
        ok = True
        for i, entry in enumerate(raw):
            entry_field = f"{field}[{i}]"
            if not isinstance(entry, str):
                self.issues.add(
                    rule, entry_field, f"must be a string IP address, not {_describe(entry)}"
                )
                ok = False
                continue
            try:
                address = str(ipaddress.ip_address(entry.strip()))
            except ValueError:
                self.issues.add(
                    rule,
                    entry_field,
                    f"'{_safe(entry)}' is not an IP address; listen addresses are IPv4 or IPv6 "
                    'literals without brackets or ports, e.g. "127.0.0.1" or "::1"',
                )
                ok = False
                continue
            clash = next((a for a in result if _addresses_overlap(a, address)), None)
            if clash == address:
                self.issues.add(
                    rule, entry_field, f"'{_safe(entry)}' is listed twice; remove the duplicate"
                )
                ok = False
                continue
            if clash is not None:
                wide, narrow = (
                    (clash, address)
                    if ipaddress.ip_address(clash).is_unspecified
                    else (address, clash)
                )
                self.issues.add(
                    rule,
                    entry_field,
                    f"'{wide}' already covers every IPv{ipaddress.ip_address(wide).version} "
                    f"address, so binding '{narrow}' too would fail; remove one of them",
                )
                ok = False
                continue
            result.append(address)
        return tuple(result) if ok else None

    def _port_range(self, raw: object, rule: str | None, field: str, what: str) -> PortRange | None:
        """Parse C{"A-B"}, C{"A"} or an integer as a port range."""
        if _is_int(raw):
            assert isinstance(raw, int)
            if not 1 <= raw <= 65535:
                self.issues.add(rule, field, f"{what} {raw} is out of range; ports are 1..65535")
                return None
            return PortRange.single(raw)
        if not isinstance(raw, str):
            self.issues.add(
                rule,
                field,
                f'{what} must be a port or a range like "8000-8010", not {_describe(raw)}',
            )
            return None
        match = _PORT_RANGE.fullmatch(raw)
        if match is None:
            self.issues.add(
                rule,
                field,
                f"{what} '{_safe(raw)}' is not a port or a port range; "
                'write a single port like "8000" or a range like "8000-8010"',
            )
            return None
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        bad = [p for p in (start, end) if not 1 <= p <= 65535]
        if bad:
            where = "" if match.group(2) is None else f" in '{raw}'"
            self.issues.add(
                rule, field, f"{what} {bad[0]}{where} is out of range; ports are 1..65535"
            )
            return None
        if end < start:
            self.issues.add(
                rule,
                field,
                f"{what} '{raw}' ends before it starts; write the lower port first, "
                f'e.g. "{end}-{start}"',
            )
            return None
        ports = PortRange(start, end)
        if len(ports) > MAX_RANGE_PORTS:
            self.issues.add(
                rule,
                field,
                f"{what} '{raw}' has {len(ports)} ports, more than the {MAX_RANGE_PORTS} "
                "allowed in one rule; split it into several rules",
            )
            return None
        return ports

    # -- tables -----------------------------------------------------------

    def document(self, document: Mapping[str, object]) -> StandaloneConfig | None:
        for key in document:
            if key not in _TOP_LEVEL_TABLES:
                close = difflib.get_close_matches(key, _TOP_LEVEL_TABLES, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                self.issues.add(
                    None,
                    _safe(key),
                    f"unknown top-level key or table '{_safe(key)}'; {hint}"
                    "allowed: [global], [defaults], [stats], [resolver], [[rule]]",
                )

        global_table = self._table(document, "global")
        self._strict(global_table, _GLOBAL_KEYS, None, "global", "[global]")
        label = self._label(global_table)
        log_level = self._choice(
            global_table,
            "log_level",
            None,
            "global.log_level",
            LOG_LEVELS,
            aliases={"warning": "warn"},
        )
        log_format = self._choice(
            global_table, "log_format", None, "global.log_format", LOG_FORMATS
        )
        drain = self._drain(global_table)
        global_addresses = self._listen_addresses(global_table, None, "global.listen_addresses")

        inherited = _Inherited()
        if isinstance(global_addresses, tuple):
            inherited = attrs.evolve(inherited, listen_addresses=global_addresses)
        inherited = self._defaults(self._table(document, "defaults"), inherited)

        stats_table = self._table(document, "stats")
        self._strict(stats_table, _STATS_KEYS, None, "stats", "[stats]")
        stats_enabled = self._bool(stats_table, "enabled", None, "stats.enabled")
        stats_interval = self._int(
            stats_table, "log_interval_secs", None, "stats.log_interval_secs", 1, 3600
        )

        resolver_settings, resolver_issues = resolver_settings_from_table(
            self._table(document, "resolver")
        )
        for field, message in resolver_issues:
            self.issues.add(None, field, message)

        rules = self._rules(document, inherited)
        self._check_rule_groups(rules)

        if self.issues.items:
            return None
        return StandaloneConfig(
            source=self.issues.source,
            label=label,
            log_level=log_level if isinstance(log_level, str) else "warn",
            log_format=log_format if isinstance(log_format, str) else "json",
            shutdown_drain_secs=drain,
            stats_enabled=stats_enabled if isinstance(stats_enabled, bool) else True,
            stats_log_interval_secs=(
                stats_interval
                if isinstance(stats_interval, int)
                else _DEFAULT_STATS_LOG_INTERVAL_SECS
            ),
            resolver=resolver_settings,
            rules=rules,
        )

    def _label(self, table: Mapping[str, object]) -> str | None:
        raw = table.get("label", _ABSENT)
        if isinstance(raw, _Absent):
            return None
        if not isinstance(raw, str):
            self.issues.add(
                None,
                "global.label",
                f'must be a string, not {_describe(raw)}; write e.g. label = "edge-1"',
            )
            return None
        if _has_bad_characters(raw):
            self.issues.add(
                None, "global.label", "contains control characters; use printable text only"
            )
            return None
        return raw

    def _drain(self, table: Mapping[str, object]) -> float:
        raw = table.get("shutdown_drain_secs", _ABSENT)
        field = "global.shutdown_drain_secs"
        if isinstance(raw, _Absent):
            return _DEFAULT_SHUTDOWN_DRAIN_SECS
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            self.issues.add(
                None,
                field,
                f"must be a number of seconds, not {_describe(raw)}; "
                "write e.g. shutdown_drain_secs = 30",
            )
            return _DEFAULT_SHUTDOWN_DRAIN_SECS
        # Compare before converting: a huge TOML integer overflows float(),
        # and NaN fails every comparison, so both land here.
        if not 0 <= raw <= 3600:
            self.issues.add(
                None,
                field,
                f"{raw} is out of range; use 0 (close at once) up to 3600 seconds",
            )
            return _DEFAULT_SHUTDOWN_DRAIN_SECS
        return float(raw)

    def _defaults(self, table: Mapping[str, object], base: _Inherited) -> _Inherited:
        self._strict(table, _DEFAULTS_KEYS, None, "defaults", "[defaults]")
        changes: dict[str, Any] = {}
        protocol = self._protocol(table, None, "defaults.protocol")
        if isinstance(protocol, Protocol):
            changes["protocol"] = protocol
        flows = self._int(table, "udp_max_flows", None, "defaults.udp_max_flows", 1, 65535)
        if isinstance(flows, int):
            changes["udp_max_flows"] = flows
        idle = self._int(table, "udp_flow_idle_secs", None, "defaults.udp_flow_idle_secs", 30, 300)
        if isinstance(idle, int):
            changes["udp_flow_idle_secs"] = idle
        prefer = self._bool(table, "prefer_ipv6", None, "defaults.prefer_ipv6")
        if isinstance(prefer, bool):
            changes["prefer_ipv6"] = prefer
        addresses = self._listen_addresses(table, None, "defaults.listen_addresses")
        if isinstance(addresses, tuple):
            changes["listen_addresses"] = addresses
        return attrs.evolve(base, **changes)

    def _rules(self, document: Mapping[str, object], inherited: _Inherited) -> tuple[Rule, ...]:
        raw = document.get("rule", _ABSENT)
        if isinstance(raw, dict):
            self.issues.add(
                None,
                "rule",
                "rules must be an array of tables; write [[rule]] (double brackets), not [rule]",
            )
            return ()
        if isinstance(raw, _Absent) or (isinstance(raw, list) and not raw):
            self.issues.add(
                None,
                "rule",
                "no [[rule]] tables: add at least one [[rule]] with name, listen_port and target",
            )
            return ()
        if not isinstance(raw, list):
            self.issues.add(
                None,
                "rule",
                f"'rule' must be an array of tables, not {_describe(raw)}; "
                "write each rule as a [[rule]] section",
            )
            return ()

        rules: list[Rule] = []
        names: dict[str, str] = {}
        ids: dict[int, str] = {}
        listening: list[_Listening] = []
        for index, entry in enumerate(raw, start=1):
            fallback = f"rule #{index}"
            if not isinstance(entry, dict):
                self.issues.add(
                    fallback,
                    None,
                    f"must be a table, not {_describe(entry)}; write it as a [[rule]] section",
                )
                continue
            name = self._rule_name(entry, fallback)
            label = name if name is not None else fallback
            if name is not None:
                if name in names:
                    self.issues.add(
                        label,
                        "rule.name",
                        f"the name '{name}' is already used by {names[name]}; "
                        "rule names must be unique, rename one of them",
                    )
                else:
                    names[name] = fallback
                    rule_id = rule_id_for_name(name)
                    if rule_id in ids:
                        self.issues.add(
                            label,
                            "rule.name",
                            f"the name '{name}' hashes to the same rule id ({rule_id}) as "
                            f"rule '{ids[rule_id]}'; rename one of them",
                        )
                    else:
                        ids[rule_id] = name
            rule, listen = self._rule(entry, index, label, name, inherited)
            if listen is not None:
                self._check_overlap(listen, listening)
                listening.append(listen)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def _rule_name(self, entry: Mapping[str, object], fallback: str) -> str | None:
        raw = entry.get("name", _ABSENT)
        if isinstance(raw, _Absent):
            self.issues.add(
                fallback, "rule.name", 'is missing; every rule needs a unique name = "..."'
            )
            return None
        if not isinstance(raw, str):
            self.issues.add(
                fallback,
                "rule.name",
                f'must be a string, not {_describe(raw)}; write e.g. name = "web"',
            )
            return None
        if not raw.strip():
            self.issues.add(fallback, "rule.name", 'is empty; write e.g. name = "web"')
            return None
        if len(raw) > MAX_RULE_NAME_LENGTH:
            self.issues.add(
                fallback,
                "rule.name",
                f"is {len(raw)} characters long; use at most {MAX_RULE_NAME_LENGTH}",
            )
            return None
        if _has_bad_characters(raw):
            self.issues.add(
                fallback,
                "rule.name",
                "contains control characters; use printable text only",
            )
            return None
        return raw

    def _rule(
        self,
        entry: Mapping[str, object],
        index: int,
        label: str,
        name: str | None,
        inherited: _Inherited,
    ) -> tuple[Rule | None, _Listening | None]:
        start = len(self.issues.items)
        self._strict(entry, _RULE_KEYS, label, "rule", "[[rule]]")

        protocol = self._protocol(entry, label, "rule.protocol")
        if isinstance(protocol, _Absent):
            protocol = inherited.protocol
            if protocol not in self.supported:
                self.issues.add(
                    label,
                    "rule.protocol",
                    f"{protocol.value} forwarding is not supported by this build yet "
                    '(inherited from [defaults]); set protocol = "tcp"',
                )
        elif protocol is not None and protocol not in self.supported:
            self.issues.add(
                label,
                "rule.protocol",
                f"{protocol.value} forwarding is not supported by this build yet; "
                'use protocol = "tcp"',
            )

        listen, port_key = self._listen(entry, label)

        addresses = self._listen_addresses(entry, label, "rule.listen_addresses")
        if isinstance(addresses, _Absent):
            addresses = inherited.listen_addresses

        prefer = self._bool(entry, "prefer_ipv6", label, "rule.prefer_ipv6")
        flows = self._int(entry, "udp_max_flows", label, "rule.udp_max_flows", 1, 65535)
        idle = self._int(entry, "udp_flow_idle_secs", label, "rule.udp_flow_idle_secs", 30, 300)

        targets = self._targets(entry, label, listen, protocol)
        features = self._features(entry, label, protocol, listen)

        listening = None
        if isinstance(protocol, Protocol) and listen is not None and addresses is not None:
            listening = _Listening(
                label,
                index,
                protocol,
                listen,
                addresses,
                port_key,
                sni=bool(features.get("sni_pattern") or features.get("sni_fallback")),
            )

        if len(self.issues.items) != start or name is None:
            return None, listening
        assert isinstance(protocol, Protocol)
        assert listen is not None and addresses is not None and targets is not None
        try:
            # model.Rule's bare ``converter=tuple`` makes mypy's attrs plugin
            # expect Iterable[_T_co] and reject any real value; pass the two
            # tuple fields untyped until the model gets typed converters.
            tuples: dict[str, Any] = {"targets": targets, "listen_addresses": addresses}
            rule = Rule(
                name=name,
                protocol=protocol,
                listen=listen,
                prefer_ipv6=prefer if isinstance(prefer, bool) else inherited.prefer_ipv6,
                udp_max_flows=flows if isinstance(flows, int) else inherited.udp_max_flows,
                udp_flow_idle_secs=(
                    idle if isinstance(idle, int) else inherited.udp_flow_idle_secs
                ),
                id=rule_id_for_name(name),
                **tuples,
                **features,
            )
        except ValueError as e:
            # The checks above should make this unreachable; if the model
            # grows a rule they miss, still answer with a ConfigError.
            self.issues.add(label, "rule", f"{e}; fix the rule")
            return None, listening
        return rule, listening

    def _listen(self, entry: Mapping[str, object], label: str) -> tuple[PortRange | None, str]:
        single = entry.get("listen_port", _ABSENT)
        ranged = entry.get("listen_ports", _ABSENT)
        if isinstance(single, _Absent) and isinstance(ranged, _Absent):
            self.issues.add(
                label,
                "rule.listen_port",
                'is missing; set listen_port = 8080 or listen_ports = "8000-8010"',
            )
            return None, "listen_port"
        if not isinstance(single, _Absent) and not isinstance(ranged, _Absent):
            self.issues.add(
                label,
                "rule.listen_ports",
                "set either listen_port or listen_ports, not both; remove one",
            )
            return None, "listen_ports"
        if not isinstance(single, _Absent):
            if not _is_int(single):
                self.issues.add(
                    label,
                    "rule.listen_port",
                    f"must be an integer port, not {_describe(single)}; "
                    'for a range use listen_ports = "8000-8010"',
                )
                return None, "listen_port"
            return self._port_range(single, label, "rule.listen_port", "port"), "listen_port"
        return self._port_range(ranged, label, "rule.listen_ports", "listen range"), "listen_ports"

    def _targets(
        self,
        entry: Mapping[str, object],
        label: str,
        listen: PortRange | None,
        protocol: Protocol | None,
    ) -> tuple[Target, ...] | None:
        single = entry.get("target", _ABSENT)
        many = entry.get("targets", _ABSENT)
        if isinstance(single, _Absent) and isinstance(many, _Absent):
            self.issues.add(
                label,
                "rule.target",
                'is missing; set target = "host:port" or targets = [{ host = "...", port = 80 }]',
            )
            return None
        if not isinstance(single, _Absent) and not isinstance(many, _Absent):
            self.issues.add(
                label,
                "rule.targets",
                "set either target or targets, not both; remove one",
            )
            return None
        if not isinstance(single, _Absent):
            target = self._target_string(single, label)
            if target is None:
                return None
            if listen is not None and not self._sizes_match(listen, target.ports, label):
                return None
            return (target,)
        return self._target_tables(many, label, listen, protocol)

    def _sizes_match(self, listen: PortRange, target: PortRange, label: str) -> bool:
        n, m = len(listen), len(target)
        if n == m:
            return True
        if m == 1:
            self.issues.add(
                label,
                "rule.target",
                f"listen has {n} ports but target has 1; give the target a range of the "
                f'same size, e.g. "host:{target.start}-{target.start + n - 1}"',
            )
        elif n == 1:
            self.issues.add(
                label,
                "rule.target",
                f"listen has 1 port but target has {m}; use a single target port, or "
                f'listen_ports = "{listen.start}-{listen.start + m - 1}" to forward the range',
            )
        else:
            self.issues.add(
                label,
                "rule.listen_ports",
                f"listen has {n} ports but target has {m}; make the two ranges the same size",
            )
        return False

    def _target_string(self, raw: object, label: str) -> Target | None:
        field = "rule.target"
        if not isinstance(raw, str):
            self.issues.add(
                label,
                field,
                f'must be a string like "host:port", not {_describe(raw)}; '
                'for several targets use targets = [{ host = "...", port = 80 }]',
            )
            return None
        text = raw.strip()
        if text.startswith("["):
            close = text.find("]")
            if close == -1 or text[close + 1 : close + 2] != ":":
                self.issues.add(
                    label,
                    field,
                    f'\'{_safe(raw)}\' is not "[address]:port"; write e.g. "[::1]:80"',
                )
                return None
            host = text[1:close]
            port_text = text[close + 2 :]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.issues.add(
                    label,
                    field,
                    f"'{_safe(host)}' in brackets is not an IPv6 address; brackets are only for "
                    'IPv6, e.g. "[::1]:80"',
                )
                return None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                self.issues.add(
                    label,
                    field,
                    f'\'{_safe(raw)}\' has no port; write "host:port" or "host:A-B"',
                )
                return None
            if ":" in host:
                self.issues.add(
                    label,
                    field,
                    f"'{_safe(raw)}' looks like an unbracketed IPv6 address; write it as "
                    f'"[{_safe(host)}]:{_safe(port_text)}"',
                )
                return None
            problem = _host_problem(host)
            if problem is not None:
                self.issues.add(label, field, f'{problem}; write "host:port", e.g. "10.0.0.5:80"')
                return None
        ports = self._port_range(port_text, label, field, "target port")
        if ports is None:
            return None
        return Target(host=host, ports=ports)

    def _target_tables(
        self,
        raw: object,
        label: str,
        listen: PortRange | None,
        protocol: Protocol | None,
    ) -> tuple[Target, ...] | None:
        field = "rule.targets"
        if not isinstance(raw, list):
            self.issues.add(
                label,
                field,
                f"must be an array of tables, not {_describe(raw)}; "
                'write targets = [{ host = "10.0.0.5", port = 80 }]',
            )
            return None
        if not raw:
            self.issues.add(
                label,
                field,
                'is empty; list at least one { host = "...", port = ... } '
                'or use target = "host:port"',
            )
            return None
        ok = True
        if len(raw) > MAX_TARGETS:
            self.issues.add(
                label,
                field,
                f"has {len(raw)} entries; at most {MAX_TARGETS} targets are allowed per rule",
            )
            ok = False
        if listen is not None and len(listen) > 1:
            self.issues.add(
                label,
                field,
                f"targets needs a single listen_port but this rule listens on {len(listen)} "
                'ports; for a range use target = "host:A-B", or make one rule per port',
            )
            ok = False
        targets: list[Target] = []
        for i, item in enumerate(raw):
            target = self._target_table(item, label, f"{field}[{i}]", protocol)
            if target is None:
                ok = False
            else:
                targets.append(target)
        return tuple(targets) if ok else None

    def _target_table(
        self, item: object, label: str, field: str, protocol: Protocol | None
    ) -> Target | None:
        if not isinstance(item, dict):
            self.issues.add(
                label,
                field,
                f'must be a table, not {_describe(item)}; write {{ host = "10.0.0.5", port = 80 }}',
            )
            return None
        start = len(self.issues.items)
        self._strict(item, _TARGET_KEYS, label, field, "a target")

        host: str | None = None
        raw_host = item.get("host", _ABSENT)
        if isinstance(raw_host, _Absent):
            self.issues.add(label, f"{field}.host", 'is missing; add host = "10.0.0.5"')
        elif not isinstance(raw_host, str):
            self.issues.add(label, f"{field}.host", f"must be a string, not {_describe(raw_host)}")
        else:
            host = raw_host.strip()
            # A bracketed IPv6 literal is a habit from "host:port"; accept it.
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            problem = _host_problem(host)
            if problem is not None:
                self.issues.add(label, f"{field}.host", f"{problem}; use an IP address or name")
                host = None

        port: int | None = None
        raw_port = item.get("port", _ABSENT)
        if isinstance(raw_port, _Absent):
            self.issues.add(label, f"{field}.port", "is missing; add port = 80")
        else:
            value = self._int(item, "port", label, f"{field}.port", 1, 65535)
            if isinstance(value, int):
                port = value

        priority = self._int(item, "priority", label, f"{field}.priority", 0, 65535)
        weight = self._int(item, "weight", label, f"{field}.weight", 1, 1000)

        proxy = self._choice(
            item,
            "proxy_protocol",
            label,
            f"{field}.proxy_protocol",
            [v.value for v in ProxyProtocolVersion],
        )
        if isinstance(proxy, str) and protocol is Protocol.UDP:
            self.issues.add(
                label,
                f"{field}.proxy_protocol",
                'PROXY protocol is TCP only; remove proxy_protocol or use protocol = "tcp"',
            )

        if len(self.issues.items) != start or host is None or port is None:
            return None
        return Target(
            host=host,
            ports=PortRange.single(port),
            priority=priority if isinstance(priority, int) else 0,
            proxy_protocol=ProxyProtocolVersion(proxy) if isinstance(proxy, str) else None,
            weight=weight if isinstance(weight, int) else 1,
        )

    def _check_overlap(self, listen: _Listening, earlier: Sequence[_Listening]) -> None:
        for other in earlier:
            if other.protocol is not listen.protocol or not other.ports.overlaps(listen.ports):
                continue
            if listen.sni or other.sni:
                continue  # SNI ports are checked by _check_rule_groups
            pair = next(
                (
                    (mine, theirs)
                    for mine in listen.addresses
                    for theirs in other.addresses
                    if _addresses_overlap(mine, theirs)
                ),
                None,
            )
            if pair is None:
                continue
            mine, theirs = pair
            port = max(listen.ports.start, other.ports.start)
            where = f"on {mine}" if mine == theirs else f"on {mine} ({theirs} there)"
            # With duplicate names only the position tells the two apart.
            owner = (
                f"rule #{other.index}"
                if other.label == listen.label
                else _rule_display(other.label)
            )
            self.issues.add(
                listen.label,
                f"rule.{listen.port_key}",
                f"port {port} is already used by {owner} "
                f"({listen.protocol.value} {where}); pick ports outside {other.ports} "
                "or give the rules different listen_addresses",
            )

    # -- data-plane features --------------------------------------------------

    def _features(
        self,
        entry: Mapping[str, object],
        label: str,
        protocol: Protocol | _Absent | None,
        listen: PortRange | None,
    ) -> dict[str, Any]:
        """Balance, health checks, SNI, PROXY accept and rate limits of a rule."""
        features: dict[str, Any] = {}
        balance = self._choice(entry, "balance", label, "rule.balance", [b.value for b in Balance])
        if isinstance(balance, str):
            features["balance"] = Balance(balance)
        interval = self._int(
            entry, "health_check_interval_secs", label, "rule.health_check_interval_secs", 1, 3600
        )
        if isinstance(interval, int):
            features["health_check_interval_secs"] = interval
        is_udp = protocol is Protocol.UDP
        is_range = listen is not None and len(listen) > 1
        features.update(self._sni(entry, label, is_udp, is_range))
        features.update(self._proxy_accept(entry, label, is_udp))
        limit = self._rate_limit(entry, label)
        if limit is not None:
            features["rate_limit"] = limit
        return features

    def _sni(
        self, entry: Mapping[str, object], label: str, is_udp: bool, is_range: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        raw = entry.get("sni_pattern", _ABSENT)
        fallback = self._bool(entry, "sni_fallback", label, "rule.sni_fallback")
        if not isinstance(raw, _Absent):
            if not isinstance(raw, str):
                self.issues.add(
                    label,
                    "rule.sni_pattern",
                    f"must be a string, not {_describe(raw)}; "
                    'write e.g. sni_pattern = "*.example.com"',
                )
            else:
                try:
                    out["sni_pattern"] = normalize_sni_pattern(raw)
                except SniError as e:
                    self.issues.add(label, "rule.sni_pattern", f"{e.code}: {e.message}")
        if fallback is True:
            out["sni_fallback"] = True
            if "sni_pattern" in out or not isinstance(raw, _Absent):
                self.issues.add(
                    label,
                    "rule.sni_fallback",
                    "a fallback rule has no sni_pattern; remove one of the two",
                )
        if (out or not isinstance(raw, _Absent)) and (is_udp or is_range):
            self.issues.add(
                label,
                "rule.sni_pattern" if "sni_fallback" not in out else "rule.sni_fallback",
                "validation.sni_on_unsupported_rule: SNI routing needs a single-port TCP rule; "
                'remove it or use one listen_port with protocol = "tcp"',
            )
        return out

    def _proxy_accept(
        self, entry: Mapping[str, object], label: str, is_udp: bool
    ) -> dict[str, Any]:
        accept = self._bool(entry, "accept_proxy_protocol", label, "rule.accept_proxy_protocol")
        raw = entry.get("trusted_sources", _ABSENT)
        out: dict[str, Any] = {}
        if accept is True:
            out["accept_proxy_protocol"] = True
            if is_udp:
                self.issues.add(
                    label,
                    "rule.accept_proxy_protocol",
                    'PROXY protocol is TCP only; remove it or use protocol = "tcp"',
                )
            if isinstance(raw, _Absent):
                self.issues.add(
                    label,
                    "rule.trusted_sources",
                    "is required with accept_proxy_protocol: list the load balancers allowed "
                    'to send PROXY headers, e.g. trusted_sources = ["10.0.0.0/8"]',
                )
        if isinstance(raw, _Absent):
            return out
        if accept is not True:
            self.issues.add(
                label,
                "rule.trusted_sources",
                "only applies with accept_proxy_protocol = true; add that or remove this",
            )
            return out
        if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
            self.issues.add(
                label,
                "rule.trusted_sources",
                'must be a non-empty list of CIDRs, e.g. ["10.0.0.0/8", "2001:db8::/32"]',
            )
            return out
        try:
            TrustedSources.parse(raw)
        except ValueError as e:
            self.issues.add(label, "rule.trusted_sources", str(e))
            return out
        out["trusted_sources"] = tuple(c.strip() for c in raw)
        return out

    def _rate_limit(self, entry: Mapping[str, object], label: str) -> RateLimit | None:
        raw = entry.get("rate_limit", _ABSENT)
        if isinstance(raw, _Absent):
            return None
        if not isinstance(raw, dict):
            self.issues.add(
                label,
                "rule.rate_limit",
                "must be a table; write [rule.rate_limit] under the rule with e.g. "
                "bandwidth_in_bps = 1_000_000",
            )
            return None
        start = len(self.issues.items)
        self._strict(raw, _RATE_LIMIT_KEYS, label, "rule.rate_limit", "[rule.rate_limit]")
        values: dict[str, int] = {}
        for key in _RATE_LIMIT_KEYS:
            value = self._int(raw, key, label, f"rule.rate_limit.{key}", 1, 10**12)
            if isinstance(value, int):
                values[key] = value
        if len(self.issues.items) != start:
            return None
        if not values:
            self.issues.add(
                label,
                "rule.rate_limit",
                "is empty; set at least one limit or remove the table",
            )
            return None
        limit = RateLimit(**values)
        for field, code, message in validate_rate_limit(limit):
            self.issues.add(label, f"rule.rate_limit.{field}", f"{code}: {message}")
        return None if len(self.issues.items) != start else limit

    def _check_rule_groups(self, rules: Sequence[Rule]) -> None:
        """SNI conflicts between rules sharing a port."""
        for rule_name, field, code, message in sni_rule_conflicts(rules):
            self.issues.add(rule_name, f"rule.{field}", f"{code}: {message}")
        # One SNI listener serves a port: its rules must bind the same addresses.
        sni_rules = [r for r in rules if r.sni_pattern is not None or r.sni_fallback]
        for i, rule in enumerate(sni_rules):
            for other in sni_rules[:i]:
                if other.listen.start != rule.listen.start:
                    continue
                if other.listen_addresses == rule.listen_addresses:
                    if other.accept_proxy_protocol != rule.accept_proxy_protocol:
                        self.issues.add(
                            rule.name,
                            "rule.accept_proxy_protocol",
                            f"rule '{other.name}' on the same SNI port disagrees; rules "
                            "sharing a port must all accept PROXY headers or none",
                        )
                    continue
                if any(
                    _addresses_overlap(a, b)
                    for a in rule.listen_addresses
                    for b in other.listen_addresses
                ):
                    self.issues.add(
                        rule.name,
                        "rule.listen_addresses",
                        f"rule '{other.name}' routes the same SNI port on other addresses; "
                        "SNI rules sharing a port must list the same listen_addresses",
                    )
