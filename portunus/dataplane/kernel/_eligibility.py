"""
Which rules the kernel can forward, and why the others stay on the relay.

A rule is I{plain} when nftables can do everything it asks: one target
given as an IP address that is not loopback, listen addresses of the
target's family (the wildcard of the other family is dropped: the kernel
cannot translate between IPv4 and IPv6), no PROXY protocol, no SNI routing,
no health checks, and rate limits within what C{limit} and C{ct count} can
hold.  Everything else needs user space.

Each refusal has a stable reason code, so C{mode = "auto"} can log why a
rule stayed on the relay and C{mode = "kernel"} can refuse it with
C{kernel_mode_unsupported} and that reason.
"""

from __future__ import annotations

import ipaddress

import attrs

from portunus.errors import PortunusError
from portunus.model import RateLimit, Rule

__all__ = [
    "REASONS",
    "Ineligible",
    "check_eligible",
    "listen_addresses_for",
    "refuse_unless_eligible",
    "target_address",
]

#: Every reason a rule must stay on the relay, with what to change.
REASONS: dict[str, str] = {
    "multiple_targets": "several targets need the relay's failover and balancing",
    "health_check": "health checks need the relay",
    "proxy_protocol": "sending a PROXY protocol header needs the relay",
    "accept_proxy_protocol": "reading a PROXY protocol header needs the relay",
    "sni_routing": "SNI routing reads the TLS ClientHello, which needs the relay",
    "dns_target": "the target is a DNS name; the kernel needs an IP address",
    "loopback_target": "the kernel cannot forward to a loopback or unspecified address",
    "loopback_listen": "the kernel forwards traffic from other hosts, never to loopback",
    "address_family_mismatch": "the kernel cannot translate between IPv4 and IPv6",
    "limit_out_of_range": "a rate limit or burst is beyond what nftables can hold",
}

#: nftables keeps a limit's burst in 32 bits.
_U32 = 2**32 - 1


@attrs.frozen
class Ineligible:
    """Why a rule cannot be forwarded by the kernel."""

    reason: str
    message: str


def target_address(rule: Rule) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The single target's address, or None if it is not an IP literal."""
    try:
        return ipaddress.ip_address(rule.targets[0].host)
    except ValueError:
        return None


def listen_addresses_for(rule: Rule, version: int) -> tuple[str, ...] | None:
    """
    The listen addresses of the target's IP C{version}: C{None} for the
    family's wildcard (every local address), else the addresses themselves
    in config order.  Addresses of the other family are left out.
    """
    chosen = []
    for text in rule.listen_addresses:
        address = ipaddress.ip_address(text)
        if address.version != version:
            continue
        if address.is_unspecified:
            return None
        chosen.append(str(address))
    return tuple(chosen)


def _limits_problem(limit: RateLimit) -> str | None:
    pairs = (
        ("bandwidth_in", limit.bandwidth_in_bps, limit.bandwidth_in_burst),
        ("bandwidth_out", limit.bandwidth_out_bps, limit.bandwidth_out_burst),
        ("new_connections", limit.new_connections_per_sec, limit.new_connections_burst),
    )
    for name, rate, burst in pairs:
        if rate is None:
            continue
        if (burst if burst is not None else rate) > _U32:
            return f"{name}: a burst above {_U32} cannot be held by nftables"
    cap = limit.concurrent_connections
    if cap is not None and cap > _U32:
        return f"concurrent_connections above {_U32} cannot be held by nftables"
    return None


def check_eligible(rule: Rule) -> Ineligible | None:
    """None when the kernel can forward C{rule}, else the first reason it cannot."""

    def no(reason: str, detail: str = "") -> Ineligible:
        return Ineligible(reason, f"rule {rule.name!r}: {detail or REASONS[reason]}")

    if len(rule.targets) != 1:
        return no("multiple_targets")
    if rule.health_check_interval_secs is not None:
        return no("health_check")
    target = rule.targets[0]
    if target.proxy_protocol is not None:
        return no("proxy_protocol")
    if rule.accept_proxy_protocol:
        return no("accept_proxy_protocol")
    if rule.sni_pattern is not None or rule.sni_fallback:
        return no("sni_routing")
    address = target_address(rule)
    if address is None:
        return no("dns_target", f"target {target.display()} is a DNS name; use its IP address")
    if address.is_loopback or address.is_unspecified:
        return no("loopback_target", f"target {target.display()} is not reachable by forwarding")
    for text in rule.listen_addresses:
        try:
            listen = ipaddress.ip_address(text)
        except ValueError:
            return no("address_family_mismatch", f"listen address {text!r} is not an IP address")
        if listen.is_loopback:
            return no("loopback_listen", f"listen address {text} is loopback")
        if listen.version != address.version and not listen.is_unspecified:
            return no(
                "address_family_mismatch",
                f"listen address {text} is IPv{listen.version}, "
                f"target {target.display()} is IPv{address.version}",
            )
    if listen_addresses_for(rule, address.version) == ():
        return no(
            "address_family_mismatch",
            f"no listen address is IPv{address.version} like target {target.display()}",
        )
    if rule.rate_limit is not None:
        problem = _limits_problem(rule.rate_limit)
        if problem is not None:
            return no("limit_out_of_range", problem)
    return None


def refuse_unless_eligible(rule: Rule) -> None:
    """
    @raise PortunusError: C{kernel_mode_unsupported} with the reason, if the
        kernel cannot forward C{rule}.
    """
    why = check_eligible(rule)
    if why is not None:
        raise PortunusError(
            "kernel_mode_unsupported", why.message, rule=rule.name, reason=why.reason
        )
