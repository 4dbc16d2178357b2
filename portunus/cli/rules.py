"""
C{portunus-server} rule commands, online: C{push-rule}, C{remove-rule},
C{list-rules} and C{rule-stats}.  C{push-rule} turns its target flags into
the API's targets list and checks what it can before any request; every
other check is the server's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.python import usage

from portunus.addresses import AddressError, format_host_port, split_host_port
from portunus.bounds import ACK_TIMEOUT_SECS, HEALTH_CHECK_INTERVAL_SECS
from portunus.cli._http import REQUEST_TIMEOUT, path
from portunus.cli.commandline import Formatted, Subcommand, positive_int
from portunus.cli.context import Context
from portunus.cli.exits import CliError
from portunus.cli.output import cell, table

__all__ = [
    "ListRulesOptions",
    "PushRuleOptions",
    "RemoveRuleOptions",
    "RuleStatsOptions",
    "list_rules",
    "push_rule",
    "remove_rule",
    "rule_stats",
]

_RATE_FLAGS = (
    ("bandwidth-in-bps", "bytes per second clients may send"),
    ("bandwidth-out-bps", "bytes per second clients may receive"),
    ("new-connections-per-sec", "new connections per second"),
    ("concurrent-connections", "connections open at once"),
    ("bandwidth-in-burst", "bytes the inbound cap may burst"),
    ("bandwidth-out-burst", "bytes the outbound cap may burst"),
    ("new-connections-burst", "connections the rate may burst"),
)


class PushRuleOptions(Subcommand):
    synopsis = "push-rule CLIENT LISTEN [TARGET] [options]"
    longdesc = (
        "Push a rule to a client and wait until it is active; print its id. LISTEN is N or "
        "A-B; TARGET is host:port or host:A-B. Give the targets one way: TARGET, --target "
        "(repeatable) or --targets-json."
    )
    optFlags = [["prefer-ipv6", None, "Dial IPv6 addresses of DNS targets first."]]
    optParameters = [
        ["protocol", None, "tcp", "tcp or udp."],
        ["targets-json", None, None, 'JSON list: [{"host","port","priority"?,"proxy_protocol"?}]'],
        ["sni", None, None, "Route by TLS SNI host (exact or *.example.com)."],
        [
            "health-check-interval-secs",
            None,
            None,
            f"Probe targets every N s ({HEALTH_CHECK_INTERVAL_SECS.span('..')}).",
            int,
        ],
        [
            "ack-timeout",
            None,
            ACK_TIMEOUT_SECS.fallback,
            "Seconds to wait for the client to confirm.",
            float,
        ],
        ["name", None, None, "A name for the rule (default: rule)."],
    ] + [[flag, None, None, f"Cap: {doc}.", positive_int] for flag, doc in _RATE_FLAGS]

    def __init__(self) -> None:
        super().__init__()
        self["targets"] = []

    def opt_target(self, value: str) -> None:
        """host:port[@priority]; repeat for failover targets."""
        self["targets"].append(value)

    def parseArgs(self, client: str, listen: str, target: str | None = None) -> None:  # type: ignore[override]
        self["client"] = client
        self["listen"] = listen
        self["target"] = target


class RemoveRuleOptions(Subcommand):
    synopsis = "remove-rule ID"

    def parseArgs(self, rule_id: str) -> None:  # type: ignore[override]
        self["rule_id"] = rule_id


class ListRulesOptions(Formatted):
    synopsis = "list-rules [--client CLIENT] [--format text|json]"
    optParameters = [["client", None, None, "Only this client's rules (id or name)."]]


class RuleStatsOptions(Formatted):
    synopsis = "rule-stats ID [--per-port | --per-target] [--format text|json]"
    optFlags = [
        ["per-port", None, "One line per listen port."],
        ["per-target", None, "One line per target, with its health."],
    ]
    exclusive_flags = (("per-port", "per-target"),)

    def parseArgs(self, rule_id: str) -> None:  # type: ignore[override]
        self["rule_id"] = rule_id


def _split_host_port(text: str, what: str) -> tuple[str, str]:
    """A target's host and its port or range, as text; the API checks both."""
    example = "write host:port or host:A-B, IPv6 in brackets ([::1]:80)"
    try:
        split = split_host_port(text.strip())
    except AddressError as e:
        raise CliError("invalid_target", f"{what}: {e}; {example}") from None
    if not split.host or not split.port:
        raise CliError("invalid_target", f"{what} {text.strip()!r}: {example}")
    return split.host, split.port


def _port_value(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _targets(opts: usage.Options) -> list[dict[str, Any]]:
    """The one target shape given, as the API's targets list."""
    shapes = [
        name
        for name, given in (
            ("TARGET", opts["target"] is not None),
            ("--target", bool(opts["targets"])),
            ("--targets-json", opts["targets-json"] is not None),
        )
        if given
    ]
    if not shapes:
        raise CliError(
            "rule_shape_missing", "give the target: TARGET, --target host:port or --targets-json"
        )
    if len(shapes) > 1:
        raise CliError(
            "rule_shape_conflict", f"give the targets one way, not {' and '.join(shapes)}"
        )
    if opts["target"] is not None:
        host, port = _split_host_port(opts["target"], "TARGET")
        return [{"host": host, "port": _port_value(port)}]
    if opts["targets"]:
        targets = []
        for index, text in enumerate(opts["targets"]):
            spec, at, prio = text.partition("@")
            host, port = _split_host_port(spec, "--target")
            priority: int = index
            if at:
                if not prio.isdigit():
                    raise CliError(
                        "invalid_target",
                        f"--target {text!r}: the priority after @ must be a whole number",
                    )
                priority = int(prio)
            targets.append({"host": host, "port": _port_value(port), "priority": priority})
        return targets
    try:
        parsed = json.loads(opts["targets-json"])
    except ValueError as e:
        raise CliError("validation_failed", f"--targets-json is not valid JSON: {e}") from None
    if not isinstance(parsed, list):
        raise CliError("validation_failed", "--targets-json must be a JSON list of targets")
    return parsed


def _is_range(listen: str) -> bool:
    return "-" in listen.strip().strip("-")


async def push_rule(cmd: Context, opts: usage.Options) -> None:
    protocol = opts["protocol"].strip().lower()
    if opts["sni"] is not None and (protocol == "udp" or _is_range(opts["listen"])):
        raise CliError(
            "validation.sni_on_unsupported_rule",
            "--sni needs a single-port TCP rule; drop --sni or use one TCP listen port",
            exit_code=2,
        )
    interval = opts["health-check-interval-secs"]
    if interval is not None and interval not in HEALTH_CHECK_INTERVAL_SECS:
        raise CliError(
            "health_check_interval_out_of_range",
            f"--health-check-interval-secs {interval}: use "
            f"{HEALTH_CHECK_INTERVAL_SECS.span()} seconds",
        )
    listen = opts["listen"].strip()
    body: dict[str, Any] = {
        "client": opts["client"],
        "protocol": protocol,
        "listen": _port_value(listen),
        "targets": _targets(opts),
        "ack_timeout_secs": opts["ack-timeout"],
    }
    if opts["name"] is not None:
        body["name"] = opts["name"]
    if opts["prefer-ipv6"]:
        body["prefer_ipv6"] = True
    if interval is not None:
        body["health_check_interval_secs"] = interval
    if opts["sni"] is not None:
        body["sni_pattern"] = opts["sni"].strip().lower()
    caps = {flag.replace("-", "_"): opts[flag] for flag, _ in _RATE_FLAGS if opts[flag] is not None}
    if caps:
        body["rate_limit"] = caps
    # The server waits for the client's answer; give it the time it was asked for.
    limit = max(REQUEST_TIMEOUT, opts["ack-timeout"] + 10)
    answer = await cmd.api.call("POST", "/v1/rules", body, timeout=limit)
    cmd.print(str(answer["rule"]["id"]))


async def remove_rule(cmd: Context, opts: usage.Options) -> None:
    await cmd.api.call("DELETE", path("v1", "rules", opts["rule_id"]))


def _targets_text(rule: Mapping[str, Any]) -> str:
    shown = []
    for target in rule.get("targets", []):
        text = format_host_port(target["host"], target["ports"])
        if target.get("priority"):
            text += f"@{target['priority']}"
        shown.append(text)
    return ",".join(shown)


def _caps_text(rule: Mapping[str, Any]) -> str:
    caps = rule.get("rate_limit") or {}
    short = {
        "bandwidth_in_bps": "in",
        "bandwidth_out_bps": "out",
        "new_connections_per_sec": "cps",
        "concurrent_connections": "conc",
        "bandwidth_in_burst": "inb",
        "bandwidth_out_burst": "outb",
        "new_connections_burst": "cpsb",
    }
    return ",".join(f"{short.get(k, k)}={v}" for k, v in caps.items())


async def list_rules(cmd: Context, opts: usage.Options) -> None:
    query = {"client": opts["client"]} if opts["client"] else None
    views = await cmd.api.call("GET", "/v1/rules", query=query)
    if opts["format"] == "json":
        cmd.print_json(views)
        return
    rows: list[Sequence[object]] = [
        ("RULE_ID", "NAME", "CLIENT", "PROTO", "LISTEN", "TARGETS", "STATE", "CAPS")
    ]
    for view in views:
        rule = view["rule"]
        state = view["state"]
        if view.get("state_reason"):
            state += f":{view['state_reason']}"
        rows.append(
            (
                rule["id"],
                rule["name"],
                view["client_name"],
                rule["protocol"],
                rule["listen"],
                _targets_text(rule),
                state,
                _caps_text(rule),
            )
        )
    cmd.print(*table(rows))


def _pairs(values: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    return " ".join(
        f"{k}={cell(v)}" for k, v in values.items() if k not in skip and not isinstance(v, list)
    )


async def rule_stats(cmd: Context, opts: usage.Options) -> None:
    rule_id = opts["rule_id"]
    view = await cmd.api.call("GET", path("v1", "rules", rule_id))
    stats = await cmd.api.call(
        "GET",
        path("v1", "rules", rule_id, "stats"),
        query={"per_port": "true"} if opts["per-port"] else None,
    )
    if opts["format"] == "json":
        cmd.print_json(stats)
        return
    rule = view["rule"]
    cmd.print(
        f"rule_id={rule['id']} client={view['client_name']} protocol={rule['protocol']} "
        f"bytes_in={stats.get('bytes_in', 0)} bytes_out={stats.get('bytes_out', 0)} "
        f"active={stats.get('active_connections', 0)} "
        f"dns_failures={stats.get('dns_failures', 0)} "
        f"target_failovers_total={stats.get('target_failovers_total', 0)} "
        f"updated_at={cell(stats.get('updated_at'))}"
    )
    if opts["per-port"]:
        per_port = stats.get("per_port") or []
        if isinstance(per_port, dict):
            per_port = [dict(counters, port=port) for port, counters in per_port.items()]
        for row in per_port:
            cmd.print(f"port={row.get('port')} " + _pairs(row, skip=("port",)))
    if opts["per-target"]:
        if len(rule.get("targets", [])) < 2:
            cmd.print("(single-target rule, no per-target state)")
            return
        for row in stats.get("per_target") or []:
            cmd.print(_pairs(row))
