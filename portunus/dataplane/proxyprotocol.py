"""
The PROXY protocol (HAProxy's v1 text and v2 binary headers), both ways.

Send side: a target with C{proxy_protocol = "v1" | "v2"} gets a header
naming the real client before any client byte, so it can log and filter by
the client's address instead of the forwarder's (L{encode_header}).

Accept side: a rule with C{accept_proxy_protocol} sits behind a load
balancer that sends such a header.  Only peers in the rule's
C{trusted_sources} may (and must) send one; the relay checks the peer
(L{TrustedSources.check}), feeds the first bytes to a L{ProxyHeaderReader}
and from then on uses the client address the header names.  Any refusal is
a L{ProxyHeaderRejected} with a stable reason, which the relay logs as
C{rule.proxy_header_rejected} before dropping the connection.

Everything here is sans-IO: no sockets, no clock.  The relay owns both
timeouts (L{HEADER_READ_TIMEOUT_SECS}, L{PRELUDE_WRITE_TIMEOUT_SECS}).

Twisted ships a parser (C{twisted.protocols.haproxy}), but it cannot be fed
fewer than 16 bytes of a v2 header, does not validate addresses or ports and
does not tell a missing header from a broken one, which is what operators
need in the log.  The format is small enough to parse strictly here.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterable
from typing import Final, Literal

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

from portunus.model import ProxyProtocolVersion

__all__ = [
    "HEADER_READ_TIMEOUT_SECS",
    "HEADER_TIMEOUT",
    "MALFORMED_HEADER",
    "MISSING_HEADER",
    "PRELUDE_WRITE_TIMEOUT_SECS",
    "REJECTED_EVENT",
    "UNTRUSTED_SOURCE",
    "V1_MAX_HEADER",
    "V2_MAX_HEADER",
    "V2_SIGNATURE",
    "ProxyHeaderReader",
    "ProxyHeaderRejected",
    "ProxyHeaderResult",
    "ProxyProtocolError",
    "RejectReason",
    "TrustedSources",
    "encode_header",
    "encode_v1",
    "encode_v2",
    "header_for_connection",
]

#: Seconds the header may take to leave for the target (Portunus'
#: C{proxy_protocol_prelude_write_timeout}).  A header is 28 to 107 bytes and
#: always fits an empty socket buffer, so a write still pending after this
#: long means the target accepted and then stopped reading: the dial counts
#: as a target failure instead of pinning the client to a wedged backend.
PRELUDE_WRITE_TIMEOUT_SECS: Final = 10.0

#: Seconds a trusted peer has to deliver its whole header.  Load balancers
#: write it at once on connect, in the same segment as (or before) the first
#: client byte, so a slow header is a broken or hostile peer, not a slow
#: client.  The bound keeps such connections from holding slots
#: (slowloris) and matches the SNI peek timeout.  Reading the header comes
#: before dialling the target, so server-first protocols (SMTP, MySQL) see
#: their banner delayed by at most this much, and only from a broken peer.
HEADER_READ_TIMEOUT_SECS: Final = 3.0

#: The event the relay logs for every rejection, with C{reason} and C{peer}.
REJECTED_EVENT: Final = "rule.proxy_header_rejected"

RejectReason = Literal["untrusted_source", "missing_header", "malformed_header", "header_timeout"]
UNTRUSTED_SOURCE: Final = "untrusted_source"
MISSING_HEADER: Final = "missing_header"
MALFORMED_HEADER: Final = "malformed_header"
HEADER_TIMEOUT: Final = "header_timeout"

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX: Final = b"PROXY "
#: The longest v1 line, CRLF included ("PROXY UNKNOWN" plus two full IPv6
#: addresses and ports), per the HAProxy specification.
V1_MAX_HEADER: Final = 107
#: 16 fixed bytes plus the largest 16-bit length; TLVs inside are skipped.
V2_MAX_HEADER: Final = 16 + 0xFFFF

_V2_FIXED = 16
_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_V2_ADDRESS_LENGTHS = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyProtocolError(ValueError):
    """A header that cannot be written for these addresses."""


class ProxyHeaderRejected(Exception):
    """
    A connection the accept side refuses.  C{reason} is stable (log field,
    metric label); C{detail} says what was wrong for the operator.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail


def _normalize(host: str, port: int, role: str) -> tuple[_IP, int]:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ProxyProtocolError(
            f"{role} {host!r} is not an IP address; a PROXY header carries addresses only"
        ) from None
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ProxyProtocolError(f"{role} port {port!r} is not in 0..65535")
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        # Also drops any scope id, which has no place in a header.
        address = mapped if mapped is not None else ipaddress.IPv6Address(address.packed)
    return address, port


def _pair(
    source: tuple[str, int], destination: tuple[str, int]
) -> tuple[tuple[_IP, int], tuple[_IP, int]]:
    """
    Both ends in one family.  A dual-stack listener reports IPv4 clients as
    C{::ffff:a.b.c.d}; those become plain IPv4 so the header says TCP4.
    """
    src = _normalize(*source, role="source")
    dst = _normalize(*destination, role="destination")
    if src[0].version != dst[0].version:
        raise ProxyProtocolError(
            f"source {src[0]} is IPv{src[0].version} but destination {dst[0]} is "
            f"IPv{dst[0].version}; a PROXY header needs both in one family"
        )
    return src, dst


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The text header: C{PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n}."""
    (src, sport), (dst, dport) = _pair(source, destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def encode_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The binary header: 28 bytes for IPv4, 52 for IPv6, no TLVs."""
    (src, sport), (dst, dport) = _pair(source, destination)
    family = _V2_TCP4 if src.version == 4 else _V2_TCP6
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


def encode_header(
    version: ProxyProtocolVersion,
    source: tuple[str, int],
    destination: tuple[str, int],
) -> bytes:
    """
    The header a target configured with C{version} expects.  C{source} is
    the client (the accepted socket's peer, or the address a trusted load
    balancer named); C{destination} is the address it connected to.  Raises
    L{ProxyProtocolError} if they are not IP addresses of one family.
    """
    if version is ProxyProtocolVersion.V1:
        return encode_v1(source, destination)
    return encode_v2(source, destination)


def header_for_connection(version: ProxyProtocolVersion, peer: IAddress, host: IAddress) -> bytes:
    """L{encode_header} for an accepted transport's C{getPeer()} and C{getHost()}."""
    ends: list[tuple[str, int]] = []
    for role, address in (("peer", peer), ("local", host)):
        if not isinstance(address, IPv4Address | IPv6Address):
            raise ProxyProtocolError(f"{role} address {address} is not an IP address")
        ends.append((address.host, address.port))
    return encode_header(version, ends[0], ends[1])


@attrs.frozen
class ProxyHeaderResult:
    """
    A complete header.  C{source} is None when the header says to keep the
    real peer address: a v2 LOCAL command (a load balancer's own health
    check), v1 C{UNKNOWN}, or a family other than TCP over IPv4/IPv6.
    """

    version: ProxyProtocolVersion
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    #: Client bytes that followed the header; the relay forwards them first.
    remaining: bytes
    header_length: int

    @property
    def local(self) -> bool:
        return self.source is None


def _malformed(detail: str) -> ProxyHeaderRejected:
    return ProxyHeaderRejected(MALFORMED_HEADER, detail)


def _shown(data: bytes) -> str:
    return repr(data[:48])[2:-1] + ("..." if len(data) > 48 else "")


class ProxyHeaderReader:
    """
    Reads one v1 or v2 header, told apart by its first bytes, from the
    start of a connection.  Feed it every chunk until it returns a result;
    C{None} means more bytes are needed.  Every refusal raises
    L{ProxyHeaderRejected} and is sticky: later calls raise it again.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._version: ProxyProtocolVersion | None = None
        self._rejected: ProxyHeaderRejected | None = None
        self._done = False

    @property
    def received(self) -> int:
        """Bytes taken so far (for logs)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> ProxyHeaderResult | None:
        if self._rejected is not None:
            raise self._rejected
        if self._done:
            raise RuntimeError("the header was already read; relay later bytes directly")
        self._buffer += data
        try:
            result = self._parse()
        except ProxyHeaderRejected as e:
            self._rejected = e
            raise
        if result is not None:
            self._done = True
            self._buffer = bytearray()
        return result

    def timed_out(self) -> ProxyHeaderRejected:
        """The rejection to log when L{HEADER_READ_TIMEOUT_SECS} elapse first."""
        self._rejected = ProxyHeaderRejected(
            HEADER_TIMEOUT,
            f"no complete PROXY header within {HEADER_READ_TIMEOUT_SECS:g} s "
            f"({self.received} bytes received)",
        )
        return self._rejected

    def connection_lost(self) -> ProxyHeaderRejected | None:
        """
        The rejection to log when the peer closes before its header is
        complete; None when it sent nothing at all, as load balancers' plain
        TCP health checks do, which is not worth a log line.
        """
        if self._done or self._rejected is not None or not self._buffer:
            return None
        if self._version is None:
            self._rejected = ProxyHeaderRejected(
                MISSING_HEADER,
                f"peer closed after {self.received} bytes that do not start a PROXY header",
            )
        else:
            self._rejected = _malformed(
                f"peer closed in the middle of a PROXY {self._version.value} header "
                f"({self.received} bytes received)"
            )
        return self._rejected

    def _parse(self) -> ProxyHeaderResult | None:
        if self._version is None:
            self._version = self._detect()
            if self._version is None:
                return None
        if self._version is ProxyProtocolVersion.V1:
            return self._parse_v1()
        return self._parse_v2()

    def _detect(self) -> ProxyProtocolVersion | None:
        head = bytes(self._buffer[: len(V2_SIGNATURE)])
        for version, signature in (
            (ProxyProtocolVersion.V1, _V1_PREFIX),
            (ProxyProtocolVersion.V2, V2_SIGNATURE),
        ):
            if head.startswith(signature):
                return version
            if signature.startswith(head):
                return None
        raise ProxyHeaderRejected(
            MISSING_HEADER,
            f"connection starts with '{_shown(head)}', not a PROXY v1 or v2 header",
        )

    def _parse_v1(self) -> ProxyHeaderResult | None:
        end = self._buffer.find(b"\r\n", 0, V1_MAX_HEADER)
        if end < 0:
            if len(self._buffer) >= V1_MAX_HEADER:
                raise _malformed(f"PROXY v1 line has no CRLF within {V1_MAX_HEADER} bytes")
            return None
        line = bytes(self._buffer[:end])
        remaining = bytes(self._buffer[end + 2 :])
        fields = line.split(b" ")
        if fields[1:2] == [b"UNKNOWN"]:
            return ProxyHeaderResult(ProxyProtocolVersion.V1, None, None, remaining, end + 2)
        if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
            raise _malformed(
                f"PROXY v1 line '{_shown(line)}' is not "
                "'PROXY TCP4|TCP6 <src> <dst> <sport> <dport>'"
            )
        want: type[_IP] = ipaddress.IPv4Address if fields[1] == b"TCP4" else ipaddress.IPv6Address
        ends: list[tuple[str, int]] = []
        for raw_host, raw_port in ((fields[2], fields[4]), (fields[3], fields[5])):
            try:
                if b"%" in raw_host:
                    raise ValueError("scoped")
                host = want(raw_host.decode("ascii"))
            except ValueError:
                raise _malformed(
                    f"PROXY v1 address '{_shown(raw_host)}' is not an "
                    f"IPv{4 if fields[1] == b'TCP4' else 6} address"
                ) from None
            if not _PORT.fullmatch(raw_port) or int(raw_port) > 0xFFFF:
                raise _malformed(f"PROXY v1 port '{_shown(raw_port)}' is not in 0..65535")
            ends.append((str(host), int(raw_port)))
        return ProxyHeaderResult(ProxyProtocolVersion.V1, ends[0], ends[1], remaining, end + 2)

    def _parse_v2(self) -> ProxyHeaderResult | None:
        if len(self._buffer) < _V2_FIXED:
            return None
        version_command, family, length = struct.unpack_from("!BBH", self._buffer, 12)
        if version_command not in (_V2_LOCAL, _V2_PROXY):
            raise _malformed(
                f"PROXY v2 version/command byte is {version_command:#04x}; "
                "expected 0x20 (LOCAL) or 0x21 (PROXY)"
            )
        address_family, transport = family >> 4, family & 0x0F
        if address_family not in _V2_ADDRESS_LENGTHS or transport > 2:
            raise _malformed(f"PROXY v2 family byte {family:#04x} is undefined")
        is_local = version_command == _V2_LOCAL
        if not is_local and length < _V2_ADDRESS_LENGTHS[address_family]:
            raise _malformed(
                f"PROXY v2 length {length} is too short for the addresses of family {family:#04x}"
            )
        size = _V2_FIXED + length
        if len(self._buffer) < size:
            return None
        remaining = bytes(self._buffer[size:])
        if is_local or family not in (_V2_TCP4, _V2_TCP6):
            return ProxyHeaderResult(ProxyProtocolVersion.V2, None, None, remaining, size)
        width = 4 if family == _V2_TCP4 else 16
        body = bytes(self._buffer[_V2_FIXED : _V2_FIXED + 2 * width + 4])
        src = ipaddress.ip_address(body[:width])
        dst = ipaddress.ip_address(body[width : 2 * width])
        sport, dport = struct.unpack_from("!HH", body, 2 * width)
        return ProxyHeaderResult(
            ProxyProtocolVersion.V2, (str(src), sport), (str(dst), dport), remaining, size
        )


def _network(entry: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(entry, str):
        raise ValueError(
            f"trusted_sources entry {entry!r} is not a string; write CIDRs as "
            'strings, e.g. "10.0.0.0/8"'
        )
    text = entry.strip()
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"trusted_sources entry '{text}' is not an address or CIDR; write e.g. "
                '"10.0.0.0/8", "192.0.2.10" or "2001:db8::/32"'
            ) from None
        raise ValueError(
            f"trusted_sources entry '{text}' has host bits set; write '{loose}' "
            f"for the whole network or '{text.split('/')[0]}' for one host"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


@attrs.frozen
class TrustedSources:
    """The load balancers a rule accepts PROXY headers from."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, cidrs: Iterable[str]) -> TrustedSources:
        """
        Parse CIDRs or bare addresses (one host).  Raises C{ValueError}
        naming the first bad entry and how to write it.
        """
        return cls(tuple(_network(entry) for entry in cidrs))

    def contains(self, host: str) -> bool:
        """
        Whether a peer address is trusted.  A dual-stack listener reports
        IPv4 peers as C{::ffff:a.b.c.d}; those match IPv4 networks.
        """
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def check(self, host: str) -> None:
        """
        Refuse an untrusted peer before reading anything: on a rule that
        accepts PROXY headers every connection must come through a trusted
        load balancer, or anyone could claim any client address.
        """
        if not self.contains(host):
            raise ProxyHeaderRejected(
                UNTRUSTED_SOURCE,
                f"peer {host} is not in trusted_sources; add its network to the rule "
                "or connect through the load balancer",
            )
