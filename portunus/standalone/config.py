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

import re
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import attrs

from portunus.addresses import AddressError, host_problem, split_host_port
from portunus.bounds import (
    MAX_CONNS_PER_RULE,
    RESERVE_FDS,
    SHUTDOWN_DRAIN_SECS,
    STATS_LOG_INTERVAL_SECS,
    STATS_REFRESH_MS,
    UDP_FLOW_IDLE_SECS,
    UDP_MAX_FLOWS,
)
from portunus.conflicts import Claim, find_conflict
from portunus.dataplane.localaddrs import host_addresses
from portunus.dataplane.resolver import ResolverSettings, resolver_settings_from_table
from portunus.errors import PortunusError
from portunus.fields import (
    ABSENT,
    BAD_CHARACTERS,
    Absent,
    has_bad_characters,
    is_int,
    suggestion,
)
from portunus.fields import describe_value as _describe
from portunus.fields import printable as _safe
from portunus.model import (
    DEFAULT_LISTEN_ADDRESSES,
    PortRange,
    Protocol,
    Rule,
    Target,
    rule_id_for_name,
)
from portunus.rulespec import (
    MAX_RANGE_PORTS,
    MAX_RULE_NAME_LENGTH,
    MAX_TARGETS,
    RULE_OPTION_KEYS,
    TARGET_KEYS,
    RuleChecker,
)
from portunus.targetpolicy import find_self_target

__all__ = [
    "DEFAULT_STATS_SOCKET_PATH",
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
    "socket_path",
]

#: Accepted C{log_level} values, after folding the C{warning} alias.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error")
#: Accepted C{log_format} values.
LOG_FORMATS: tuple[str, ...] = ("json", "pretty")

_DEFAULT_PROTOCOL = Protocol.TCP

_TOP_LEVEL_TABLES = ("global", "defaults", "stats", "resolver", "rule")
_GLOBAL_KEYS = (
    "label",
    "log_level",
    "log_format",
    "shutdown_drain_secs",
    "listen_addresses",
    "max_conns_per_rule",
    "reserve_fds",
)
_DEFAULTS_KEYS = (
    "protocol",
    "udp_max_flows",
    "udp_flow_idle_secs",
    "prefer_ipv6",
    "listen_addresses",
)
_STATS_KEYS = ("enabled", "log_interval_secs", "socket_path", "refresh_ms")
#: Where the stats socket listens unless [stats] socket_path says (Portunus' Linux default).
DEFAULT_STATS_SOCKET_PATH = "/run/portunus/standalone.sock"
#: A Unix socket path is at most 107 bytes (sun_path holds 108 with its NUL).
_MAX_SOCKET_PATH_BYTES = 107
_SOCKET_PATH_HINT = f'write e.g. socket_path = "{DEFAULT_STATS_SOCKET_PATH}"'
_RULE_KEYS = (
    "name",
    "protocol",
    "listen_port",
    "listen_ports",
    "target",
    "targets",
    *RULE_OPTION_KEYS,
)
_TARGET_KEYS = TARGET_KEYS

_RULE_INDEX_LABEL = re.compile(r"rule #\d+")


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
    shutdown_drain_secs: float = SHUTDOWN_DRAIN_SECS.fallback
    stats_enabled: bool = True
    stats_log_interval_secs: int = STATS_LOG_INTERVAL_SECS.fallback
    stats_socket_path: str = DEFAULT_STATS_SOCKET_PATH
    stats_refresh_ms: int = STATS_REFRESH_MS.fallback
    resolver: ResolverSettings = attrs.field(factory=ResolverSettings)
    #: C{[global] max_conns_per_rule} and C{reserve_fds}; C{None} derives
    #: them from the open-file limit (L{portunus.dataplane.descriptors}).
    max_conns_per_rule: int | None = None
    reserve_fds: int | None = None
    rules: tuple[Rule, ...] = attrs.field(converter=_rule_tuple)


def socket_path(text: str) -> str:
    """
    A Unix socket path as C{[stats] socket_path} and C{--stats-socket}
    take it: printable, not empty, at most 107 bytes.

    @raise ValueError: saying what is wrong and what to write.
    """
    if not text or has_bad_characters(text):
        problem = "is empty or contains control characters"
    elif len(text.encode("utf-8")) > _MAX_SOCKET_PATH_BYTES:
        problem = (
            f"is {len(text.encode('utf-8'))} bytes long; a Unix socket path holds at most "
            f"{_MAX_SOCKET_PATH_BYTES}"
        )
    else:
        return text
    raise ValueError(f"{problem}; {_SOCKET_PATH_HINT}")


# ---------------------------------------------------------------------------
# Entry points


def load_config(
    path: str,
    supported_protocols: frozenset[Protocol] = frozenset({Protocol.TCP}),
    own_addresses: Collection[str] | None = None,
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
    if own_addresses is None:
        own_addresses = host_addresses()
    return parse_config(text, path, supported_protocols, own_addresses)


def parse_config(
    text: str,
    source: str,
    supported_protocols: frozenset[Protocol] = frozenset({Protocol.TCP}),
    own_addresses: Collection[str] = (),
) -> StandaloneConfig:
    """
    Validate TOML C{text} (read from C{source}, used only in messages).
    C{own_addresses} are this host's: a rule whose target reaches its own
    listener through one (or loopback, or C{0.0.0.0}) is refused
    (C{validation.target_is_listener}).

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

    config = _Parser(issues, supported_protocols, own_addresses).document(document)
    if issues.items or config is None:
        raise ConfigError(issues.items)
    return config


# ---------------------------------------------------------------------------
# Internals


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
    udp_max_flows: int = UDP_MAX_FLOWS.fallback
    udp_flow_idle_secs: int = UDP_FLOW_IDLE_SECS.fallback
    prefer_ipv6: bool = False
    listen_addresses: tuple[str, ...] = DEFAULT_LISTEN_ADDRESSES


@attrs.frozen
class _Listening:
    """What a rule binds, kept even when other parts of the rule are broken."""

    label: str
    index: int
    claim: Claim
    #: The key the ports were written under: listen_port or listen_ports.
    port_key: str


def _rule_display(label: str) -> str:
    if _RULE_INDEX_LABEL.fullmatch(label):
        return label
    return f"rule '{label}'"


class _Parser(RuleChecker):
    """
    One validation pass over a decoded TOML document.  The checks of single
    rule fields are L{RuleChecker}'s, shared with the HTTP API; this class
    adds the TOML layout (tables, C{listen_port}/C{listen_ports},
    C{target}/C{targets}) and the checks across rules.
    """

    def __init__(
        self,
        issues: _Issues,
        supported_protocols: frozenset[Protocol],
        own_addresses: Collection[str] = (),
    ) -> None:
        super().__init__(self._add)
        self.issues = issues
        self.supported = supported_protocols
        self.own = own_addresses

    def _add(self, rule: str | None, field: str, message: str, code: str) -> None:
        # The file's wording already says what to do; codes are for the API.
        self.issues.add(rule, field, message)

    # -- generic helpers --------------------------------------------------

    def _table(self, document: Mapping[str, object], name: str) -> Mapping[str, object]:
        raw = document.get(name, ABSENT)
        if isinstance(raw, Absent):
            return {}
        if not isinstance(raw, dict):
            self.issues.add(
                None,
                name,
                f"'{name}' must be a table, not {_describe(raw)}; write it as a [{name}] section",
            )
            return {}
        return raw

    # -- tables -----------------------------------------------------------

    def document(self, document: Mapping[str, object]) -> StandaloneConfig | None:
        for key in document:
            if key not in _TOP_LEVEL_TABLES:
                self.issues.add(
                    None,
                    _safe(key),
                    f"unknown top-level key or table '{_safe(key)}'; "
                    f"{suggestion(key, _TOP_LEVEL_TABLES)}"
                    "allowed: [global], [defaults], [stats], [resolver], [[rule]]",
                )

        global_table = self._table(document, "global")
        self.strict(global_table, _GLOBAL_KEYS, None, "global", "[global]")
        label = self._label(global_table)
        log_level = self.choice(
            global_table,
            "log_level",
            None,
            "global.log_level",
            LOG_LEVELS,
            aliases={"warning": "warn"},
        )
        log_format = self.choice(global_table, "log_format", None, "global.log_format", LOG_FORMATS)
        drain = self._drain(global_table)
        per_rule = self.integer(
            global_table,
            "max_conns_per_rule",
            None,
            "global.max_conns_per_rule",
            MAX_CONNS_PER_RULE,
        )
        reserve = self.integer(global_table, "reserve_fds", None, "global.reserve_fds", RESERVE_FDS)
        global_addresses = self.listen_addresses(global_table, None, "global.listen_addresses")

        inherited = _Inherited()
        if isinstance(global_addresses, tuple):
            inherited = attrs.evolve(inherited, listen_addresses=global_addresses)
        inherited = self._defaults(self._table(document, "defaults"), inherited)

        stats_table = self._table(document, "stats")
        self.strict(stats_table, _STATS_KEYS, None, "stats", "[stats]")
        stats_enabled = self.boolean(stats_table, "enabled", None, "stats.enabled")
        stats_interval = self.integer(
            stats_table,
            "log_interval_secs",
            None,
            "stats.log_interval_secs",
            STATS_LOG_INTERVAL_SECS,
        )
        stats_socket = self.parsed(
            stats_table, "socket_path", None, "stats.socket_path", socket_path, _SOCKET_PATH_HINT
        )
        refresh_ms = self.integer(
            stats_table, "refresh_ms", None, "stats.refresh_ms", STATS_REFRESH_MS
        )

        resolver_settings, resolver_issues = resolver_settings_from_table(
            self._table(document, "resolver")
        )
        for field, message in resolver_issues:
            self.issues.add(None, field, message)

        rules = self._rules(document, inherited)

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
                else STATS_LOG_INTERVAL_SECS.fallback
            ),
            stats_socket_path=(
                stats_socket if isinstance(stats_socket, str) else DEFAULT_STATS_SOCKET_PATH
            ),
            stats_refresh_ms=(
                refresh_ms if isinstance(refresh_ms, int) else STATS_REFRESH_MS.fallback
            ),
            resolver=resolver_settings,
            max_conns_per_rule=per_rule if isinstance(per_rule, int) else None,
            reserve_fds=reserve if isinstance(reserve, int) else None,
            rules=rules,
        )

    def _label(self, table: Mapping[str, object]) -> str | None:
        raw = table.get("label", ABSENT)
        if isinstance(raw, Absent):
            return None
        if not isinstance(raw, str):
            self.issues.add(
                None,
                "global.label",
                f'must be a string, not {_describe(raw)}; write e.g. label = "edge-1"',
            )
            return None
        if has_bad_characters(raw):
            self.issues.add(None, "global.label", BAD_CHARACTERS)
            return None
        return raw

    def _drain(self, table: Mapping[str, object]) -> float:
        drain = self.duration(
            table, "shutdown_drain_secs", None, "global.shutdown_drain_secs", SHUTDOWN_DRAIN_SECS
        )
        return drain if isinstance(drain, float) else SHUTDOWN_DRAIN_SECS.fallback

    def _defaults(self, table: Mapping[str, object], base: _Inherited) -> _Inherited:
        self.strict(table, _DEFAULTS_KEYS, None, "defaults", "[defaults]")
        changes: dict[str, Any] = {}
        protocol = self.protocol(table, None, "defaults.protocol")
        if isinstance(protocol, Protocol):
            changes["protocol"] = protocol
        flows = self.integer(table, "udp_max_flows", None, "defaults.udp_max_flows", UDP_MAX_FLOWS)
        if isinstance(flows, int):
            changes["udp_max_flows"] = flows
        idle = self.integer(
            table, "udp_flow_idle_secs", None, "defaults.udp_flow_idle_secs", UDP_FLOW_IDLE_SECS
        )
        if isinstance(idle, int):
            changes["udp_flow_idle_secs"] = idle
        prefer = self.boolean(table, "prefer_ipv6", None, "defaults.prefer_ipv6")
        if isinstance(prefer, bool):
            changes["prefer_ipv6"] = prefer
        addresses = self.listen_addresses(table, None, "defaults.listen_addresses")
        if isinstance(addresses, tuple):
            changes["listen_addresses"] = addresses
        return attrs.evolve(base, **changes)

    def _rules(self, document: Mapping[str, object], inherited: _Inherited) -> tuple[Rule, ...]:
        raw = document.get("rule", ABSENT)
        if isinstance(raw, dict):
            self.issues.add(
                None,
                "rule",
                "rules must be an array of tables; write [[rule]] (double brackets), not [rule]",
            )
            return ()
        if isinstance(raw, Absent) or (isinstance(raw, list) and not raw):
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
                self._check_conflicts(listen, listening)
                listening.append(listen)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def _rule_name(self, entry: Mapping[str, object], fallback: str) -> str | None:
        raw = entry.get("name", ABSENT)
        if isinstance(raw, Absent):
            self.issues.add(
                fallback, "rule.name", 'is missing; every rule needs a unique name = "..."'
            )
            return None
        return self.rule_name(raw, fallback, "rule.name")

    def _rule(
        self,
        entry: Mapping[str, object],
        index: int,
        label: str,
        name: str | None,
        inherited: _Inherited,
    ) -> tuple[Rule | None, _Listening | None]:
        start = len(self.issues.items)
        self.strict(entry, _RULE_KEYS, label, "rule", "[[rule]]")

        protocol = self.protocol(entry, label, "rule.protocol")
        if isinstance(protocol, Absent):
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

        addresses = self.listen_addresses(entry, label, "rule.listen_addresses")
        if isinstance(addresses, Absent):
            addresses = inherited.listen_addresses

        prefer = self.boolean(entry, "prefer_ipv6", label, "rule.prefer_ipv6")
        flows = self.integer(entry, "udp_max_flows", label, "rule.udp_max_flows", UDP_MAX_FLOWS)
        idle = self.integer(
            entry, "udp_flow_idle_secs", label, "rule.udp_flow_idle_secs", UDP_FLOW_IDLE_SECS
        )

        targets = self._targets(entry, label, listen, protocol)
        features = self.features(entry, label, "rule.", protocol, listen)

        listening = None
        if isinstance(protocol, Protocol) and listen is not None and addresses is not None:
            claim = Claim(
                protocol,
                listen,
                addresses,
                features.get("sni_pattern"),
                features.get("sni_fallback", False),
                features.get("accept_proxy_protocol", False),
            )
            listening = _Listening(label, index, claim, port_key)

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
        refusal = find_self_target(rule, self.own)
        if refusal is not None:
            field = "rule.target" if "target" in entry else f"rule.{refusal.field()}"
            self.issues.add(label, field, f"{refusal.code}: {refusal.message}")
            return None, listening
        return rule, listening

    def _listen(self, entry: Mapping[str, object], label: str) -> tuple[PortRange | None, str]:
        single = entry.get("listen_port", ABSENT)
        ranged = entry.get("listen_ports", ABSENT)
        if isinstance(single, Absent) and isinstance(ranged, Absent):
            self.issues.add(
                label,
                "rule.listen_port",
                'is missing; set listen_port = 8080 or listen_ports = "8000-8010"',
            )
            return None, "listen_port"
        if not isinstance(single, Absent) and not isinstance(ranged, Absent):
            self.issues.add(
                label,
                "rule.listen_ports",
                "set either listen_port or listen_ports, not both; remove one",
            )
            return None, "listen_ports"
        if not isinstance(single, Absent):
            if not is_int(single):
                self.issues.add(
                    label,
                    "rule.listen_port",
                    f"must be an integer port, not {_describe(single)}; "
                    'for a range use listen_ports = "8000-8010"',
                )
                return None, "listen_port"
            return self.port_range(single, label, "rule.listen_port", "port"), "listen_port"
        return self.port_range(ranged, label, "rule.listen_ports", "listen range"), "listen_ports"

    def _targets(
        self,
        entry: Mapping[str, object],
        label: str,
        listen: PortRange | None,
        protocol: Protocol | None,
    ) -> tuple[Target, ...] | None:
        single = entry.get("target", ABSENT)
        many = entry.get("targets", ABSENT)
        if isinstance(single, Absent) and isinstance(many, Absent):
            self.issues.add(
                label,
                "rule.target",
                'is missing; set target = "host:port" or targets = [{ host = "...", port = 80 }]',
            )
            return None
        if not isinstance(single, Absent) and not isinstance(many, Absent):
            self.issues.add(
                label,
                "rule.targets",
                "set either target or targets, not both; remove one",
            )
            return None
        if not isinstance(single, Absent):
            target = self._target_string(single, label)
            if target is None:
                return None
            if listen is not None and not self._sizes_match(listen, target.ports, label):
                return None
            return (target,)
        return self.target_list(
            many, label, "rule.targets", listen, protocol, _TARGET_KEYS, port_ranges=False
        )

    def _sizes_match(self, listen: PortRange, target: PortRange, label: str) -> bool:
        both_ranges = len(listen) > 1 and len(target) > 1
        field = "rule.listen_ports" if both_ranges else "rule.target"
        return self.sizes_match(listen, target, label, field)

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
        example = 'write "host:port" or "host:A-B", e.g. "10.0.0.5:80" or "[::1]:80"'
        try:
            split = split_host_port(raw.strip())
        except AddressError as e:
            self.issues.add(label, field, f"{e}; {example}")
            return None
        host, port_text = split.host, split.port
        if port_text is None:
            self.issues.add(label, field, f"'{_safe(raw)}' has no port; {example}")
            return None
        problem = host_problem(host)
        if problem is not None:
            self.issues.add(label, field, f"{problem}; {example}")
            return None
        ports = self.port_range(port_text, label, field, "target port")
        if ports is None:
            return None
        return Target(host=host, ports=ports)

    def _check_conflicts(self, listen: _Listening, earlier: Sequence[_Listening]) -> None:
        """The rule's conflicts with earlier ones (L{portunus.conflicts}), once per code."""
        codes: set[str] = set()
        for other in earlier:
            conflict = find_conflict(listen.claim, other.claim)
            if conflict is None or conflict.code in codes:
                continue
            codes.add(conflict.code)
            # With duplicate names only the position tells the two apart.
            owner = (
                f"rule #{other.index}"
                if other.label == listen.label
                else _rule_display(other.label)
            )
            field = listen.port_key if conflict.field == "listen" else conflict.field
            self.issues.add(
                listen.label,
                f"rule.{field}",
                f"{conflict.code}: {conflict.message(owner)}",
            )
