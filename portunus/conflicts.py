"""
One rule-conflict model: whether two rules can be installed on one host
side by side, and if not, why.  The server asks it before it stores a
pushed rule (against the client's other rules); the standalone config
parser asks it for every pair of rules in the file.  Both therefore refuse
the same pairs, with the same codes and wording.

Two rules conflict only when they would contend for a socket the data
plane binds:

  - the same protocol (a TCP and a UDP rule never meet);
  - overlapping listen ports (single ports and ranges alike);
  - overlapping listen addresses: equal, or one is the wildcard of the
    other's family (C{0.0.0.0} takes every IPv4 address, C{::} every IPv6
    one).  The data plane binds IPv6 C{IPV6_V6ONLY}, so C{::} and IPv4
    addresses never meet (see L{portunus.addresses.addresses_overlap}).

Such a pair is refused with C{port_in_use}, unless both are SNI-routed
rules, which share one listener per port and address list: there distinct
patterns (an exact name and a wildcard covering it included: the exact
one wins a lookup) and one fallback coexist.  SNI rules on one port
conflict when they list different addresses that overlap (the second
listener could not bind: C{port_in_use}), repeat a route
(C{conflict.sni_route_duplicate}), add a second fallback
(C{conflict.sni_fallback_duplicate}), or disagree on
C{accept_proxy_protocol} (the listener reads PROXY headers for all of
them or for none: C{conflict.sni_proxy_protocol_mismatch}).  An SNI rule
and a plain rule on one socket is C{conflict.legacy_to_sni_unsupported}.

Rules are compared as they were validated: an SNI pattern is already in
its normal form (L{portunus.dataplane.sni.normalize_sni_pattern}).
"""

from __future__ import annotations

import attrs

from portunus.addresses import addresses_overlap
from portunus.dataplane.sni import (
    LEGACY_TO_SNI_UNSUPPORTED,
    SNI_FALLBACK_DUPLICATE,
    SNI_ROUTE_DUPLICATE,
)
from portunus.model import PortRange, Protocol, Rule

__all__ = [
    "PORT_IN_USE",
    "SNI_PROXY_PROTOCOL_MISMATCH",
    "Claim",
    "Conflict",
    "find_conflict",
]

PORT_IN_USE = "port_in_use"
SNI_PROXY_PROTOCOL_MISMATCH = "conflict.sni_proxy_protocol_mismatch"


@attrs.frozen
class Claim:
    """
    What a rule takes on its host: the part of it conflicts depend on.
    A config parser can build one for a rule whose other fields are wrong.
    """

    protocol: Protocol
    ports: PortRange
    addresses: tuple[str, ...]
    sni_pattern: str | None = None
    sni_fallback: bool = False
    accept_proxy_protocol: bool = False

    @classmethod
    def of(cls, rule: Rule) -> Claim:
        return cls(
            rule.protocol,
            rule.listen,
            rule.listen_addresses,
            rule.sni_pattern,
            rule.sni_fallback,
            rule.accept_proxy_protocol,
        )

    @property
    def sni(self) -> bool:
        """Routed by TLS SNI: shares its port's listener with other SNI rules."""
        return self.sni_pattern is not None or self.sni_fallback

    @property
    def sni_key(self) -> str:
        """The key that makes it SNI-routed."""
        return "sni_fallback" if self.sni_fallback else "sni_pattern"


@attrs.frozen
class Conflict:
    """
    Why a rule (the later one) cannot join another.

    @ivar field: the later rule's key at fault: C{listen} (its ports,
        however the surface spells that key), C{listen_addresses},
        C{sni_pattern}, C{sni_fallback} or C{accept_proxy_protocol}.
    @ivar port: the first port the two share.
    @ivar addresses: the overlapping (later rule's, other rule's) addresses.
    """

    code: str
    field: str
    claim: Claim
    other: Claim
    port: int
    addresses: tuple[str, str]

    def message(self, owner: str) -> str:
        """What is wrong and how to fix it; C{owner} names the other rule (C{rule 'web'})."""
        mine, theirs = self.addresses
        where = f"on {mine}" if mine == theirs else f"on {mine} ({theirs} there)"
        port = self.port
        if self.code == PORT_IN_USE and self.field == "listen_addresses":
            return (
                f"{owner} routes SNI on port {port} on other listen_addresses "
                f"({', '.join(self.other.addresses)}); SNI rules sharing a port must list "
                "the same listen_addresses"
            )
        if self.code == PORT_IN_USE:
            return (
                f"port {port} is already used by {owner}, {self.claim.protocol.value} {where}; "
                f"pick ports outside {self.other.ports} or give the rules different "
                "listen_addresses"
            )
        if self.code == LEGACY_TO_SNI_UNSUPPORTED and self.claim.sni:
            return (
                f"port {port} is used by {owner}, which is not SNI-routed; give that rule an "
                "sni_pattern or sni_fallback = true, or use another port"
            )
        if self.code == LEGACY_TO_SNI_UNSUPPORTED:
            return (
                f"port {port} is SNI-routed by {owner}; a rule without sni_pattern cannot "
                "share it: set sni_pattern, make it the port's sni_fallback = true, or use "
                "another port"
            )
        if self.code == SNI_FALLBACK_DUPLICATE:
            return (
                f"port {port} already has a fallback, {owner}; keep sni_fallback = true on "
                "one rule only"
            )
        if self.code == SNI_ROUTE_DUPLICATE:
            return (
                f"{owner} already routes '{self.claim.sni_pattern}' on port {port}; remove one "
                "of them or change its sni_pattern"
            )
        return (
            f"{owner} on SNI port {port} "
            f"{'does not accept' if self.claim.accept_proxy_protocol else 'accepts'} PROXY "
            "headers; rules sharing an SNI port must all set accept_proxy_protocol, or none"
        )


def _shared_address(claim: Claim, other: Claim) -> tuple[str, str] | None:
    return next(
        (
            (mine, theirs)
            for mine in claim.addresses
            for theirs in other.addresses
            if addresses_overlap(mine, theirs)
        ),
        None,
    )


def find_conflict(claim: Claim, other: Claim) -> Conflict | None:
    """Why C{claim} cannot be installed where C{other} already is, or C{None}."""
    if claim.protocol is not other.protocol or not claim.ports.overlaps(other.ports):
        return None
    shared = _shared_address(claim, other)
    if shared is None:
        return None
    code, field = _verdict(claim, other)
    if code is None:
        return None
    port = max(claim.ports.start, other.ports.start)
    return Conflict(code, field, claim, other, port, shared)


def _verdict(claim: Claim, other: Claim) -> tuple[str | None, str]:
    """The code and the later rule's field at fault, for two rules on one socket."""
    if not claim.sni and not other.sni:
        return PORT_IN_USE, "listen"
    if not claim.sni:
        return LEGACY_TO_SNI_UNSUPPORTED, "listen"
    if not other.sni:
        return LEGACY_TO_SNI_UNSUPPORTED, claim.sni_key
    if claim.addresses != other.addresses:
        return PORT_IN_USE, "listen_addresses"
    if claim.sni_fallback and other.sni_fallback:
        return SNI_FALLBACK_DUPLICATE, "sni_fallback"
    if claim.sni_pattern is not None and claim.sni_pattern == other.sni_pattern:
        return SNI_ROUTE_DUPLICATE, "sni_pattern"
    if claim.accept_proxy_protocol != other.accept_proxy_protocol:
        return SNI_PROXY_PROTOCOL_MISMATCH, "accept_proxy_protocol"
    return None, ""
