"""
Field-by-field validation of operator-written rules, shared by every
surface that accepts one: the standalone TOML C{[[rule]]} table and the
control plane's C{POST /v1/rules} body.

Both surfaces hold the same decoded shapes (strings, integers, booleans,
lists, tables/objects), so one L{RuleChecker} judges them.  It never
raises on bad input: each problem is reported through a callback with the
place it was found (a rule label), a dotted field name, a message saying
how to fix it and a stable error code (C{validation_failed} unless a more
precise Portunus code exists, such as C{range_inverted} or
C{validation.sni_pattern_malformed}).  The TOML parser turns reports into
L{portunus.standalone.config.ConfigIssue}s; the API into one
L{portunus.errors.PortunusError} listing them all.

L{parse_rule_body} is the API's dialect: a JSON object with C{listen} and a
C{targets} list.  The TOML dialect (C{listen_port}/C{listen_ports},
C{target}/C{targets}) lives with the TOML parser, on top of the same checks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from portunus.addresses import addresses_overlap, host_problem, unbracket
from portunus.bounds import (
    ACK_TIMEOUT_SECS,
    HEALTH_CHECK_INTERVAL_SECS,
    PORT,
    RATE_LIMIT_CAP,
    TARGET_PRIORITY,
    TARGET_WEIGHT,
    UDP_FLOW_IDLE_SECS,
    UDP_MAX_FLOWS,
)
from portunus.dataplane.proxyprotocol import TrustedSources
from portunus.dataplane.ratelimit import validate_rate_limit
from portunus.dataplane.sni import SniError, normalize_sni_pattern
from portunus.fields import (
    ABSENT,
    BAD_CHARACTERS,
    Absent,
    FieldChecker,
    has_bad_characters,
    is_int,
)
from portunus.fields import describe_value as _describe
from portunus.fields import printable as _safe
from portunus.model import (
    Balance,
    PortRange,
    Protocol,
    ProxyProtocolVersion,
    RateLimit,
    Rule,
    Target,
)

__all__ = [
    "API_RULE_KEYS",
    "API_TARGET_KEYS",
    "MAX_RANGE_PORTS",
    "MAX_RULE_NAME_LENGTH",
    "MAX_TARGETS",
    "RATE_LIMIT_KEYS",
    "RULE_OPTION_KEYS",
    "TARGET_KEYS",
    "FieldIssue",
    "RuleChecker",
    "RuleRequest",
    "parse_rule_body",
]

#: A range rule binds one socket per port; this keeps a typo from binding 60k.
MAX_RANGE_PORTS = 1024
#: Rule names appear in every log line and stats row; keep them readable.
MAX_RULE_NAME_LENGTH = 128
#: Failover lists longer than this are almost certainly a mistake.
MAX_TARGETS = 8

RATE_LIMIT_KEYS: tuple[str, ...] = tuple(a.name for a in attrs.fields(RateLimit))

# ASCII digits only (\d would accept "٨٠"), and few enough that int() is cheap.
_PORT_RANGE = re.compile(r"\s*([0-9]{1,10})\s*(?:-\s*([0-9]{1,10})\s*)?")


class RuleChecker(FieldChecker):
    """
    The checks of single rule fields, on top of L{FieldChecker}'s generic
    ones: what the standalone TOML and the API's rule bodies share.
    """

    # -- rule fields -----------------------------------------------------------

    def protocol(
        self, table: Mapping[str, object], where: str | None, field: str
    ) -> Protocol | Absent | None:
        value = self.choice(
            table, "protocol", where, field, [p.value for p in Protocol], code="invalid_protocol"
        )
        if isinstance(value, str):
            return Protocol(value)
        return value

    def rule_name(self, raw: object, where: str | None, field: str) -> str | None:
        """A present C{name} value; whether it may be absent is the caller's call."""
        if not isinstance(raw, str):
            self.report(
                where,
                field,
                f'must be a string, not {_describe(raw)}; write e.g. name = "web"',
                "invalid_name",
            )
            return None
        if not raw.strip():
            self.report(where, field, 'is empty; write e.g. name = "web"', "invalid_name")
            return None
        if len(raw) > MAX_RULE_NAME_LENGTH:
            self.report(
                where,
                field,
                f"is {len(raw)} characters long; use at most {MAX_RULE_NAME_LENGTH}",
                "invalid_name",
            )
            return None
        if has_bad_characters(raw):
            self.report(where, field, BAD_CHARACTERS, "invalid_name")
            return None
        return raw

    def listen_addresses(
        self, table: Mapping[str, object], where: str | None, field: str
    ) -> tuple[str, ...] | Absent | None:
        raw = table.get("listen_addresses", ABSENT)
        if isinstance(raw, Absent):
            return raw
        example = 'e.g. listen_addresses = ["0.0.0.0", "::"]'
        if not isinstance(raw, list):
            self.report(
                where, field, f"must be an array of IP addresses, not {_describe(raw)}; {example}"
            )
            return None
        if not raw:
            self.report(where, field, f"is empty; list at least one address, {example}")
            return None
        result: list[str] = []
        ok = True
        for i, entry in enumerate(raw):
            entry_field = f"{field}[{i}]"
            if not isinstance(entry, str):
                self.report(
                    where, entry_field, f"must be a string IP address, not {_describe(entry)}"
                )
                ok = False
                continue
            try:
                address = str(ipaddress.ip_address(entry.strip()))
            except ValueError:
                self.report(
                    where,
                    entry_field,
                    f"'{_safe(entry)}' is not an IP address; listen addresses are IPv4 or IPv6 "
                    'literals without brackets or ports, e.g. "127.0.0.1" or "::1"',
                )
                ok = False
                continue
            clash = next((a for a in result if addresses_overlap(a, address)), None)
            if clash == address:
                self.report(
                    where, entry_field, f"'{_safe(entry)}' is listed twice; remove the duplicate"
                )
                ok = False
                continue
            if clash is not None:
                wide, narrow = (
                    (clash, address)
                    if ipaddress.ip_address(clash).is_unspecified
                    else (address, clash)
                )
                self.report(
                    where,
                    entry_field,
                    f"'{wide}' already covers every IPv{ipaddress.ip_address(wide).version} "
                    f"address, so binding '{narrow}' too would fail; remove one of them",
                )
                ok = False
                continue
            result.append(address)
        return tuple(result) if ok else None

    def port_range(self, raw: object, where: str | None, field: str, what: str) -> PortRange | None:
        """Parse C{"A-B"}, C{"A"} or an integer as a port range."""
        if is_int(raw):
            assert isinstance(raw, int)
            if raw not in PORT:
                self.report(
                    where,
                    field,
                    f"{what} {raw} is out of range; ports are {PORT.span('..')}",
                    "range_invalid",
                )
                return None
            return PortRange.single(raw)
        if not isinstance(raw, str):
            self.report(
                where,
                field,
                f'{what} must be a port or a range like "8000-8010", not {_describe(raw)}',
                "range_invalid",
            )
            return None
        match = _PORT_RANGE.fullmatch(raw)
        if match is None:
            self.report(
                where,
                field,
                f"{what} '{_safe(raw)}' is not a port or a port range; "
                'write a single port like "8000" or a range like "8000-8010"',
                "range_invalid",
            )
            return None
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        bad = [p for p in (start, end) if p not in PORT]
        if bad:
            at = "" if match.group(2) is None else f" in '{raw}'"
            self.report(
                where,
                field,
                f"{what} {bad[0]}{at} is out of range; ports are {PORT.span('..')}",
                "range_invalid",
            )
            return None
        if end < start:
            self.report(
                where,
                field,
                f"{what} '{raw}' ends before it starts; write the lower port first, "
                f'e.g. "{end}-{start}"',
                "range_inverted",
            )
            return None
        ports = PortRange(start, end)
        if len(ports) > MAX_RANGE_PORTS:
            self.report(
                where,
                field,
                f"{what} '{raw}' has {len(ports)} ports, more than the {MAX_RANGE_PORTS} "
                "allowed in one rule; split it into several rules",
                "range_invalid",
            )
            return None
        return ports

    def target_host(self, raw: object, where: str | None, field: str) -> str | None:
        """The C{host} of a target table, brackets around IPv6 tolerated."""
        if not isinstance(raw, str):
            self.report(where, field, f"must be a string, not {_describe(raw)}", "invalid_target")
            return None
        # A bracketed IPv6 literal is a habit from "host:port"; accept it.
        host = unbracket(raw.strip())
        problem = host_problem(host)
        if problem is not None:
            self.report(where, field, f"{problem}; use an IP address or name", "invalid_target")
            return None
        return host

    def target_list(
        self,
        raw: object,
        where: str | None,
        field: str,
        listen: PortRange | None,
        protocol: Protocol | None,
        keys: Sequence[str],
        port_ranges: bool,
    ) -> tuple[Target, ...] | None:
        """
        A list of target tables.  With C{port_ranges} a target's C{port}
        may be a range as long as the listen range (the API); without, it
        is one integer port and only single-port rules may list targets
        (the TOML C{targets} key, whose ranges go in C{target}).
        """
        if not isinstance(raw, list):
            self.report(
                where,
                field,
                f"must be an array of tables, not {_describe(raw)}; "
                'write targets = [{ host = "10.0.0.5", port = 80 }]',
                "invalid_target",
            )
            return None
        if not raw:
            self.report(
                where,
                field,
                'is empty; list at least one { host = "...", port = ... } '
                'or use target = "host:port"',
                "targets_empty",
            )
            return None
        ok = True
        if len(raw) > MAX_TARGETS:
            self.report(
                where,
                field,
                f"has {len(raw)} entries; at most {MAX_TARGETS} targets are allowed per rule",
                "targets_too_many",
            )
            ok = False
        if not port_ranges and listen is not None and len(listen) > 1:
            self.report(
                where,
                field,
                f"targets needs a single listen_port but this rule listens on {len(listen)} "
                'ports; for a range use target = "host:A-B", or make one rule per port',
                "mismatched_range",
            )
            ok = False
        targets: list[Target] = []
        for i, item in enumerate(raw):
            target = self.target_table(
                item, where, f"{field}[{i}]", protocol, keys, listen if port_ranges else None
            )
            if target is None:
                ok = False
            else:
                targets.append(target)
        return tuple(targets) if ok else None

    def target_table(
        self,
        item: object,
        where: str | None,
        field: str,
        protocol: Protocol | None,
        keys: Sequence[str],
        listen: PortRange | None = None,
    ) -> Target | None:
        """
        One C{{host, port, priority?, proxy_protocol?, weight?}} table.
        When C{listen} is given the port may be a range and must match it.
        """
        if not isinstance(item, dict):
            self.report(
                where,
                field,
                f'must be a table, not {_describe(item)}; write {{ host = "10.0.0.5", port = 80 }}',
                "invalid_target",
            )
            return None
        start = self.reported
        self.strict(item, keys, where, field, "a target")

        host: str | None = None
        raw_host = item.get("host", ABSENT)
        if isinstance(raw_host, Absent):
            self.report(
                where, f"{field}.host", 'is missing; add host = "10.0.0.5"', "invalid_target"
            )
        else:
            host = self.target_host(raw_host, where, f"{field}.host")

        ports: PortRange | None = None
        raw_port = item.get("port", ABSENT)
        if isinstance(raw_port, Absent):
            self.report(where, f"{field}.port", "is missing; add port = 80", "invalid_target")
        elif listen is not None:
            ports = self.port_range(raw_port, where, f"{field}.port", "target port")
            if ports is not None and not self.sizes_match(listen, ports, where, f"{field}.port"):
                ports = None
        else:
            value = self.integer(item, "port", where, f"{field}.port", PORT, "invalid_target")
            if isinstance(value, int):
                ports = PortRange.single(value)

        priority = self.integer(item, "priority", where, f"{field}.priority", TARGET_PRIORITY)
        weight = self.integer(item, "weight", where, f"{field}.weight", TARGET_WEIGHT)

        proxy = self.choice(
            item,
            "proxy_protocol",
            where,
            f"{field}.proxy_protocol",
            [v.value for v in ProxyProtocolVersion],
        )
        if isinstance(proxy, str) and protocol is Protocol.UDP:
            self.report(
                where,
                f"{field}.proxy_protocol",
                'PROXY protocol is TCP only; remove proxy_protocol or use protocol = "tcp"',
            )

        if self.reported != start or host is None or ports is None:
            return None
        return Target(
            host=host,
            ports=ports,
            priority=priority if isinstance(priority, int) else 0,
            proxy_protocol=ProxyProtocolVersion(proxy) if isinstance(proxy, str) else None,
            weight=weight if isinstance(weight, int) else 1,
        )

    def sizes_match(
        self, listen: PortRange, target: PortRange, where: str | None, field: str
    ) -> bool:
        """
        A target's ports against the listen ports: same length, or one
        port each.  C{field} names the target; a range-vs-range mismatch
        is reported on the listen side when the caller passes that.
        """
        n, m = len(listen), len(target)
        if n == m:
            return True
        if m == 1:
            self.report(
                where,
                field,
                f"listen has {n} ports but target has 1; give the target a range of the "
                f'same size, e.g. "host:{target.start}-{target.start + n - 1}"',
                "mismatched_range",
            )
        elif n == 1:
            self.report(
                where,
                field,
                f"listen has 1 port but target has {m}; use a single target port, or "
                f'listen_ports = "{listen.start}-{listen.start + m - 1}" to forward the range',
                "mismatched_range",
            )
        else:
            self.report(
                where,
                field,
                f"listen has {n} ports but target has {m}; make the two ranges the same size",
                "mismatched_range",
            )
        return False

    # -- data-plane features -------------------------------------------------------

    def features(
        self,
        entry: Mapping[str, object],
        where: str | None,
        prefix: str,
        protocol: Protocol | Absent | None,
        listen: PortRange | None,
    ) -> dict[str, Any]:
        """Balance, health checks, SNI, PROXY accept and rate limits of a rule."""
        features: dict[str, Any] = {}
        balance = self.choice(
            entry, "balance", where, f"{prefix}balance", [b.value for b in Balance]
        )
        if isinstance(balance, str):
            features["balance"] = Balance(balance)
        interval = self.integer(
            entry,
            "health_check_interval_secs",
            where,
            f"{prefix}health_check_interval_secs",
            HEALTH_CHECK_INTERVAL_SECS,
            "health_check_interval_out_of_range",
        )
        if isinstance(interval, int):
            features["health_check_interval_secs"] = interval
        is_udp = protocol is Protocol.UDP
        is_range = listen is not None and len(listen) > 1
        features.update(self.sni(entry, where, prefix, is_udp, is_range))
        features.update(self.proxy_accept(entry, where, prefix, is_udp))
        limit = self.rate_limit(entry, where, prefix)
        if limit is not None:
            features["rate_limit"] = limit
        return features

    def sni(
        self,
        entry: Mapping[str, object],
        where: str | None,
        prefix: str,
        is_udp: bool,
        is_range: bool,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        raw = entry.get("sni_pattern", ABSENT)
        fallback = self.boolean(entry, "sni_fallback", where, f"{prefix}sni_fallback")
        if not isinstance(raw, Absent):
            if not isinstance(raw, str):
                self.report(
                    where,
                    f"{prefix}sni_pattern",
                    f"must be a string, not {_describe(raw)}; "
                    'write e.g. sni_pattern = "*.example.com"',
                    "validation.sni_pattern_malformed",
                )
            else:
                try:
                    out["sni_pattern"] = normalize_sni_pattern(raw)
                except SniError as e:
                    self.report(where, f"{prefix}sni_pattern", f"{e.code}: {e.message}", e.code)
        if fallback is True:
            out["sni_fallback"] = True
            if "sni_pattern" in out or not isinstance(raw, Absent):
                self.report(
                    where,
                    f"{prefix}sni_fallback",
                    "a fallback rule has no sni_pattern; remove one of the two",
                )
        if (out or not isinstance(raw, Absent)) and (is_udp or is_range):
            code = "validation.sni_on_unsupported_rule"
            self.report(
                where,
                f"{prefix}sni_pattern" if "sni_fallback" not in out else f"{prefix}sni_fallback",
                f"{code}: SNI routing needs a single-port TCP rule; "
                'remove it or use one listen_port with protocol = "tcp"',
                code,
            )
        return out

    def proxy_accept(
        self, entry: Mapping[str, object], where: str | None, prefix: str, is_udp: bool
    ) -> dict[str, Any]:
        accept = self.boolean(
            entry, "accept_proxy_protocol", where, f"{prefix}accept_proxy_protocol"
        )
        raw = entry.get("trusted_sources", ABSENT)
        field = f"{prefix}trusted_sources"
        out: dict[str, Any] = {}
        if accept is True:
            out["accept_proxy_protocol"] = True
            if is_udp:
                self.report(
                    where,
                    f"{prefix}accept_proxy_protocol",
                    'PROXY protocol is TCP only; remove it or use protocol = "tcp"',
                )
            if isinstance(raw, Absent):
                self.report(
                    where,
                    field,
                    "is required with accept_proxy_protocol: list the load balancers allowed "
                    'to send PROXY headers, e.g. trusted_sources = ["10.0.0.0/8"]',
                )
        if isinstance(raw, Absent):
            return out
        if accept is not True:
            self.report(
                where,
                field,
                "only applies with accept_proxy_protocol = true; add that or remove this",
            )
            return out
        if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
            self.report(
                where,
                field,
                'must be a non-empty list of CIDRs, e.g. ["10.0.0.0/8", "2001:db8::/32"]',
            )
            return out
        try:
            TrustedSources.parse(raw)
        except ValueError as e:
            self.report(where, field, str(e))
            return out
        out["trusted_sources"] = tuple(c.strip() for c in raw)
        return out

    def rate_limit(
        self, entry: Mapping[str, object], where: str | None, prefix: str
    ) -> RateLimit | None:
        raw = entry.get("rate_limit", ABSENT)
        field = f"{prefix}rate_limit"
        if isinstance(raw, Absent):
            return None
        if not isinstance(raw, dict):
            self.report(
                where,
                field,
                "must be a table; write [rule.rate_limit] under the rule with e.g. "
                "bandwidth_in_bps = 1_000_000",
            )
            return None
        start = self.reported
        self.strict(raw, RATE_LIMIT_KEYS, where, field, "[rule.rate_limit]")
        values: dict[str, int] = {}
        for key in RATE_LIMIT_KEYS:
            value = self.integer(raw, key, where, f"{field}.{key}", RATE_LIMIT_CAP)
            if isinstance(value, int):
                values[key] = value
        if self.reported != start:
            return None
        if not values:
            self.report(
                where,
                field,
                "is empty; set at least one limit or remove the table",
                "validation.rate_limit_no_caps_provided",
            )
            return None
        limit = RateLimit(**values)
        for name, code, message in validate_rate_limit(limit):
            self.report(where, f"{field}.{name}", f"{code}: {message}", code)
        return None if self.reported != start else limit


# ---------------------------------------------------------------------------
# The API dialect

#: A rule's keys beyond its name, protocol, ports and targets: the same in
#: the standalone TOML and the API.
RULE_OPTION_KEYS: tuple[str, ...] = (
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
#: Keys of one entry of a rule's C{targets}, in both dialects.
TARGET_KEYS: tuple[str, ...] = ("host", "port", "priority", "proxy_protocol", "weight")

#: Keys of a C{POST /v1/rules} body.
API_RULE_KEYS: tuple[str, ...] = (
    "client",
    "name",
    "protocol",
    "listen",
    "targets",
    *RULE_OPTION_KEYS,
    "ack_timeout_secs",
)
#: Keys of one entry of its C{targets}.
API_TARGET_KEYS = TARGET_KEYS

_DEFAULT_RULE_NAME = "rule"


@attrs.frozen
class FieldIssue:
    """One problem with one field of a request body."""

    field: str
    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


@attrs.frozen
class RuleRequest:
    """A validated C{POST /v1/rules} body."""

    #: Client id or name, as written; the API resolves it.
    client: str
    rule: Rule
    ack_timeout: float


def _strip_code(message: str, code: str) -> str:
    # The TOML wording embeds some codes in the text; the API has a code field.
    prefix = f"{code}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def parse_rule_body(body: object) -> RuleRequest | list[FieldIssue]:
    """
    Validate a decoded JSON rule request, reporting I{every} problem (as
    the TOML parser does), or the request it describes.
    """
    issues: list[FieldIssue] = []

    def add(where: str | None, field: str, message: str, code: str) -> None:
        issues.append(FieldIssue(field, code, _strip_code(message, code)))

    check = RuleChecker(add)
    if not isinstance(body, dict):
        check.report(None, "body", "must be a JSON object describing the rule")
        return issues
    check.strict(body, API_RULE_KEYS, None, "body", "a rule")

    client = body.get("client", ABSENT)
    if isinstance(client, Absent):
        check.report(None, "client", "is missing; give the client's id or name")
    elif not isinstance(client, str) or not client.strip():
        check.report(None, "client", "must be a non-empty string: the client's id or name")

    raw_name = body.get("name", ABSENT)
    name = (
        _DEFAULT_RULE_NAME
        if isinstance(raw_name, Absent)
        else check.rule_name(raw_name, None, "name")
    )

    protocol = check.protocol(body, None, "protocol")
    if isinstance(protocol, Absent):
        protocol = Protocol.TCP

    listen: PortRange | None = None
    raw_listen = body.get("listen", ABSENT)
    if isinstance(raw_listen, Absent):
        check.report(None, "listen", 'is missing; give a port (8080) or a range ("8000-8010")')
    else:
        listen = check.port_range(raw_listen, None, "listen", "listen")

    targets: tuple[Target, ...] | None = None
    raw_targets = body.get("targets", ABSENT)
    if isinstance(raw_targets, Absent):
        check.report(
            None,
            "targets",
            'is missing; list at least one {"host": "10.0.0.5", "port": 80}',
            "rule_shape_missing",
        )
    elif listen is not None:
        targets = check.target_list(
            raw_targets, None, "targets", listen, protocol, API_TARGET_KEYS, port_ranges=True
        )

    addresses = check.listen_addresses(body, None, "listen_addresses")
    prefer = check.boolean(body, "prefer_ipv6", None, "prefer_ipv6")
    flows = check.integer(body, "udp_max_flows", None, "udp_max_flows", UDP_MAX_FLOWS)
    idle = check.integer(body, "udp_flow_idle_secs", None, "udp_flow_idle_secs", UDP_FLOW_IDLE_SECS)
    features = check.features(body, None, "", protocol, listen)

    ack = check.duration(body, "ack_timeout_secs", None, "ack_timeout_secs", ACK_TIMEOUT_SECS)

    if issues:
        return issues
    assert isinstance(client, str) and name is not None and protocol is not None
    assert listen is not None and targets is not None
    tuples: dict[str, Any] = {"targets": targets}
    optional: dict[str, Any] = {}
    if isinstance(addresses, tuple):
        optional["listen_addresses"] = addresses
    if isinstance(prefer, bool):
        optional["prefer_ipv6"] = prefer
    if isinstance(flows, int):
        optional["udp_max_flows"] = flows
    if isinstance(idle, int):
        optional["udp_flow_idle_secs"] = idle
    try:
        rule = Rule(name=name, protocol=protocol, listen=listen, **tuples, **optional, **features)
    except ValueError as e:
        # The checks above should make this unreachable.
        return [FieldIssue("body", "validation_failed", f"{e}; fix the rule")]
    ack_timeout = ack if isinstance(ack, float) else ACK_TIMEOUT_SECS.fallback
    return RuleRequest(client=client.strip(), rule=rule, ack_timeout=ack_timeout)
