"""
Frozen values shared by every layer: rules, targets, port ranges.

These are plain data.  The standalone TOML parser, the control plane's
store and the wire protocol all produce and consume the same L{Rule}, so a
feature added here is available everywhere at once.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Iterator

import attrs

from portunus.addresses import format_host_port
from portunus.bounds import PORT, TARGET_PRIORITY, TARGET_WEIGHT, UDP_FLOW_IDLE_SECS, UDP_MAX_FLOWS

__all__ = [
    "DEFAULT_LISTEN_ADDRESSES",
    "Balance",
    "PortRange",
    "Protocol",
    "ProxyProtocolVersion",
    "RateLimit",
    "Rule",
    "Target",
    "rule_id_for_name",
]

#: Every rule listens on all IPv4 and all IPv6 addresses unless told otherwise.
DEFAULT_LISTEN_ADDRESSES: tuple[str, ...] = ("0.0.0.0", "::")


class Protocol(enum.Enum):
    TCP = "tcp"
    UDP = "udp"


class ProxyProtocolVersion(enum.Enum):
    V1 = "v1"
    V2 = "v2"


class Balance(enum.Enum):
    """How a connection picks among the healthy targets of the best priority."""

    #: Always the first healthy target in priority order (Portunus).
    FAILOVER = "failover"
    ROUND_ROBIN = "round_robin"
    #: Proportional to each target's C{weight}.
    WEIGHTED = "weighted"
    #: The same client address keeps reaching the same target.
    SOURCE_HASH = "source_hash"


@attrs.frozen
class RateLimit:
    """
    Per-rule limits.  Rates are per second; a burst of C{None} means one
    second's worth (1 x rate).  Every field is optional.
    """

    bandwidth_in_bps: int | None = None
    bandwidth_out_bps: int | None = None
    new_connections_per_sec: int | None = None
    concurrent_connections: int | None = None
    bandwidth_in_burst: int | None = None
    bandwidth_out_burst: int | None = None
    new_connections_burst: int | None = None

    @property
    def caps_bandwidth(self) -> bool:
        """A bandwidth cap needs the userspace relay (splice cannot pace)."""
        return self.bandwidth_in_bps is not None or self.bandwidth_out_bps is not None


def _check_port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value not in PORT:
        raise ValueError(f"{attribute.name} must be {PORT.span('..')}, got {value}")


@attrs.frozen
class PortRange:
    """An inclusive range of ports; a single port is a range of one."""

    start: int = attrs.field(validator=_check_port)
    end: int = attrs.field(validator=_check_port)

    def __attrs_post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"port range {self.start}-{self.end} ends before it starts")

    @classmethod
    def single(cls, port: int) -> PortRange:
        return cls(port, port)

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end + 1))

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.start <= port <= self.end

    def overlaps(self, other: PortRange) -> bool:
        return self.start <= other.end and other.start <= self.end

    def __str__(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


@functools.lru_cache(maxsize=4096)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# Targets key the per-target state every connection updates: hash once.
@attrs.frozen(cache_hash=True)
class Target:
    """
    Where a rule's connections go.

    C{ports} has one port for a single-port rule, or the same length as the
    rule's listen range: listen port C{A + i} goes to target port
    C{ports.start + i}.
    """

    host: str
    ports: PortRange
    priority: int = TARGET_PRIORITY.fallback
    proxy_protocol: ProxyProtocolVersion | None = None
    #: Share of connections under C{Balance.WEIGHTED} (L{TARGET_WEIGHT}).
    weight: int = TARGET_WEIGHT.fallback

    @property
    def is_ip_literal(self) -> bool:
        """Parsed once per host name, not on every connection that asks."""
        return _is_ip_literal(self.host)

    def display(self) -> str:
        return format_host_port(self.host, self.ports)


def rule_id_for_name(name: str) -> int:
    """
    A stable 63-bit id derived from a rule's name, so the same standalone
    config always yields the same ids in logs and stats across restarts.
    """
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _target_tuple(targets: Iterable[Target]) -> tuple[Target, ...]:
    return tuple(targets)


def _address_tuple(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(addresses)


@attrs.frozen
class Rule:
    """One forwarding rule: listen on C{listen} ports, send to C{targets}."""

    name: str
    protocol: Protocol
    listen: PortRange
    targets: tuple[Target, ...] = attrs.field(converter=_target_tuple)
    listen_addresses: tuple[str, ...] = attrs.field(
        default=DEFAULT_LISTEN_ADDRESSES, converter=_address_tuple
    )
    prefer_ipv6: bool = False
    udp_max_flows: int = UDP_MAX_FLOWS.fallback
    udp_flow_idle_secs: int = UDP_FLOW_IDLE_SECS.fallback
    balance: Balance = Balance.FAILOVER
    #: Seconds between active TCP probes of each target; None = passive only.
    health_check_interval_secs: int | None = None
    #: TLS SNI host (exact, or C{*.example.com}); None = not SNI-routed.
    sni_pattern: str | None = None
    #: This rule is the fallback of an SNI-routed port (no pattern matched).
    sni_fallback: bool = False
    #: Expect a PROXY v1/v2 header from clients in C{trusted_sources}.
    accept_proxy_protocol: bool = False
    trusted_sources: tuple[str, ...] = attrs.field(default=(), converter=_address_tuple)
    rate_limit: RateLimit | None = None
    #: Whether targets may be local (loopback, link-local, the host's own
    #: addresses).  A tenant's rule without a grant that allows them is
    #: pushed with C{False}: the edge then refuses such an address even
    #: when a host name resolves to it.
    allow_local_targets: bool = True
    id: int = attrs.field()

    @id.default
    def _default_id(self) -> int:
        return rule_id_for_name(self.name)

    def __attrs_post_init__(self) -> None:
        if not self.targets:
            raise ValueError(f"rule {self.name!r} has no targets")
        for target in self.targets:
            if len(target.ports) not in (1, len(self.listen)) or (
                len(target.ports) == 1 and len(self.listen) > 1
            ):
                raise ValueError(
                    f"rule {self.name!r}: listen has {len(self.listen)} ports, "
                    f"target {target.display()} has {len(target.ports)}"
                )

    def target_port(self, target: Target, listen_port: int) -> int:
        """The target port for a connection that arrived on C{listen_port}."""
        if listen_port not in self.listen:
            raise ValueError(f"port {listen_port} is not one of rule {self.name!r}'s ports")
        return target.ports.start + (listen_port - self.listen.start)

    def targets_by_priority(self) -> tuple[Target, ...]:
        """Targets in dial order: lower priority first, ties by config order."""
        return tuple(sorted(self.targets, key=lambda t: t.priority))
