"""
The one JSON shape of a L{Rule}, for the wire (server -> client), the store
and API answers.

This codec is for trusted round trips: the dict came from L{rule_to_dict}
(possibly of an older version, so absent optional keys take their
defaults).  Operator input is validated field by field elsewhere and only
then becomes a L{Rule}.  Encoding omits optional fields at their defaults,
so an older reader sees the bytes it knows and a newer field is additive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portunus.model import (
    DEFAULT_LISTEN_ADDRESSES,
    Balance,
    PortRange,
    Protocol,
    ProxyProtocolVersion,
    RateLimit,
    Rule,
    Target,
)

__all__ = ["RuleDecodeError", "rule_from_dict", "rule_to_dict"]

_RATE_FIELDS = (
    "bandwidth_in_bps",
    "bandwidth_out_bps",
    "new_connections_per_sec",
    "concurrent_connections",
    "bandwidth_in_burst",
    "bandwidth_out_burst",
    "new_connections_burst",
)


class RuleDecodeError(ValueError):
    """A rule dict that no version of L{rule_to_dict} could have written."""


def _ports(ports: PortRange) -> str:
    return str(ports)


def _parse_ports(text: object) -> PortRange:
    if isinstance(text, int) and not isinstance(text, bool):
        return PortRange.single(text)
    if not isinstance(text, str):
        raise RuleDecodeError(f"ports must be a string like '80' or '80-90', not {text!r}")
    start, sep, end = text.partition("-")
    try:
        return PortRange(int(start), int(end) if sep else int(start))
    except ValueError as e:
        raise RuleDecodeError(f"ports {text!r}: {e}") from None


def _target_to_dict(target: Target) -> dict[str, Any]:
    out: dict[str, Any] = {"host": target.host, "ports": _ports(target.ports)}
    if target.priority:
        out["priority"] = target.priority
    if target.proxy_protocol is not None:
        out["proxy_protocol"] = target.proxy_protocol.value
    if target.weight != 1:
        out["weight"] = target.weight
    return out


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """A JSON-ready dict of C{rule}; defaults are left out."""
    out: dict[str, Any] = {
        "id": rule.id,
        "name": rule.name,
        "protocol": rule.protocol.value,
        "listen": _ports(rule.listen),
        "targets": [_target_to_dict(t) for t in rule.targets],
    }
    if rule.listen_addresses != DEFAULT_LISTEN_ADDRESSES:
        out["listen_addresses"] = list(rule.listen_addresses)
    if rule.prefer_ipv6:
        out["prefer_ipv6"] = True
    if rule.udp_max_flows != 1024:
        out["udp_max_flows"] = rule.udp_max_flows
    if rule.udp_flow_idle_secs != 60:
        out["udp_flow_idle_secs"] = rule.udp_flow_idle_secs
    if rule.balance is not Balance.FAILOVER:
        out["balance"] = rule.balance.value
    if rule.health_check_interval_secs is not None:
        out["health_check_interval_secs"] = rule.health_check_interval_secs
    if rule.sni_pattern is not None:
        out["sni_pattern"] = rule.sni_pattern
    if rule.sni_fallback:
        out["sni_fallback"] = True
    if rule.accept_proxy_protocol:
        out["accept_proxy_protocol"] = True
    if rule.trusted_sources:
        out["trusted_sources"] = list(rule.trusted_sources)
    if not rule.allow_local_targets:
        out["allow_local_targets"] = False
    if rule.rate_limit is not None:
        caps = {
            name: getattr(rule.rate_limit, name)
            for name in _RATE_FIELDS
            if getattr(rule.rate_limit, name) is not None
        }
        if caps:
            out["rate_limit"] = caps
    return out


def _target_from_dict(data: Mapping[str, Any]) -> Target:
    proxy = data.get("proxy_protocol")
    return Target(
        host=str(data["host"]),
        ports=_parse_ports(data["ports"]),
        priority=int(data.get("priority", 0)),
        proxy_protocol=ProxyProtocolVersion(proxy) if proxy is not None else None,
        weight=int(data.get("weight", 1)),
    )


def rule_from_dict(data: Mapping[str, Any]) -> Rule:
    """
    The L{Rule} C{data} describes.  Unknown keys are ignored (a newer
    writer); a missing or ill-typed required key raises L{RuleDecodeError}.
    """
    try:
        rate = data.get("rate_limit")
        return Rule(
            id=int(data["id"]),
            name=str(data["name"]),
            protocol=Protocol(data["protocol"]),
            listen=_parse_ports(data["listen"]),
            targets=[_target_from_dict(t) for t in data["targets"]],
            listen_addresses=tuple(data.get("listen_addresses", DEFAULT_LISTEN_ADDRESSES)),
            prefer_ipv6=bool(data.get("prefer_ipv6", False)),
            udp_max_flows=int(data.get("udp_max_flows", 1024)),
            udp_flow_idle_secs=int(data.get("udp_flow_idle_secs", 60)),
            balance=Balance(data.get("balance", Balance.FAILOVER.value)),
            health_check_interval_secs=data.get("health_check_interval_secs"),
            sni_pattern=data.get("sni_pattern"),
            sni_fallback=bool(data.get("sni_fallback", False)),
            accept_proxy_protocol=bool(data.get("accept_proxy_protocol", False)),
            trusted_sources=tuple(data.get("trusted_sources", ())),
            rate_limit=RateLimit(**{k: rate[k] for k in _RATE_FIELDS if k in rate})
            if rate
            else None,
            allow_local_targets=bool(data.get("allow_local_targets", True)),
        )
    except RuleDecodeError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise RuleDecodeError(f"not a rule: {type(e).__name__}: {e}") from None
