"""
One grammar for hosts and C{host:port}: how every surface splits, checks,
writes and compares them.

  - L{split_host_port} reads C{host:port}, C{host}, C{[v6]:port} and
    C{[v6]}: an IPv6 address goes in brackets (unbracketed it would be
    ambiguous with the port), and only an IPv6 address may.
  - L{parse_port} reads a port number; L{is_host_name} and
    L{host_problem} judge a host.
  - L{format_host_port} writes C{host:port} back, an IPv6 host in brackets.
  - L{addresses_overlap} says whether two listen addresses contend for the
    same port.

Each problem is worded once here; a caller adds what to write instead
(C{"; write it as host:port, e.g. ..."}), since that depends on the
surface.  A leaf module: it imports nothing from Portunus but the bounds.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from typing import Final, Literal

import attrs

from portunus.bounds import PORT

__all__ = [
    "AddressError",
    "HostPort",
    "addresses_overlap",
    "bracket",
    "format_host_port",
    "host_problem",
    "ip_version",
    "is_host_name",
    "is_local_address",
    "is_local_name",
    "local_form",
    "parse_port",
    "reaches_listener",
    "split_host_port",
    "unbracket",
]

_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
#: Docker and Compose service names may hold underscores.
_LABEL_UNDERSCORE: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# ASCII digits only (a bare isdigit() would take "٨٠"), at most five.
_PORT_TEXT: Final = re.compile(r"[0-9]{1,5}")


def _shown(text: str) -> str:
    """User text as a message may echo it: one line, whatever it holds."""
    return text if text.isprintable() else repr(text)[1:-1]


class AddressError(ValueError):
    """
    Text that is not a usable address; the message says what is wrong.

    @ivar part: C{"host"} or C{"port"}, whichever is at fault.
    """

    def __init__(self, part: Literal["host", "port"], message: str) -> None:
        super().__init__(message)
        self.part = part


@attrs.frozen
class HostPort:
    """
    C{host:port} split, nothing else checked but the brackets.

    @ivar host: without brackets; a bracketed host is an IPv6 literal.
    @ivar port: the text after the colon, C{None} when there is none.
    @ivar bracketed: the host was written in brackets.
    """

    host: str
    port: str | None
    bracketed: bool


def ip_version(text: str) -> int | None:
    """4 or 6 for an IP literal, C{None} for anything else."""
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def split_host_port(text: str, *, bare_ipv6: bool = False) -> HostPort:
    """
    Split C{text} (already stripped) into host and port.

    @param bare_ipv6: an unbracketed text with several colons is an IPv6
        address without a port (a nameserver), rather than a mistake.
    @raise AddressError: a C{[} without C{]}, text after C{]} that is not
        C{:port}, something other than an IPv6 address in brackets, or an
        unbracketed IPv6 address followed by a port.
    """
    if text.startswith("["):
        close = text.find("]")
        if close == -1:
            raise AddressError("host", f"'{_shown(text)}' has '[' without ']'")
        host, rest = text[1:close], text[close + 1 :]
        if ip_version(host) != 6:
            raise AddressError(
                "host",
                f"'{_shown(host)}' is in brackets but is not an IPv6 address; brackets are "
                "only for IPv6 addresses",
            )
        if not rest:
            return HostPort(host, None, True)
        if not rest.startswith(":"):
            raise AddressError("port", f"'{_shown(text)}' has text after ']' that is not :port")
        return HostPort(host, rest[1:], True)
    if text.count(":") > 1:
        if bare_ipv6 and ip_version(text) == 6:
            return HostPort(text, None, False)
        host, _, port = text.rpartition(":")
        fix = (
            f'"[{host}]:{port}"'
            if ip_version(host) == 6 and _PORT_TEXT.fullmatch(port)
            else "[address]:port"
        )
        raise AddressError(
            "host",
            f"'{_shown(text)}' looks like an IPv6 address without brackets; write it as {fix}",
        )
    host, sep, port = text.partition(":")
    return HostPort(host, port if sep else None, False)


def parse_port(text: str) -> int:
    """
    A port number written in ASCII digits, within L{PORT}.

    @raise AddressError: with the C{port} part at fault.
    """
    if not _PORT_TEXT.fullmatch(text):
        raise AddressError("port", f"the port '{_shown(text)}' is not a number from {PORT.span()}")
    port = int(text)
    if port not in PORT:
        raise AddressError("port", f"the port {port} is out of range; use {PORT.span()}")
    return port


def is_host_name(host: str, allow_underscore: bool = False) -> bool:
    """
    Whether C{host} is an RFC 1123 host name (one trailing dot allowed).
    An all-numeric dotted name ("999.1.1.1") is refused: it is always a
    mistyped address, never a name.
    """
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    label = _LABEL_UNDERSCORE if allow_underscore else _LABEL
    labels = name.split(".")
    if not all(label.fullmatch(part) for part in labels):
        return False
    return not all(part.isdigit() for part in labels)


def host_problem(host: str, allow_underscore: bool = False) -> str | None:
    """Why C{host} (unbracketed) is neither an IP literal nor a host name, or C{None}."""
    if not host:
        return "the host is empty"
    if ip_version(host) is not None or is_host_name(host, allow_underscore):
        return None
    underscores = ", underscores" if allow_underscore else ""
    return (
        f"'{_shown(host)}' is neither an IP address nor a valid host name "
        f"(letters, digits{underscores} and hyphens in dot-separated labels of up to 63 "
        "characters)"
    )


def bracket(host: str) -> str:
    """C{host} as it stands before C{:port}: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def unbracket(host: str) -> str:
    """C{[2001:db8::1]} without its brackets; anything else as it is."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def format_host_port(host: str, port: object) -> str:
    """C{host:port} (the port may be a number, a range or text), IPv6 in brackets."""
    return f"{bracket(host)}:{port}"


def addresses_overlap(a: str, b: str, *, dual_stack: bool = False) -> bool:
    """
    Whether listening on C{a} and on C{b} contends for the same port.

    The unspecified address (C{0.0.0.0}, C{::}) takes every address of its
    family.  The data plane binds IPv6 sockets C{IPV6_V6ONLY}, so there
    C{::} and IPv4 addresses never meet; Twisted's own listeners (the
    server's) leave C{::} dual-stack, which C{dual_stack=True} models: C{::}
    then takes every IPv4 address too.  Text that is not an IP literal only
    overlaps itself.
    """
    try:
        ia = ipaddress.ip_address(a)
        ib = ipaddress.ip_address(b)
    except ValueError:
        return a == b
    if ia == ib:
        return True
    for wide, other in ((ia, ib), (ib, ia)):
        if wide.is_unspecified and (
            wide.version == other.version or (dual_stack and wide.version == 6)
        ):
            return True
    return False


def is_local_name(host: str) -> bool:
    """
    C{localhost} and the names under it (RFC 6761): every resolver answers
    them with a loopback address, so they are local without asking one.
    """
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def local_form(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    The address a connection to C{text} really reaches, for the local
    checks: an IPv4-mapped IPv6 address is its IPv4 address, and the
    unspecified address (C{0.0.0.0}, C{::}) is loopback, where the kernel
    sends it.  C{None} for text that is not an IP literal (a scope such as
    C{%eth0} is dropped).
    """
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
    return address


def is_local_address(text: str, own: Collection[str] = ()) -> bool:
    """
    Whether a connection to the IP literal C{text} stays on this host or
    its link: loopback, link-local (C{169.254.0.0/16}, C{fe80::/10}, where
    cloud metadata services live), the unspecified address, or one of
    C{own} (the host's interface addresses, as L{local_form} writes them).
    Text that is not an IP literal is not (names are judged once resolved).
    """
    address = local_form(text)
    if address is None:
        return False
    return address.is_loopback or address.is_link_local or str(address) in own


def reaches_listener(target: str, listen_addresses: Iterable[str], own: Collection[str]) -> bool:
    """
    Whether connecting from this host to the IP literal C{target} lands on
    a socket listening on one of C{listen_addresses} (same port assumed):
    the same address, or a listener on the unspecified address of the
    target's family when the target is local (loopback or one of C{own}).
    """
    address = local_form(target)
    if address is None:
        return False
    local = address.is_loopback or str(address) in own
    for text in listen_addresses:
        try:
            listener = ipaddress.ip_address(text)
        except ValueError:
            continue
        if listener == address:
            return True
        if listener.is_unspecified and listener.version == address.version and local:
            return True
    return False
