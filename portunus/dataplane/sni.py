"""
TLS SNI routing: pick a rule by the host name a client asks for, without
terminating TLS.

Several TCP rules may share one listen port when each names a host
(C{sni_pattern}) or is that port's fallback (C{sni_fallback}).  The relay
feeds the first bytes of each connection to a L{ClientHelloParser}, looks
the name up in the port's L{SniRouteTable} and replays every captured byte
verbatim to the chosen target, which does the real handshake.

Everything here is sans-IO: no sockets, no clock.  The relay owns the peek
timeout (L{PEEK_TIMEOUT_SECS}) and the parser enforces the byte cap
(L{PEEK_MAX_BYTES}).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Generic, Literal, TypeVar

import attrs

__all__ = [
    "CLIENT_HELLO_MAX_BODY",
    "LEGACY_TO_SNI_UNSUPPORTED",
    "PEEK_MAX_BYTES",
    "PEEK_TIMEOUT_SECS",
    "SNI_FALLBACK_DUPLICATE",
    "SNI_ON_UNSUPPORTED_RULE",
    "SNI_PATTERN_MALFORMED",
    "SNI_ROUTE_DUPLICATE",
    "ClientHelloError",
    "ClientHelloFailure",
    "ClientHelloParser",
    "ClientHelloResult",
    "MatchKind",
    "SniCounters",
    "SniError",
    "SniRouteTable",
    "normalize_sni_pattern",
]

#: Seconds a client has to finish its ClientHello before the relay drops it.
PEEK_TIMEOUT_SECS = 3.0
#: Bytes captured while waiting for a complete ClientHello.
PEEK_MAX_BYTES = 65536
#: Largest ClientHello handshake body accepted (real ones are well under 2 KiB).
CLIENT_HELLO_MAX_BODY = 16384

T = TypeVar("T")

MatchKind = Literal["exact", "wildcard", "fallback"]

#: Stable error codes (reference inventory section 4.8).
SNI_PATTERN_MALFORMED = "validation.sni_pattern_malformed"
SNI_ON_UNSUPPORTED_RULE = "validation.sni_on_unsupported_rule"
SNI_ROUTE_DUPLICATE = "conflict.sni_route_duplicate"
SNI_FALLBACK_DUPLICATE = "conflict.sni_fallback_duplicate"
LEGACY_TO_SNI_UNSUPPORTED = "conflict.legacy_to_sni_unsupported"

_MAX_NAME = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_LABEL_CHARS = re.compile(r"[a-z0-9-]+")


class SniError(ValueError):
    """A pattern or a set of SNI rules that cannot be used, with a stable code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


def _show(text: str) -> str:
    """User text as it may be echoed: one printable line, whatever it holds."""
    return text if text.isprintable() else repr(text)[1:-1]


def _malformed(pattern: str, why: str) -> SniError:
    return SniError(SNI_PATTERN_MALFORMED, f"'{_show(pattern)}' {why}")


def normalize_sni_pattern(text: str) -> str:
    """
    The canonical form of an SNI pattern: an exact host name, or C{*.} and a
    parent of at least two labels.  Raises L{SniError} with code
    C{validation.sni_pattern_malformed} and a message saying how to fix it.
    """
    pattern = text.strip().lower()
    if not pattern:
        raise _malformed(pattern, 'is empty; write a host such as "app.example.com"')
    if len(pattern) > _MAX_NAME:
        raise _malformed(
            pattern[:40] + "...",
            f"is {len(pattern)} characters long; a host name has at most {_MAX_NAME}",
        )
    wildcard = pattern.startswith("*.")
    body = pattern[2:] if wildcard else pattern
    if not body:
        raise _malformed(pattern, 'has nothing after "*."; write e.g. "*.example.com"')
    if "*" in body:
        raise _malformed(
            pattern,
            "has a wildcard that is not the whole first label; only a leading "
            '"*." is allowed, as in "*.example.com"',
        )
    if not pattern.isascii():
        raise _malformed(
            pattern,
            "has non-ASCII characters; write internationalized names in their "
            'punycode form ("xn--...")',
        )
    labels = body.split(".")
    for label in labels:
        if not label:
            raise _malformed(
                pattern,
                "has an empty label; remove leading, trailing or doubled dots",
            )
        if len(label) > 63:
            raise _malformed(
                pattern, f"has a label of {len(label)} characters; labels have at most 63"
            )
        if not _LABEL_CHARS.fullmatch(label):
            raise _malformed(
                pattern,
                f"has a label '{_show(label)}' with characters other than letters, "
                "digits and hyphens",
            )
        if not _LABEL.fullmatch(label):
            raise _malformed(
                pattern,
                f"has a label '{_show(label)}' that starts or ends with a hyphen; remove it",
            )
    if wildcard and len(labels) < 2:
        raise _malformed(
            pattern,
            "would match every name under a top-level domain; a wildcard needs at "
            'least two labels after "*.", as in "*.example.com"',
        )
    return pattern


# -- the ClientHello peek ------------------------------------------------------

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_EXT_SUPPORTED_VERSIONS = 0x002B
_HOST_NAME = 0
_MAX_PLAINTEXT_RECORD = 16384

_VERSION_NAMES = {
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}

ClientHelloFailure = Literal["not_tls", "parse_failed", "too_large"]


class ClientHelloError(Exception):
    """
    The first bytes of a connection are not a ClientHello the router can use.

    C{reason} is the stable part (C{not_tls}, C{parse_failed}, C{too_large});
    C{detail} says what was wrong, for debug logs.
    """

    def __init__(self, reason: ClientHelloFailure, detail: str) -> None:
        self.reason: ClientHelloFailure = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def _failed(detail: str) -> ClientHelloError:
    return ClientHelloError("parse_failed", detail)


@attrs.frozen
class ClientHelloResult:
    """What the router needs from a complete ClientHello."""

    #: The requested host, lowercased without a trailing dot; C{None} when
    #: the hello has no server_name extension.
    server_name: str | None
    #: Every byte fed to the parser, to replay verbatim to the target.
    captured: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    #: The highest version the client offers: from supported_versions when
    #: present (TLS 1.3), else the hello's legacy_version.  E.g. C{0x0303}.
    tls_version: int

    @property
    def tls_version_name(self) -> str:
        """C{"TLS 1.2"}; unknown versions as hex (C{"0x7f1c"})."""
        return _VERSION_NAMES.get(self.tls_version, f"0x{self.tls_version:04x}")


class _Reader:
    """Bounds-checked reads over one ClientHello body."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise _failed(f"{self.what}: {what} runs past the end")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def vector(self, length_bytes: int, what: str) -> _Reader:
        length = int.from_bytes(self.take(length_bytes, f"{what} length"), "big")
        return _Reader(self.take(length, what), what)


def _is_grease(version: int) -> bool:
    # RFC 8701: 0x0a0a, 0x1a1a ... 0xfafa.
    return version & 0x0F0F == 0x0A0A and version >> 8 == version & 0xFF


def _host_name(raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _failed("server_name is not ASCII") from None
    if not name or not all("!" <= c <= "~" for c in name):
        raise _failed("server_name is empty or has spaces or control characters")
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise _failed("server_name is only a dot")
    return name


def _server_name(data: _Reader) -> str | None:
    names = data.vector(2, "server_name_list")
    if data.remaining:
        raise _failed("server_name extension has bytes after its list")
    if not names.remaining:
        raise _failed("server_name_list is empty")
    host: str | None = None
    while names.remaining:
        name_type = names.u8("server name type")
        name = names.vector(2, "server name")
        if name_type == _HOST_NAME:
            if host is not None:
                raise _failed("server_name_list has two host names")
            host = _host_name(name.data)
    return host


def _highest_version(data: _Reader) -> int | None:
    versions = data.vector(1, "supported_versions")
    if data.remaining or versions.remaining < 2 or versions.remaining % 2:
        raise _failed("supported_versions is malformed")
    offered = [versions.u16("version") for _ in range(versions.remaining // 2)]
    real = [v for v in offered if not _is_grease(v)]
    return max(real) if real else None


def _parse_client_hello(body: bytes, captured: bytes) -> ClientHelloResult:
    hello = _Reader(body, "ClientHello")
    version = hello.u16("legacy_version")
    if version >> 8 != 3:
        raise _failed(f"legacy_version 0x{version:04x} is not SSL 3/TLS")
    hello.take(32, "random")
    if hello.vector(1, "session_id").remaining > 32:
        raise _failed("session_id is longer than 32 bytes")
    suites = hello.vector(2, "cipher_suites").remaining
    if suites < 2 or suites % 2:
        raise _failed("cipher_suites is empty or odd-sized")
    if not hello.vector(1, "compression_methods").remaining:
        raise _failed("compression_methods is empty")
    server_name: str | None = None
    if hello.remaining:
        extensions = hello.vector(2, "extensions")
        if hello.remaining:
            raise _failed("ClientHello has bytes after its extensions")
        seen: set[int] = set()
        while extensions.remaining:
            kind = extensions.u16("extension type")
            data = extensions.vector(2, f"extension 0x{kind:04x}")
            if kind in seen:
                raise _failed(f"extension 0x{kind:04x} appears twice")
            seen.add(kind)
            if kind == _EXT_SERVER_NAME:
                server_name = _server_name(data)
            elif kind == _EXT_SUPPORTED_VERSIONS:
                version = _highest_version(data) or version
    return ClientHelloResult(server_name=server_name, captured=captured, tls_version=version)


class ClientHelloParser:
    """
    Reassembles a ClientHello from whatever the socket delivers: records
    split over reads, and a handshake message split over records.

    Feed it every chunk as it arrives; it answers C{None} until the hello is
    complete, then a L{ClientHelloResult} whose C{captured} holds every byte
    fed, including any that arrived after the hello.  It raises
    L{ClientHelloError} as soon as the bytes cannot become a usable hello,
    and C{too_large} once more than C{max_bytes} have arrived without one.
    Either way it is finished: feeding it again is a programming error.
    """

    def __init__(self, max_bytes: int = PEEK_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._captured = bytearray()
        #: Where the next unread record header starts in C{_captured}.
        self._record = 0
        self._handshake = bytearray()
        self._finished = False

    @property
    def captured(self) -> bytes:
        """Everything fed so far (to log or replay after a timeout)."""
        return bytes(self._captured)

    def feed(self, data: bytes) -> ClientHelloResult | None:
        if self._finished:
            raise RuntimeError("this ClientHello parser has finished; use a new one")
        self._captured += data
        try:
            result = self._advance()
            if result is None and len(self._captured) > self._max_bytes:
                raise ClientHelloError(
                    "too_large",
                    f"no complete ClientHello in the first {self._max_bytes} bytes",
                )
        except ClientHelloError:
            self._finished = True
            raise
        if result is not None:
            self._finished = True
        return result

    def _advance(self) -> ClientHelloResult | None:
        buf = self._captured
        if buf and buf[0] != _HANDSHAKE:
            raise ClientHelloError(
                "not_tls", f"first byte 0x{buf[0]:02x} is not a TLS handshake record"
            )
        while len(buf) - self._record >= 5:
            start = self._record
            content_type = buf[start]
            length = int.from_bytes(buf[start + 3 : start + 5], "big")
            if content_type != _HANDSHAKE:
                raise _failed(f"record type 0x{content_type:02x} before the ClientHello ended")
            if buf[start + 1] != 3:
                raise _failed(f"record version 0x{buf[start + 1]:02x}{buf[start + 2]:02x}")
            if not 0 < length <= _MAX_PLAINTEXT_RECORD:
                raise _failed(f"handshake record of {length} bytes")
            available = len(buf) - start - 5
            if available < length:
                # Reject a bad header without waiting for the rest of the
                # record; copy no more than the header, reads may be tiny.
                if len(self._handshake) < 4:
                    head = buf[start + 5 : start + 5 + min(available, 4)]
                    self._check_header(self._handshake + head)
                return None
            self._handshake += buf[start + 5 : start + 5 + length]
            self._record = start + 5 + length
            body_length = self._check_header(self._handshake)
            if body_length is not None and len(self._handshake) >= 4 + body_length:
                body = bytes(self._handshake[4 : 4 + body_length])
                return _parse_client_hello(body, bytes(buf))
        return None

    @staticmethod
    def _check_header(handshake: bytes | bytearray) -> int | None:
        if handshake and handshake[0] != _CLIENT_HELLO:
            raise _failed(f"handshake message type {handshake[0]} is not a ClientHello")
        if len(handshake) < 4:
            return None
        body_length = int.from_bytes(handshake[1:4], "big")
        if body_length > CLIENT_HELLO_MAX_BODY:
            raise ClientHelloError(
                "too_large",
                f"ClientHello of {body_length} bytes (at most {CLIENT_HELLO_MAX_BODY})",
            )
        return body_length


# -- routing -------------------------------------------------------------------


class SniRouteTable(Generic[T]):
    """
    The routes of one SNI-routed listener: exact names, single-label
    wildcards and at most one fallback, each leading to a value (a rule).

    Patterns are normalized on the way in, so C{"App.Example.com "} and
    C{"app.example.com"} are the same route.
    """

    def __init__(self) -> None:
        self._exact: dict[str, T] = {}
        #: Keyed by the wildcard's parent: C{"*.example.com"} is C{"example.com"}.
        self._wildcards: dict[str, T] = {}
        #: Zero or one value; a list so that any T (even None) can be stored.
        self._fallback: list[T] = []

    def add(self, pattern: str | None, value: T) -> None:
        """
        Route C{pattern} (C{None}: the fallback) to C{value}.  Raises
        L{SniError} for a malformed pattern or a route the table already has.
        """
        if pattern is None:
            if self._fallback:
                raise SniError(
                    SNI_FALLBACK_DUPLICATE,
                    "this port already has a fallback rule; keep sni_fallback = true "
                    "on one rule only",
                )
            self._fallback.append(value)
            return
        pattern = normalize_sni_pattern(pattern)
        routes, key = (
            (self._wildcards, pattern[2:]) if pattern.startswith("*.") else (self._exact, pattern)
        )
        if key in routes:
            raise SniError(
                SNI_ROUTE_DUPLICATE,
                f"another rule on this port already routes '{pattern}'; remove one of "
                "them or change its sni_pattern",
            )
        routes[key] = value

    def remove(self, value: T) -> None:
        """Drop every route to C{value}; C{KeyError} if there is none."""
        found = False
        for routes in (self._exact, self._wildcards):
            for key in [k for k, v in routes.items() if v == value]:
                del routes[key]
                found = True
        if self._fallback and self._fallback[0] == value:
            self._fallback.clear()
            found = True
        if not found:
            raise KeyError(value)

    def lookup(self, server_name: str | None) -> tuple[T, MatchKind] | None:
        """
        The value for C{server_name} and how it matched: exact, then the
        wildcard covering its first label, then the fallback; C{None} is a
        miss (drop the connection).  A hello without SNI gets the fallback.
        """
        if server_name is not None:
            name = server_name.lower().removesuffix(".")
            if name in self._exact:
                return self._exact[name], "exact"
            # Single-label wildcards: only the name minus its first label can
            # match, so the most specific wildcard is the only candidate.
            first, _, parent = name.partition(".")
            if first and parent in self._wildcards:
                return self._wildcards[parent], "wildcard"
        if self._fallback:
            return self._fallback[0], "fallback"
        return None

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards) + len(self._fallback)

    def __iter__(self) -> Iterator[tuple[str | None, T]]:
        """Every route as C{(pattern, value)}; the fallback's pattern is C{None}."""
        yield from self._exact.items()
        for parent, value in self._wildcards.items():
            yield f"*.{parent}", value
        for value in self._fallback:
            yield None, value


@attrs.define
class SniCounters:
    """Connections an SNI listener routed, by how they matched."""

    exact: int = 0
    wildcard: int = 0
    fallback: int = 0
    #: No route and no fallback: the connection was dropped.
    miss: int = 0

    def count(self, kind: MatchKind | None) -> None:
        """Count one lookup; C{None} (what a miss returns) is a miss."""
        if kind is None:
            self.miss += 1
        else:
            setattr(self, kind, getattr(self, kind) + 1)

    def snapshot(self) -> dict[str, int]:
        return attrs.asdict(self)
