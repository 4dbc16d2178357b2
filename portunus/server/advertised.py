"""
Where edges are told to dial: the C{host:port} enrollment URIs name
(reference inventory §3.9).

Strongest first: the override an operator set through the API (kept in
the store's server settings), the seed (C{advertised_endpoint} in
C{server.toml}, C{PORTUNUS_ADVERTISED_ENDPOINT} or C{--advertised-endpoint}),
then C{127.0.0.1:<control port>}, which only edges on the server's own
machine can reach.

An override must name a host the server certificate covers, matched as
webpki does: DNS names case-insensitively, a wildcard C{*.example.com}
covering exactly one left-most label, an IP address only through an IP
SAN.  Edges pin the certificate's fingerprint and do not check names, so
this is about keeping the certificate and the address operators hand out
in agreement, as Portunus requires, not about making the handshake pass.

Pure functions over text and the certificate's names: no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs

from portunus.errors import PortunusError
from portunus.server.settings import parse_advertised_endpoint

__all__ = ["CertificateNames", "check_override", "describe", "host_covered"]

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen
class CertificateNames:
    """The subject alternative names of the server certificate."""

    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[_IP, ...] = ()

    def __str__(self) -> str:
        names = [*self.dns_names, *(str(ip) for ip in self.ip_addresses)]
        return ", ".join(names) if names else "no names at all"

    def to_json(self) -> list[str]:
        return [*self.dns_names, *(str(ip) for ip in self.ip_addresses)]


def _dns_match(host: str, pattern: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        suffix = pattern[1:]
        label = host[: -len(suffix)] if host.endswith(suffix) else ""
        return bool(label) and "." not in label
    return host == pattern


def host_covered(host: str, names: CertificateNames) -> bool:
    """Whether a certificate with C{names} is valid for C{host} (no brackets)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".")
        return any(_dns_match(name, pattern) for pattern in names.dns_names)
    return ip in names.ip_addresses


def check_override(text: str, control_port: int, names: CertificateNames) -> str:
    """
    The C{host:port} to store for an override an operator typed: a bare
    host gets the control port.

    @raise PortunusError: C{endpoint_invalid} for anything that is not a
        bare C{host[:port]}, C{endpoint_not_in_cert_san} for a host the
        certificate does not name (the error lists the names it does).
    """
    try:
        endpoint = parse_advertised_endpoint(text)
    except ValueError as e:
        raise PortunusError(
            "endpoint_invalid", f"advertised_endpoint: {e}", field="advertised_endpoint"
        ) from None
    if not host_covered(endpoint.host, names):
        raise PortunusError(
            "endpoint_not_in_cert_san",
            f"the server certificate does not name {endpoint.host} (it names {names}); "
            "use one of those names, or install a certificate that names this host "
            "(tls_cert_path, tls_key_path) and restart",
            field="advertised_endpoint",
            host=endpoint.host,
            cert_sans=names.to_json(),
        )
    return endpoint.with_port(control_port)


def describe(
    override: str | None,
    seed: str | None,
    control_port: int,
    names: CertificateNames,
) -> dict[str, Any]:
    """
    The answer of C{GET /v1/settings/advertised-endpoint}: the override,
    the endpoint in effect, where it comes from, and what an operator
    should know about it (C{None} when all is well).
    """
    diagnostic: str | None = None
    if override:
        effective, source = override, "override"
    elif seed:
        effective, source = seed, "seed"
    else:
        effective, source = f"127.0.0.1:{control_port}", "loopback"
        diagnostic = (
            f"no advertised endpoint is set, so enrollment URIs name {effective}, which only "
            "edges on this machine can reach; set one with PUT "
            "/v1/settings/advertised-endpoint (or --advertised-endpoint)"
        )
    if source != "loopback":
        host = parse_advertised_endpoint(effective).host
        if not host_covered(host, names):
            diagnostic = (
                f"the {source} names {host}, which the server certificate does not "
                f"(it names {names}); set a host it names"
            )
    return {
        "override": override,
        "effective": effective,
        "source": source,
        "diagnostic": diagnostic,
        "cert_sans": names.to_json(),
    }
