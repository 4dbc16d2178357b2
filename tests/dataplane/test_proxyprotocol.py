"""
Tests for L{portunus.dataplane.proxyprotocol}: exact header bytes, the
sans-IO reader, trusted sources, and both directions against a real HAProxy.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Generator
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane.proxyprotocol import (
    HEADER_READ_TIMEOUT_SECS,
    PRELUDE_WRITE_TIMEOUT_SECS,
    V1_MAX_HEADER,
    V2_MAX_HEADER,
    V2_SIGNATURE,
    ProxyHeaderReader,
    ProxyHeaderRejected,
    ProxyHeaderResult,
    ProxyProtocolError,
    TrustedSources,
    encode_header,
    encode_v1,
    encode_v2,
    header_for_connection,
)
from portunus.model import ProxyProtocolVersion
from tests._net import LOOPBACK, free_port

reactor: Any = _reactor

V1 = ProxyProtocolVersion.V1
V2 = ProxyProtocolVersion.V2
SIG = bytes.fromhex("0D0A0D0A000D0A515549540A")


def v2_raw(ver_cmd: int, family: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return SIG + struct.pack("!BBH", ver_cmd, family, size) + body


def read_all(data: bytes, chunk: int | None = None) -> ProxyHeaderResult | None:
    """Feed C{data} in chunks of C{chunk} bytes (all at once if None)."""
    reader = ProxyHeaderReader()
    step = chunk or max(len(data), 1)
    result = None
    for i in range(0, len(data), step):
        result = reader.feed(data[i : i + step])
        if result is not None:
            return result
    return result


class EncodeTests(SynchronousTestCase):
    def test_v1_ipv4_exact(self) -> None:
        """v1 over IPv4 is the TCP4 text line with CRLF."""
        self.assertEqual(
            encode_v1(("192.0.2.1", 56324), ("192.0.2.2", 443)),
            b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n",
        )

    def test_v1_ipv6_exact(self) -> None:
        """v1 over IPv6 says TCP6 and writes compressed addresses."""
        self.assertEqual(
            encode_v1(("2001:db8:0::1", 1), ("2001:DB8::2", 65535)),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
        )

    def test_v2_ipv4_exact(self) -> None:
        """v2 over IPv4 is 28 bytes: signature, 0x21, 0x11, length 12, addrs, ports."""
        header = encode_v2(("192.0.2.1", 56324), ("192.0.2.2", 443))
        self.assertEqual(
            header,
            SIG
            + b"\x21\x11\x00\x0c"
            + bytes([192, 0, 2, 1])
            + bytes([192, 0, 2, 2])
            + b"\xdc\x04\x01\xbb",
        )
        self.assertEqual(len(header), 28)

    def test_v2_ipv6_exact(self) -> None:
        """v2 over IPv6 is 52 bytes: family 0x21, length 36."""
        header = encode_v2(("2001:db8::1", 56324), ("2001:db8::2", 443))
        self.assertEqual(
            header,
            SIG
            + b"\x21\x21\x00\x24"
            + ipaddress.IPv6Address("2001:db8::1").packed
            + ipaddress.IPv6Address("2001:db8::2").packed
            + b"\xdc\x04\x01\xbb",
        )
        self.assertEqual(len(header), 52)

    def test_signature_constant(self) -> None:
        """The v2 signature is the twelve bytes of the specification."""
        self.assertEqual(V2_SIGNATURE, SIG)

    def test_encode_header_dispatches_on_version(self) -> None:
        """encode_header writes the version it is given."""
        src, dst = ("192.0.2.1", 1000), ("192.0.2.2", 80)
        self.assertEqual(encode_header(V1, src, dst), encode_v1(src, dst))
        self.assertEqual(encode_header(V2, src, dst), encode_v2(src, dst))

    def test_mapped_client_on_mapped_local_is_tcp4(self) -> None:
        """A dual-stack socket's ::ffff: addresses become a plain IPv4 header."""
        src, dst = ("::ffff:192.0.2.1", 5000), ("::ffff:127.0.0.1", 8080)
        self.assertEqual(encode_v1(src, dst), b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 8080\r\n")
        self.assertEqual(encode_v2(src, dst), encode_v2(("192.0.2.1", 5000), ("127.0.0.1", 8080)))

    def test_ipv4_client_on_mapped_local_address(self) -> None:
        """An IPv4 client with a mapped local address gets one IPv4 header."""
        header = encode_v2(("192.0.2.1", 5000), ("::ffff:10.0.0.1", 80))
        self.assertEqual(len(header), 28)
        self.assertEqual(header[20:24], bytes([10, 0, 0, 1]))

    def test_family_mismatch_raises(self) -> None:
        """IPv4 to a real IPv6 address cannot be one header: ProxyProtocolError."""
        for version in (V1, V2):
            e = self.assertRaises(
                ProxyProtocolError,
                encode_header,
                version,
                ("192.0.2.1", 5000),
                ("2001:db8::1", 80),
            )
            self.assertIn("one family", str(e))

    def test_not_an_address_raises(self) -> None:
        """A host name has no place in a header."""
        self.assertRaises(ProxyProtocolError, encode_v1, ("example.com", 1), ("192.0.2.1", 2))

    def test_port_out_of_range_raises(self) -> None:
        """Ports outside 0..65535 are refused."""
        self.assertRaises(ProxyProtocolError, encode_v2, ("192.0.2.1", 65536), ("192.0.2.2", 2))
        self.assertRaises(ProxyProtocolError, encode_v2, ("192.0.2.1", 1), ("192.0.2.2", -1))

    def test_scope_id_dropped(self) -> None:
        """A link-local peer's %scope is not written."""
        self.assertEqual(
            encode_v1(("fe80::1%eth0", 1), ("fe80::2%eth0", 2)),
            b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n",
        )

    def test_header_for_connection(self) -> None:
        """Transport addresses (peer, host) give the same header as tuples."""
        peer = IPv6Address("TCP", "::ffff:203.0.113.7", 4242)
        host = IPv6Address("TCP", "::ffff:127.0.0.1", 80)
        self.assertEqual(
            header_for_connection(V1, peer, host),
            b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 80\r\n",
        )
        self.assertEqual(
            header_for_connection(V2, IPv4Address("TCP", "10.0.0.1", 1), host),
            encode_v2(("10.0.0.1", 1), ("127.0.0.1", 80)),
        )

    def test_header_for_unix_connection_raises(self) -> None:
        """A UNIX socket has no address to put in a header."""
        self.assertRaises(
            ProxyProtocolError,
            header_for_connection,
            V2,
            UNIXAddress(b"/tmp/s"),
            IPv4Address("TCP", "127.0.0.1", 1),
        )

    def test_twisted_parsers_agree(self) -> None:
        """Twisted's parsers (private modules, used only here) read our headers alike."""
        cases = [
            (("203.0.113.7", 4242), ("127.0.0.1", 80)),
            (("2001:db8::7", 4242), ("2001:db8::1", 443)),
        ]
        for src, dst in cases:
            for parser, encode in ((V1Parser(), encode_v1), (V2Parser(), encode_v2)):
                info, rest = parser.feed(encode(src, dst) + b"x")
                assert info is not None
                self.assertEqual(rest, b"x")
                ends: list[Any] = [info.source, info.destination]
                got = [(a.host, a.port) for a in ends]
                want = [(str(ipaddress.ip_address(h)), p) for h, p in (src, dst)]
                self.assertEqual([(str(ipaddress.ip_address(h)), p) for h, p in got], want, encode)


class ReaderTests(SynchronousTestCase):
    def assertRejected(self, data: bytes, reason: str, chunk: int | None = None) -> str:
        e = self.assertRaises(ProxyHeaderRejected, read_all, data, chunk)
        self.assertEqual(e.reason, reason)
        return e.detail

    def test_v1_whole(self) -> None:
        """A v1 line yields source, destination, version and its length."""
        header = b"PROXY TCP4 203.0.113.7 10.0.0.1 4242 80\r\n"
        self.assertEqual(
            read_all(header),
            ProxyHeaderResult(V1, ("203.0.113.7", 4242), ("10.0.0.1", 80), b"", len(header)),
        )

    def test_v1_byte_at_a_time(self) -> None:
        """Fed one byte at a time, v1 completes exactly at the LF."""
        header = encode_v1(("2001:db8::7", 4242), ("2001:db8::1", 443))
        reader = ProxyHeaderReader()
        for byte in header[:-1]:
            self.assertIsNone(reader.feed(bytes([byte])))
        result = reader.feed(header[-1:])
        assert result is not None
        self.assertEqual(result.source, ("2001:db8::7", 4242))
        self.assertEqual(result.destination, ("2001:db8::1", 443))
        self.assertEqual(result.remaining, b"")

    def test_v2_ipv4_byte_at_a_time(self) -> None:
        """Fed one byte at a time, v2 IPv4 completes at byte 28."""
        header = encode_v2(("203.0.113.7", 4242), ("10.0.0.1", 80))
        reader = ProxyHeaderReader()
        for byte in header[:-1]:
            self.assertIsNone(reader.feed(bytes([byte])))
        self.assertEqual(
            reader.feed(header[-1:]),
            ProxyHeaderResult(V2, ("203.0.113.7", 4242), ("10.0.0.1", 80), b"", 28),
        )

    def test_v2_ipv6_byte_at_a_time(self) -> None:
        """Fed one byte at a time, v2 IPv6 completes at byte 52."""
        header = encode_v2(("2001:db8::7", 4242), ("2001:db8::1", 443))
        reader = ProxyHeaderReader()
        for byte in header[:-1]:
            self.assertIsNone(reader.feed(bytes([byte])))
        self.assertEqual(
            reader.feed(header[-1:]),
            ProxyHeaderResult(V2, ("2001:db8::7", 4242), ("2001:db8::1", 443), b"", 52),
        )

    def test_remaining_bytes_preserved(self) -> None:
        """Client bytes after the header come back untouched, across chunk splits."""
        payload = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x00\xff"
        for header in (
            encode_v1(("203.0.113.7", 1), ("10.0.0.1", 2)),
            encode_v2(("203.0.113.7", 1), ("10.0.0.1", 2)),
        ):
            for split in (1, 5, len(header) - 1):
                reader = ProxyHeaderReader()
                data = header + payload
                self.assertIsNone(reader.feed(data[:split]))
                result = reader.feed(data[split:])
                assert result is not None
                self.assertEqual(result.remaining, payload)
                self.assertEqual(result.header_length, len(header))

    def test_v2_tlvs_skipped(self) -> None:
        """TLVs after the v2 addresses are skipped; the length field decides."""
        body = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))[16:]
        tlvs = b"\x04\x00\x03abc" + b"\x01\x00\x02h2"
        reader = ProxyHeaderReader()
        data = v2_raw(0x21, 0x11, body + tlvs) + b"tail"
        self.assertIsNone(reader.feed(data[:30]))
        result = reader.feed(data[30:])
        assert result is not None
        self.assertEqual(result.source, ("192.0.2.1", 1))
        self.assertEqual(result.remaining, b"tail")
        self.assertEqual(result.header_length, 16 + 12 + len(tlvs))

    def test_v2_largest_header_accepted(self) -> None:
        """A v2 header of 16 + 65535 bytes (the cap) is read whole."""
        body = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))[16:]
        header = v2_raw(
            0x21, 0x11, body + b"\x04" + struct.pack("!H", 0xFFFF - 15) + bytes(0xFFFF - 15)
        )
        self.assertEqual(len(header), V2_MAX_HEADER)
        result = read_all(header + b"!", chunk=4096)
        assert result is not None
        self.assertEqual((result.header_length, result.remaining), (V2_MAX_HEADER, b"!"))

    def test_v2_local_keeps_real_peer(self) -> None:
        """A v2 LOCAL command (a balancer's health check) has no source."""
        for header in (
            v2_raw(0x20, 0x00, b""),
            v2_raw(0x20, 0x11, encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))[16:]),
        ):
            result = read_all(header + b"ping")
            assert result is not None
            self.assertTrue(result.local)
            self.assertIsNone(result.source)
            self.assertIsNone(result.destination)
            self.assertEqual(result.remaining, b"ping")

    def test_v1_unknown_keeps_real_peer(self) -> None:
        """PROXY UNKNOWN, with or without addresses, has no source."""
        for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n"):
            result = read_all(line + b"x")
            assert result is not None
            self.assertIsNone(result.source)
            self.assertEqual(result.remaining, b"x")

    def test_v2_other_families_keep_real_peer(self) -> None:
        """UNSPEC, UDP and UNIX families keep the real peer address."""
        udp4 = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))[16:]
        for family, body in ((0x00, b""), (0x12, udp4), (0x31, bytes(216))):
            result = read_all(v2_raw(0x21, family, body))
            assert result is not None
            self.assertIsNone(result.source, hex(family))

    def test_v1_line_of_107_bytes_accepted(self) -> None:
        """A v1 line of exactly 107 bytes with its CRLF is within the cap."""
        line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_HEADER - 16) + b"\r\n"
        self.assertEqual(len(line), V1_MAX_HEADER)
        result = read_all(line, chunk=1)
        assert result is not None
        self.assertEqual(result.header_length, V1_MAX_HEADER)

    def test_v1_line_over_cap_rejected(self) -> None:
        """One byte more, and the line is malformed, even before its CRLF arrives."""
        detail = self.assertRejected(
            b"PROXY UNKNOWN " + b"x" * (V1_MAX_HEADER - 14), "malformed_header", chunk=1
        )
        self.assertIn("107", detail)

    def test_missing_header(self) -> None:
        """Bytes that do not start with either signature are missing_header."""
        for data in (b"GET / HTTP/1.1\r\n", b"POST /", b"\x16\x03\x01", b"\r\n\r\nX", b"PROXY-"):
            detail = self.assertRejected(data, "missing_header", chunk=1)
            self.assertIn("not a PROXY", detail)

    def test_missing_header_detected_early(self) -> None:
        """A TLS record is refused at its first byte, not after a full read."""
        reader = ProxyHeaderReader()
        e = self.assertRaises(ProxyHeaderRejected, reader.feed, b"\x16")
        self.assertEqual(e.reason, "missing_header")

    def test_malformed_v1(self) -> None:
        """Bad v1 lines are malformed_header."""
        for line in (
            b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 1.2.3 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 1.2.3.5 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 080 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n",
            b"PROXY TCP4  1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n\r\n",
            b"PROXY TCP4 1.2.3.\xff 1.2.3.5 1 2\r\n",
            b"PROXY \r\n",
        ):
            self.assertRejected(line, "malformed_header")

    def test_malformed_v2(self) -> None:
        """Bad v2 fixed fields are malformed_header as soon as the 16 bytes are in."""
        addrs = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))[16:]
        for ver_cmd, family, length in (
            (0x11, 0x11, 12),
            (0x22, 0x11, 12),
            (0x2F, 0x11, 12),
            (0x21, 0x41, 12),
            (0x21, 0x13, 12),
            (0x21, 0x11, 11),
            (0x21, 0x21, 12),
            (0x21, 0x31, 12),
        ):
            fixed = v2_raw(ver_cmd, family, b"", length)
            reader = ProxyHeaderReader()
            self.assertIsNone(reader.feed(fixed[:15]))
            e = self.assertRaises(ProxyHeaderRejected, reader.feed, fixed[15:] + addrs)
            self.assertEqual(e.reason, "malformed_header", (ver_cmd, family, length))

    def test_header_timeout(self) -> None:
        """The relay's timeout becomes a header_timeout rejection that sticks."""
        reader = ProxyHeaderReader()
        self.assertIsNone(reader.feed(b"PROXY TCP4 "))
        rejection = reader.timed_out()
        self.assertEqual(rejection.reason, "header_timeout")
        self.assertIn("11 bytes", rejection.detail)
        e = self.assertRaises(ProxyHeaderRejected, reader.feed, b"1.2.3.4 1.2.3.5 1 2\r\n")
        self.assertIs(e, rejection)

    def test_connection_lost(self) -> None:
        """EOF mid-header is malformed, before a signature missing, and silent if empty."""
        self.assertIsNone(ProxyHeaderReader().connection_lost())
        partial = ProxyHeaderReader()
        partial.feed(encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))[:20])
        rejection = partial.connection_lost()
        assert rejection is not None
        self.assertEqual(rejection.reason, "malformed_header")
        early = ProxyHeaderReader()
        early.feed(b"PRO")
        rejection = early.connection_lost()
        assert rejection is not None
        self.assertEqual(rejection.reason, "missing_header")
        done = ProxyHeaderReader()
        done.feed(b"PROXY UNKNOWN\r\n")
        self.assertIsNone(done.connection_lost())

    def test_rejection_is_sticky(self) -> None:
        """Once rejected, every later feed raises the same rejection."""
        reader = ProxyHeaderReader()
        first = self.assertRaises(ProxyHeaderRejected, reader.feed, b"GET")
        again = self.assertRaises(ProxyHeaderRejected, reader.feed, b"PROXY UNKNOWN\r\n")
        self.assertIs(first, again)

    def test_feed_after_result_is_an_error(self) -> None:
        """After the header, bytes belong to the relay, not the reader."""
        reader = ProxyHeaderReader()
        reader.feed(b"PROXY UNKNOWN\r\n")
        self.assertRaises(RuntimeError, reader.feed, b"more")

    def test_timeouts_documented_values(self) -> None:
        """The relay's bounds are Portunus' 10 s prelude write and a 3 s header read."""
        self.assertEqual((PRELUDE_WRITE_TIMEOUT_SECS, HEADER_READ_TIMEOUT_SECS), (10.0, 3.0))


_chunked = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)


def _feed_in_chunks(data: bytes, sizes: list[int]) -> ProxyHeaderResult | None:
    reader = ProxyHeaderReader()
    offset = 0
    index = 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        index += 1
        result = reader.feed(data[offset : offset + size])
        offset += size
        if result is not None:
            return result
    return None


class ReaderPropertyTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None, derandomize=True, database=None)
    @given(
        data=st.one_of(
            st.binary(max_size=300),
            st.binary(max_size=200).map(lambda b: b"PROXY " + b),
            st.binary(max_size=200).map(lambda b: b"PROXY TCP4 " + b),
            st.binary(max_size=120).map(lambda b: SIG + b),
            st.binary(min_size=2, max_size=120).map(lambda b: SIG + b"\x21" + b),
        ),
        sizes=_chunked,
    )
    def test_random_bytes_only_ever_rejected(self, data: bytes, sizes: list[int]) -> None:
        """Arbitrary input, arbitrarily chunked, raises nothing but ProxyHeaderRejected."""
        try:
            result = _feed_in_chunks(data, sizes)
        except ProxyHeaderRejected as e:
            self.assertIn(e.reason, ("missing_header", "malformed_header"), f"{data!r}: {e}")
            return
        if result is not None:
            self.assertLessEqual(result.header_length, len(data))
            self.assertEqual(data[result.header_length :], result.remaining)

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(
        v6=st.booleans(),
        hosts=st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1)),
        ports=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
        version=st.sampled_from([V1, V2]),
        sizes=_chunked,
        tail=st.binary(max_size=32),
    )
    def test_round_trip(
        self,
        v6: bool,
        hosts: tuple[int, int],
        ports: tuple[int, int],
        version: ProxyProtocolVersion,
        sizes: list[int],
        tail: bytes,
    ) -> None:
        """Whatever the sender writes, the reader gives back, in any chunking."""
        bits = 128 if v6 else 32
        addrs = [ipaddress.ip_address(h % 2**bits) for h in hosts]
        if v6:
            addrs = [ipaddress.IPv6Address(h % 2**bits) for h in hosts]
            assume(not any(a.ipv4_mapped for a in addrs))  # type: ignore[union-attr]
        src, dst = (str(addrs[0]), ports[0]), (str(addrs[1]), ports[1])
        header = encode_header(version, src, dst)
        result = _feed_in_chunks(header + tail, sizes)
        assert result is not None
        self.assertEqual((result.source, result.destination), (src, dst))
        self.assertEqual(result.version, version)
        self.assertEqual(result.header_length, len(header))
        self.assertEqual(result.remaining, tail[: len(result.remaining)])


class TrustedSourcesTests(SynchronousTestCase):
    def test_cidr_matching(self) -> None:
        """Peers inside a listed network are trusted, others are not."""
        trusted = TrustedSources.parse(["10.0.0.0/8", " 2001:db8::/32 ", "192.0.2.10"])
        for host in ("10.0.0.1", "10.255.255.255", "2001:db8::5", "192.0.2.10"):
            self.assertTrue(trusted.contains(host), host)
        for host in ("11.0.0.1", "192.0.2.11", "2001:db9::1", "::1", "not-an-ip", ""):
            self.assertFalse(trusted.contains(host), host)

    def test_mapped_peer_matches_ipv4_network(self) -> None:
        """A dual-stack listener's ::ffff:10.1.2.3 peer is inside 10.0.0.0/8."""
        trusted = TrustedSources.parse(["10.0.0.0/8"])
        self.assertTrue(trusted.contains("::ffff:10.1.2.3"))
        self.assertFalse(trusted.contains("::ffff:11.1.2.3"))

    def test_mapped_network_matches_ipv4_peer(self) -> None:
        """A CIDR written as ::ffff:10.0.0.0/104 also covers plain IPv4 peers."""
        trusted = TrustedSources.parse(["::ffff:10.0.0.0/104"])
        self.assertTrue(trusted.contains("10.1.2.3"))
        self.assertTrue(trusted.contains("::ffff:10.1.2.3"))
        self.assertFalse(trusted.contains("11.0.0.1"))

    def test_scoped_peer(self) -> None:
        """A link-local peer with a %scope matches fe80::/10."""
        self.assertTrue(TrustedSources.parse(["fe80::/10"]).contains("fe80::1%eth0"))

    def test_empty_trusts_nobody(self) -> None:
        """No CIDRs means no trusted peer."""
        self.assertFalse(TrustedSources.parse([]).contains("127.0.0.1"))

    def test_host_bits_set(self) -> None:
        """10.0.0.1/8 is refused with the network and single-host spellings."""
        e = self.assertRaises(ValueError, TrustedSources.parse, ["10.0.0.0/8", "10.0.0.1/8"])
        self.assertIn("'10.0.0.1/8'", str(e))
        self.assertIn("'10.0.0.0/8'", str(e))
        self.assertIn("'10.0.0.1'", str(e))

    def test_not_a_cidr(self) -> None:
        """A non-CIDR entry is named, with examples of what to write."""
        for bad in ("lb.internal", "10.0.0.0/33", "10.0.0.0/"):
            e = self.assertRaises(ValueError, TrustedSources.parse, [bad])
            self.assertIn(f"'{bad}'", str(e))
            self.assertIn("10.0.0.0/8", str(e))

    def test_not_a_string(self) -> None:
        """A number in the list is refused rather than crashing."""
        e = self.assertRaises(ValueError, TrustedSources.parse, [42])
        self.assertIn("42", str(e))

    def test_check_untrusted_source(self) -> None:
        """check() refuses an untrusted peer with reason untrusted_source."""
        trusted = TrustedSources.parse(["10.0.0.0/8"])
        trusted.check("10.1.1.1")
        e = self.assertRaises(ProxyHeaderRejected, trusted.check, "198.51.100.9")
        self.assertEqual(e.reason, "untrusted_source")
        self.assertIn("198.51.100.9", e.detail)


# Real peer: HAProxy on 127.0.0.1.  203.0.113.x and 2001:db8:: appear only
# inside header bytes; every socket is loopback.

HAPROXY = "/usr/sbin/haproxy"
READY_WITHIN_SECS = 15.0

HAPROXY_CONFIG = """\
global
    maxconn 64
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend show_src
    bind {loopback}:{show_port} accept-proxy
    http-request return status 200 content-type text/plain lf-string "%[src] %[src_port]"
listen send_v1
    mode tcp
    bind {loopback}:{send_v1_port}
    server reader {loopback}:{reader_port} send-proxy
listen send_v2
    mode tcp
    bind {loopback}:{send_v2_port}
    server reader {loopback}:{reader_port} send-proxy-v2
"""


class _HAProxyProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.exited = False
        self._waiters: list[Deferred[None]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def when_exited(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.exited:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d


class _Exchange(Protocol):
    """Writes C{payload}; C{done} fires with everything read once the peer closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(bytes(self.received))


class _HeaderReaderServer(Protocol):
    """Reads a PROXY header, then C{expect} bytes; reports both and closes."""

    def __init__(self, results: DeferredQueue[Any], expect: int) -> None:
        self.results = results
        self.expect = expect
        self.reader = ProxyHeaderReader()
        self.header: ProxyHeaderResult | None = None
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.header is None:
            try:
                self.header = self.reader.feed(data)
            except ProxyHeaderRejected as e:
                self.results.put(e)
                self.transport.loseConnection()
                return
            if self.header is None:
                return
            data = self.header.remaining
        self.data += data
        if len(self.data) >= self.expect:
            self.results.put((self.header, self.data))
            self.transport.loseConnection()


class HAProxyHarness(TestCase):
    """
    Starts HAProxy 2.6 with L{HAPROXY_CONFIG}: C{show_port} answers with the
    client address it read from a PROXY header; C{send_v1_port} and
    C{send_v2_port} forward to an in-test reader with send-proxy(-v2).
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:  # type: ignore[override]
        if not os.access(HAPROXY, os.X_OK):
            self.skipTest(
                f"HAProxy is not installed at {HAPROXY} (apt-get install haproxy); "
                "the real-peer PROXY protocol tests need it"
            )
        self.results: DeferredQueue[Any] = DeferredQueue()
        factory = Factory.forProtocol(lambda: _HeaderReaderServer(self.results, expect=5))
        listener = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(listener.stopListening)
        self.show_port = free_port()
        self.send_v1_port = free_port()
        self.send_v2_port = free_port()
        config = self.mktemp() + ".cfg"
        with open(config, "w") as f:
            f.write(
                HAPROXY_CONFIG.format(
                    loopback=LOOPBACK,
                    show_port=self.show_port,
                    send_v1_port=self.send_v1_port,
                    send_v2_port=self.send_v2_port,
                    reader_port=listener.getHost().port,
                )
            )
        self.haproxy = _HAProxyProcess()
        transport = reactor.spawnProcess(
            self.haproxy, HAPROXY, [HAPROXY, "-f", config, "-db"], env={"PATH": "/usr/bin:/bin"}
        )
        self.addCleanup(self._stop, transport)
        for port in (self.show_port, self.send_v1_port, self.send_v2_port):
            yield self._wait_listening(port)

    def _stop(self, transport: Any) -> Deferred[None]:
        if self.haproxy.exited:
            return self.haproxy.when_exited()
        transport.signalProcess("TERM")
        kill = reactor.callLater(5, lambda: self.haproxy.exited or transport.signalProcess("KILL"))
        exited = self.haproxy.when_exited()
        exited.addBoth(lambda r: kill.cancel() if kill.active() else None)
        return exited

    @inlineCallbacks
    def _wait_listening(self, port: int) -> Generator[Deferred[Any], Any, None]:
        """Connect until HAProxy listens, one reactor turn between tries."""
        deadline = reactor.seconds() + READY_WITHIN_SECS
        endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=5)
        while True:
            if self.haproxy.exited:
                self.fail(f"haproxy exited early:\n{self.haproxy.output.decode(errors='replace')}")
            try:
                probe = yield connectProtocol(endpoint, Protocol())
            except ConnectError:
                if reactor.seconds() > deadline:
                    self.fail(f"haproxy did not listen on {port} within {READY_WITHIN_SECS} s")
                yield deferLater(reactor, 0, lambda: None)
                continue
            probe.transport.abortConnection()
            return

    def exchange(self, port: int, payload: bytes) -> Deferred[bytes]:
        client = _Exchange(payload)
        endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=10)
        connected = connectProtocol(endpoint, client)
        connected.addErrback(client.done.errback)
        return client.done


class HAProxyPeerTests(HAProxyHarness):
    """Both directions against HAProxy 2.6: it reads our headers, we read its."""

    @inlineCallbacks
    def client_address_seen(self, header: bytes) -> Generator[Deferred[Any], Any, bytes]:
        response = yield self.exchange(self.show_port, header + b"GET / HTTP/1.0\r\n\r\n")
        status, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(status.startswith(b"HTTP/1.0 200") or status.startswith(b"HTTP/1.1 200"))
        return body

    @inlineCallbacks
    def test_v1_ipv4_source_seen_by_haproxy(self) -> Generator[Deferred[Any], Any, None]:
        """HAProxy's accept-proxy reads our v1 header as client 203.0.113.7:4242."""
        header = encode_header(V1, ("203.0.113.7", 4242), (LOOPBACK, self.show_port))
        body = yield self.client_address_seen(header)
        self.assertEqual(body, b"203.0.113.7 4242")

    @inlineCallbacks
    def test_v2_ipv4_source_seen_by_haproxy(self) -> Generator[Deferred[Any], Any, None]:
        """HAProxy reads our 28-byte v2 header as client 203.0.113.7:4242."""
        header = encode_header(V2, ("203.0.113.7", 4242), (LOOPBACK, self.show_port))
        body = yield self.client_address_seen(header)
        self.assertEqual(body, b"203.0.113.7 4242")

    @inlineCallbacks
    def test_v2_ipv6_source_seen_by_haproxy(self) -> Generator[Deferred[Any], Any, None]:
        """HAProxy reads our 52-byte v2 header as client [2001:db8::7]:4242."""
        header = encode_header(V2, ("2001:db8::7", 4242), ("2001:db8::1", self.show_port))
        body = yield self.client_address_seen(header)
        self.assertEqual(body, b"2001:db8::7 4242")

    @inlineCallbacks
    def test_v1_ipv6_source_seen_by_haproxy(self) -> Generator[Deferred[Any], Any, None]:
        """HAProxy reads our TCP6 v1 line as client [2001:db8::7]:4242."""
        header = encode_header(V1, ("2001:db8::7", 4242), ("2001:db8::1", self.show_port))
        body = yield self.client_address_seen(header)
        self.assertEqual(body, b"2001:db8::7 4242")

    @inlineCallbacks
    def test_mapped_addresses_seen_as_ipv4(self) -> Generator[Deferred[Any], Any, None]:
        """A dual-stack socket's ::ffff: addresses reach HAProxy as plain IPv4."""
        header = encode_header(
            V2, ("::ffff:203.0.113.7", 4242), ("::ffff:127.0.0.1", self.show_port)
        )
        body = yield self.client_address_seen(header)
        self.assertEqual(body, b"203.0.113.7 4242")

    @inlineCallbacks
    def test_haproxy_refuses_without_header(self) -> Generator[Deferred[Any], Any, None]:
        """Without a header, accept-proxy answers nothing: the checks above can fail."""
        response = yield self.exchange(self.show_port, b"GET / HTTP/1.0\r\n\r\n")
        self.assertNotIn(b"200", response)

    @inlineCallbacks
    def read_haproxy_header(
        self, port: int
    ) -> Generator[Deferred[Any], Any, tuple[ProxyHeaderResult, bytes, int]]:
        client = _Exchange(b"hello")
        endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, port, timeout=10)
        yield connectProtocol(endpoint, client)
        assert client.transport is not None
        local: Any = client.transport.getHost()
        client_port = local.port
        outcome = yield self.results.get()
        yield client.done
        if isinstance(outcome, ProxyHeaderRejected):
            self.fail(f"HAProxy's header was rejected: {outcome}")
        header, data = outcome
        return header, data, client_port

    @inlineCallbacks
    def test_reader_parses_haproxy_send_proxy(self) -> Generator[Deferred[Any], Any, None]:
        """Our reader takes HAProxy's send-proxy (v1) header and the bytes after it."""
        header, data, client_port = yield self.read_haproxy_header(self.send_v1_port)
        self.assertEqual(header.version, V1)
        self.assertEqual(header.source, (LOOPBACK, client_port))
        self.assertEqual(header.destination, (LOOPBACK, self.send_v1_port))
        self.assertEqual(data, b"hello")

    @inlineCallbacks
    def test_reader_parses_haproxy_send_proxy_v2(self) -> Generator[Deferred[Any], Any, None]:
        """Our reader takes HAProxy's send-proxy-v2 header and the bytes after it."""
        header, data, client_port = yield self.read_haproxy_header(self.send_v2_port)
        self.assertEqual(header.version, V2)
        self.assertEqual(header.source, (LOOPBACK, client_port))
        self.assertEqual(header.destination, (LOOPBACK, self.send_v2_port))
        self.assertEqual(data, b"hello")
