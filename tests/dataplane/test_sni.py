"""
TLS SNI routing: the ClientHello peek, the pattern grammar, the route table
and the rule conflict checks.

The fixtures are ClientHellos captured from the real openssl
(C{fixtures/capture_client_hellos.py}); one live test per TLS version runs
openssl again against a loopback listener.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane.sni import (
    CLIENT_HELLO_MAX_BODY,
    PEEK_MAX_BYTES,
    PEEK_TIMEOUT_SECS,
    ClientHelloError,
    ClientHelloParser,
    ClientHelloResult,
    SniCounters,
    SniError,
    SniRouteTable,
    normalize_sni_pattern,
)
from tests._net import LOOPBACK

reactor: Any = _reactor

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

MALFORMED = "validation.sni_pattern_malformed"
UNSUPPORTED = "validation.sni_on_unsupported_rule"
ROUTE_DUPLICATE = "conflict.sni_route_duplicate"
FALLBACK_DUPLICATE = "conflict.sni_fallback_duplicate"
LEGACY = "conflict.legacy_to_sni_unsupported"

#: fixture file -> (server name, TLS version it offers)
CAPTURED = {
    "client_hello_tls1_0.bin": ("tls10.example.com", 0x0301),
    "client_hello_tls1_1.bin": ("tls11.example.com", 0x0302),
    "client_hello_tls1_2.bin": ("tls12.example.com", 0x0303),
    "client_hello_tls1_3.bin": ("tls13.example.com", 0x0304),
    "client_hello_no_sni.bin": (None, 0x0303),
}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# -- building ClientHellos by hand ---------------------------------------------


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def ext(kind: int, data: bytes) -> bytes:
    return u16(kind) + u16(len(data)) + data


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + u16(len(n)) + n for n in names)
    return ext(0, u16(len(entries)) + entries)


def versions_ext(*versions: int) -> bytes:
    return ext(43, bytes([2 * len(versions)]) + b"".join(u16(v) for v in versions))


def hello_body(
    extensions: bytes | None = b"",
    version: int = 0x0303,
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01\x00\x2f",
    compression: bytes = b"\x00",
) -> bytes:
    body = (
        u16(version)
        + bytes(32)
        + bytes([len(session_id)])
        + session_id
        + u16(len(suites))
        + suites
        + bytes([len(compression)])
        + compression
    )
    if extensions is not None:
        body += u16(len(extensions)) + extensions
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def records(message: bytes, size: int = 16384, content_type: int = 0x16) -> bytes:
    """C{message} framed in TLS records of at most C{size} bytes each."""
    out = b""
    for i in range(0, len(message), size):
        fragment = message[i : i + size]
        out += bytes([content_type]) + b"\x03\x01" + u16(len(fragment)) + fragment
    return out


def client_hello(name: bytes | None = b"a.example.com", extra: bytes = b"") -> bytes:
    extensions = (sni_ext(name) if name is not None else b"") + extra
    return records(handshake(hello_body(extensions)))


def reframe(hello: bytes, size: int) -> bytes:
    """A one-record hello re-split into records of C{size} bytes."""
    assert len(hello) == 5 + int.from_bytes(hello[3:5], "big")
    return records(hello[5:], size)


def parse_all(data: bytes) -> ClientHelloResult:
    result = ClientHelloParser().feed(data)
    assert result is not None
    return result


def parse_error(data: bytes) -> ClientHelloError:
    try:
        ClientHelloParser().feed(data)
    except ClientHelloError as e:
        return e
    raise AssertionError("no ClientHelloError")


# -- the ClientHello parser ----------------------------------------------------


class CapturedHelloTests(SynchronousTestCase):
    def test_constants(self) -> None:
        """The peek gives a client 3 seconds and 64 KiB to send its hello."""
        self.assertEqual((PEEK_TIMEOUT_SECS, PEEK_MAX_BYTES), (3.0, 65536))
        self.assertEqual(CLIENT_HELLO_MAX_BODY, 16384)

    def test_every_version(self) -> None:
        """Real openssl hellos for TLS 1.0 to 1.3 yield their name and version."""
        for name, (server_name, version) in CAPTURED.items():
            data = fixture(name)
            result = parse_all(data)
            self.assertEqual(
                (result.server_name, result.tls_version, result.captured),
                (server_name, version, data),
                name,
            )

    def test_version_names(self) -> None:
        """Versions read as people write them; unknown ones as hex."""
        names = [parse_all(fixture(n)).tls_version_name for n in CAPTURED]
        self.assertEqual(names, ["TLS 1.0", "TLS 1.1", "TLS 1.2", "TLS 1.3", "TLS 1.2"])
        odd = ClientHelloResult(server_name=None, captured=b"", tls_version=0x7F1C)
        self.assertEqual(odd.tls_version_name, "0x7f1c")

    def test_no_sni(self) -> None:
        """A hello without the server_name extension parses with no name."""
        self.assertIsNone(parse_all(fixture("client_hello_no_sni.bin")).server_name)

    def test_repr_hides_bytes(self) -> None:
        """The result's repr shows the captured size, not the bytes."""
        result = parse_all(fixture("client_hello_tls1_2.bin"))
        self.assertIn("captured=<214 bytes>", repr(result))

    def test_name_is_lowercased_without_trailing_dot(self) -> None:
        """The name is normalized the way patterns are."""
        self.assertEqual(
            parse_all(client_hello(b"App.Example.COM.")).server_name, "app.example.com"
        )

    def test_hello_without_extensions(self) -> None:
        """An old-style hello with no extensions block has no name."""
        result = parse_all(records(handshake(hello_body(None, version=0x0301))))
        self.assertEqual((result.server_name, result.tls_version), (None, 0x0301))

    def test_supported_versions_ignores_grease(self) -> None:
        """TLS 1.3 is read from supported_versions, skipping GREASE values."""
        hello = client_hello(extra=versions_ext(0x7A7A, 0x0304, 0x0303))
        self.assertEqual(parse_all(hello).tls_version, 0x0304)

    def test_supported_versions_only_grease(self) -> None:
        """With nothing but GREASE offered, the legacy version stands."""
        self.assertEqual(parse_all(client_hello(extra=versions_ext(0x1A1A))).tls_version, 0x0303)

    def test_other_name_types_are_skipped(self) -> None:
        """Only a host_name entry counts; other name types are skipped."""
        names = bytes([7]) + u16(3) + b"xyz" + bytes([0]) + u16(5) + b"a.com"
        hello = records(handshake(hello_body(ext(0, u16(len(names)) + names))))
        self.assertEqual(parse_all(hello).server_name, "a.com")


class FragmentationTests(SynchronousTestCase):
    def test_byte_by_byte(self) -> None:
        """Fed one byte at a time, the hello completes on its last byte."""
        data = fixture("client_hello_tls1_3.bin")
        parser = ClientHelloParser()
        for i in range(len(data) - 1):
            self.assertIsNone(parser.feed(data[i : i + 1]), i)
        result = parser.feed(data[-1:])
        assert result is not None
        self.assertEqual((result.server_name, result.captured), ("tls13.example.com", data))

    def test_every_split_point(self) -> None:
        """A hello split in two reads anywhere parses the same."""
        data = fixture("client_hello_tls1_2.bin")
        for cut in range(len(data) + 1):
            parser = ClientHelloParser()
            first = parser.feed(data[:cut])
            if cut == len(data):
                self.assertIsNotNone(first)
                continue
            self.assertIsNone(first, cut)
            result = parser.feed(data[cut:])
            assert result is not None
            self.assertEqual((result.server_name, result.captured), ("tls12.example.com", data))

    def test_split_over_records(self) -> None:
        """A hello split over many small TLS records is reassembled."""
        for size in (1, 7, 64, 200):
            data = reframe(fixture("client_hello_tls1_3.bin"), size)
            self.assertGreater(len(data), len(fixture("client_hello_tls1_3.bin")))
            result = parse_all(data)
            self.assertEqual((result.server_name, result.captured), ("tls13.example.com", data))

    def test_split_over_records_and_reads(self) -> None:
        """Small records fed byte by byte: both kinds of split at once."""
        data = reframe(fixture("client_hello_tls1_0.bin"), 5)
        parser = ClientHelloParser()
        results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
        self.assertEqual(results[:-1], [None] * (len(data) - 1))
        last = results[-1]
        assert last is not None
        self.assertEqual(last.server_name, "tls10.example.com")

    def test_bytes_after_the_hello_are_captured(self) -> None:
        """Whatever arrived with the hello is kept for replay, verbatim."""
        data = fixture("client_hello_tls1_3.bin") + b"\x14\x03\x03\x00\x01\x01early"
        self.assertEqual(parse_all(data).captured, data)

    def test_empty_feed(self) -> None:
        """An empty read is simply more waiting."""
        parser = ClientHelloParser()
        self.assertIsNone(parser.feed(b""))
        self.assertIsNotNone(parser.feed(fixture("client_hello_tls1_2.bin")))

    def test_captured_so_far(self) -> None:
        """While waiting, the parser shows every byte fed so far."""
        parser = ClientHelloParser()
        parser.feed(b"\x16\x03")
        parser.feed(b"\x01")
        self.assertEqual(parser.captured, b"\x16\x03\x01")

    def test_finished_parser_refuses_more(self) -> None:
        """After a result or an error, feeding again is a programming error."""
        parser = ClientHelloParser()
        parser.feed(fixture("client_hello_tls1_2.bin"))
        self.assertRaises(RuntimeError, parser.feed, b"more")
        parser = ClientHelloParser()
        self.assertRaises(ClientHelloError, parser.feed, b"GET /")
        self.assertRaises(RuntimeError, parser.feed, b"\x16")

    def test_largest_hello(self) -> None:
        """A 16 KiB hello body, which needs two records, is accepted."""
        padding = CLIENT_HELLO_MAX_BODY - len(hello_body(sni_ext(b"big.example.com"))) - 4
        body = hello_body(sni_ext(b"big.example.com") + ext(21, bytes(padding)))
        self.assertEqual(len(body), CLIENT_HELLO_MAX_BODY)
        self.assertEqual(parse_all(records(handshake(body))).server_name, "big.example.com")

    def test_largest_hello_byte_by_byte(self) -> None:
        """A 16 KiB hello trickled one byte per read still parses."""
        padding = CLIENT_HELLO_MAX_BODY - len(hello_body(sni_ext(b"big.example.com"))) - 4
        data = records(handshake(hello_body(sni_ext(b"big.example.com") + ext(21, bytes(padding)))))
        parser = ClientHelloParser()
        results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
        self.assertEqual(results.count(None), len(data) - 1)
        last = results[-1]
        assert last is not None
        self.assertEqual((last.server_name, last.captured), ("big.example.com", data))


class MalformedHelloTests(SynchronousTestCase):
    def assertReason(self, data: bytes, reason: str) -> ClientHelloError:
        error = parse_error(data)
        self.assertEqual(error.reason, reason, error.detail)
        return error

    def test_not_tls(self) -> None:
        """Plain HTTP, an SSLv2 hello or an alert record are not TLS handshakes."""
        for data in (b"GET / HTTP/1.1\r\n", b"\x80\x2e\x01\x03\x01", b"\x15\x03\x01\x00\x02"):
            self.assertReason(data, "not_tls")

    def test_not_tls_on_first_byte(self) -> None:
        """The first byte is enough to give up: no waiting for a timeout."""
        self.assertEqual(parse_error(b"S").reason, "not_tls")

    def test_parse_failed(self) -> None:
        """Each structural fault is parse_failed, however early it shows."""
        good = hello_body(sni_ext(b"a.com"))
        cases = {
            "record version": b"\x16\x02\x00\x00\x05",
            "empty record": b"\x16\x03\x01\x00\x00",
            "oversized record": b"\x16\x03\x01\x40\x01",
            "not a ClientHello": b"\x16\x03\x01\x00\x40\x02",
            "other record mid-hello": records(handshake(good)[:10])
            + records(b"x", content_type=0x17),
            "legacy version": records(handshake(hello_body(b"", version=0x0200))),
            "short random": records(handshake(u16(0x0303) + bytes(10))),
            "long session id": records(handshake(hello_body(b"", session_id=bytes(33)))),
            "no cipher suites": records(handshake(hello_body(b"", suites=b""))),
            "odd cipher suites": records(handshake(hello_body(b"", suites=b"\x13"))),
            "no compression": records(handshake(hello_body(b"", compression=b""))),
            "bytes after extensions": records(handshake(good + b"\x00")),
            "extension overruns": records(handshake(hello_body(b"\x00\x00\x00\x09ab"))),
            "duplicate extension": records(handshake(hello_body(ext(5, b"") + ext(5, b"")))),
            "empty name list": records(handshake(hello_body(ext(0, u16(0))))),
            "two host names": records(handshake(hello_body(sni_ext(b"a.com", b"b.com")))),
            "empty host name": client_hello(b""),
            "host name is a dot": client_hello(b"."),
            "non-ASCII host name": client_hello("bücher.example".encode()),
            "space in host name": client_hello(b"a b.com"),
            "control char in host name": client_hello(b"a\x00.com"),
            "bytes after name list": records(handshake(hello_body(ext(0, u16(0) + b"x")))),
            "bad supported_versions": client_hello(extra=ext(43, b"\x03\x03\x04\x03")),
            "body length too short": records(handshake(good)[:3] + b"\x05" + good[:5]),
        }
        for what, data in cases.items():
            with self.subTest(what):
                self.assertReason(data, "parse_failed")

    def test_bad_message_type_fails_early(self) -> None:
        """A non-ClientHello handshake is refused from its first byte."""
        self.assertEqual(parse_error(b"\x16\x03\x01\x01\x00\x0b").reason, "parse_failed")

    def test_body_over_16k(self) -> None:
        """A hello body over 16 KiB is too_large as soon as its header arrives."""
        header = b"\x16\x03\x01\x40\x00" + b"\x01" + (CLIENT_HELLO_MAX_BODY + 1).to_bytes(3, "big")
        self.assertReason(header, "too_large")

    def test_over_64k_captured(self) -> None:
        """More than 64 KiB without a complete hello is too_large."""
        padding = 12000
        body = hello_body(sni_ext(b"a.com") + ext(21, bytes(padding)))
        data = records(handshake(body), size=1)
        self.assertGreater(len(data), PEEK_MAX_BYTES)
        parser = ClientHelloParser()
        with self.assertRaises(ClientHelloError) as raised:
            for i in range(0, len(data), 4096):
                parser.feed(data[i : i + 4096])
        self.assertEqual(raised.exception.reason, "too_large")
        self.assertEqual(len(parser.captured), PEEK_MAX_BYTES + 4096 - PEEK_MAX_BYTES % 4096)

    def test_byte_cap_is_configurable(self) -> None:
        """A smaller cap trips on the first read that crosses it."""
        parser = ClientHelloParser(max_bytes=100)
        data = fixture("client_hello_tls1_3.bin")
        self.assertIsNone(parser.feed(data[:100]))
        self.assertEqual(
            self.assertRaises(ClientHelloError, parser.feed, data[100:101]).reason, "too_large"
        )

    def test_complete_hello_beats_the_cap(self) -> None:
        """A hello that completes within one read is used even if that read crosses the cap."""
        data = fixture("client_hello_tls1_3.bin") + bytes(200)
        result = ClientHelloParser(max_bytes=300).feed(data)
        assert result is not None
        self.assertEqual(result.captured, data)

    def test_error_message(self) -> None:
        """The error carries the stable reason first, then the detail."""
        error = parse_error(b"GET")
        self.assertEqual(str(error), "not_tls: first byte 0x47 is not a TLS handshake record")


class ParserPropertyTests(SynchronousTestCase):
    @settings(derandomize=True, database=None, max_examples=500)
    @given(st.binary(max_size=600))
    def test_random_bytes(self, data: bytes) -> None:
        """Arbitrary bytes give a result, a wait or a ClientHelloError, never another error."""
        try:
            result = ClientHelloParser().feed(data)
        except ClientHelloError as e:
            self.assertIn(e.reason, ("not_tls", "parse_failed", "too_large"))
        else:
            if result is not None:
                self.assertEqual(result.captured, data)

    @settings(derandomize=True, database=None, max_examples=500)
    @given(st.binary(max_size=400), st.integers(0, 0xFFFF))
    def test_random_records(self, payload: bytes, length: int) -> None:
        """Random handshake records get past the first checks and still fail cleanly."""
        data = b"\x16\x03\x01" + u16(length) + b"\x01" + payload
        with contextlib.suppress(ClientHelloError):
            ClientHelloParser().feed(data)

    @settings(derandomize=True, database=None, max_examples=500)
    @given(
        st.sampled_from(sorted(CAPTURED)),
        st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=4),
    )
    def test_mutated_hellos(self, name: str, flips: list[tuple[int, int]]) -> None:
        """Real hellos with bytes overwritten never raise anything but ClientHelloError."""
        data = bytearray(fixture(name))
        for index, value in flips:
            data[index % len(data)] = value
        with contextlib.suppress(ClientHelloError):
            ClientHelloParser().feed(bytes(data))

    @settings(derandomize=True, database=None, max_examples=200)
    @given(st.sampled_from(sorted(CAPTURED)), st.lists(st.integers(1, 64), max_size=40))
    def test_any_chunking(self, name: str, sizes: list[int]) -> None:
        """However the reads are cut, the result is the same."""
        data = fixture(name)
        parser = ClientHelloParser()
        offset = 0
        result = None
        for size in [*sizes, len(data)]:
            result = parser.feed(data[offset : offset + size])
            offset += size
            if result is not None:
                break
        assert result is not None
        self.assertEqual((result.server_name, result.captured), (CAPTURED[name][0], data))


class CapturingProtocol(Protocol):
    """Feeds what a client sends to a parser; hangs up once it has the hello."""

    def __init__(self, found: Deferred[ClientHelloResult]) -> None:
        self.found = found
        self.parser = ClientHelloParser()
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        try:
            result = self.parser.feed(data)
        except ClientHelloError:
            assert self.transport is not None
            self.transport.loseConnection()
            self.found.errback(Failure())
            return
        if result is not None:
            assert self.transport is not None
            self.transport.loseConnection()
            self.found.callback(result)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


class LiveOpensslTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.openssl = shutil.which("openssl")
        if self.openssl is None:
            self.skipTest("openssl is not installed")

    @inlineCallbacks
    def peek(self, *args: str) -> Any:
        found: Deferred[ClientHelloResult] = Deferred()
        protocols: list[CapturingProtocol] = []

        def build() -> CapturingProtocol:
            protocols.append(CapturingProtocol(found))
            return protocols[-1]

        port = reactor.listenTCP(0, Factory.forProtocol(build), interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        address = f"{LOOPBACK}:{port.getHost().port}"
        assert self.openssl is not None
        yield getProcessOutputAndValue(
            self.openssl,
            ["s_client", "-connect", address, *args],
            env=dict(os.environ),
            reactor=reactor,
            stdinBytes=b"",
        )
        self.assertEqual(len(protocols), 1, "openssl did not connect")
        yield protocols[0].closed
        result = yield found
        return result

    @inlineCallbacks
    def assertPeek(self, name: str, version: int, *args: str) -> Any:
        result = yield self.peek("-servername", name, *args)
        self.assertEqual((result.server_name, result.tls_version), (name, version))

    def test_tls1_0(self) -> Any:
        """openssl's TLS 1.0 hello is routed by its name."""
        return self.assertPeek(
            "live10.example.com", 0x0301, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0"
        )

    def test_tls1_1(self) -> Any:
        """openssl's TLS 1.1 hello is routed by its name."""
        return self.assertPeek(
            "live11.example.com", 0x0302, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"
        )

    def test_tls1_2(self) -> Any:
        """openssl's TLS 1.2 hello is routed by its name."""
        return self.assertPeek("live12.example.com", 0x0303, "-tls1_2")

    def test_tls1_3(self) -> Any:
        """openssl's TLS 1.3 hello is routed by its name."""
        return self.assertPeek("live13.example.com", 0x0304, "-tls1_3")

    @inlineCallbacks
    def test_no_sni(self) -> Any:
        """openssl with -noservername sends a hello the parser reads as no SNI."""
        result = yield self.peek("-noservername")
        self.assertIsNone(result.server_name)


# -- patterns ------------------------------------------------------------------

LONG_NAME = ".".join(["a" * 63] * 3 + ["b" * 61])


class PatternTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        """Well-formed patterns come back trimmed and lowercased."""
        cases = {
            "a.example.com": "a.example.com",
            "  App.Example.COM\t": "app.example.com",
            "*.example.com": "*.example.com",
            "*.Example.Com ": "*.example.com",
            "*.b.example.com": "*.b.example.com",
            "localhost": "localhost",
            "a-b.x9.example": "a-b.x9.example",
            "123.example.com": "123.example.com",
            "xn--bcher-kva.example": "xn--bcher-kva.example",
            "x" * 63 + ".com": "x" * 63 + ".com",
            LONG_NAME: LONG_NAME,
            "*." + LONG_NAME[2:]: "*." + LONG_NAME[2:],
        }
        self.assertEqual(len(LONG_NAME), 253)
        for raw, normalized in cases.items():
            self.assertEqual(normalize_sni_pattern(raw), normalized, raw)

    def test_rejected(self) -> None:
        """Every grammar rule has its own message saying what to fix."""
        cases = {
            "": "is empty",
            "   ": "is empty",
            LONG_NAME + "b": "at most 253",
            "*.": 'nothing after "*."',
            "*": "not the whole first label",
            "**.example.com": "not the whole first label",
            "*a.example.com": "not the whole first label",
            "a*.example.com": "not the whole first label",
            "a.*.example.com": "not the whole first label",
            "*.*.example.com": "not the whole first label",
            "example.*": "not the whole first label",
            "*.com": "at least two labels",
            "*.localhost": "at least two labels",
            "bücher.example": "punycode",
            ".example.com": "empty label",
            "example.com.": "empty label",
            "a..example.com": "empty label",
            "*..example.com": "empty label",
            "x" * 64 + ".com": "at most 63",
            "a_b.example.com": "letters, digits and hyphens",
            "a b.example.com": "letters, digits and hyphens",
            "a/b.example.com": "letters, digits and hyphens",
            "-a.example.com": "hyphen",
            "a-.example.com": "hyphen",
            "*.-a.example.com": "hyphen",
        }
        for raw, fragment in cases.items():
            with self.subTest(raw):
                with self.assertRaises(SniError) as raised:
                    normalize_sni_pattern(raw)
                self.assertEqual(raised.exception.code, MALFORMED)
                self.assertIn(fragment, raised.exception.message)

    def test_error_text(self) -> None:
        """The exception's text is the code then the message, quoting the pattern."""
        with self.assertRaises(SniError) as raised:
            normalize_sni_pattern("*.COM")
        self.assertTrue(str(raised.exception).startswith(f"{MALFORMED}: '*.com' would match"))

    def test_control_characters_are_escaped(self) -> None:
        """A pattern with control characters stays one printable line in the message."""
        with self.assertRaises(SniError) as raised:
            normalize_sni_pattern("a\nb.com")
        self.assertTrue(raised.exception.message.isprintable())

    def test_idempotent(self) -> None:
        """Normalizing a normalized pattern changes nothing."""
        for raw in (" A.Example.com", "*.X.example.COM"):
            once = normalize_sni_pattern(raw)
            self.assertEqual(normalize_sni_pattern(once), once)


# -- the route table -----------------------------------------------------------


def table(*routes: tuple[str | None, str]) -> SniRouteTable[str]:
    t: SniRouteTable[str] = SniRouteTable()
    for pattern, value in routes:
        t.add(pattern, value)
    return t


class RouteTableTests(SynchronousTestCase):
    def test_exact(self) -> None:
        """An exact pattern matches only that name, ignoring case and a trailing dot."""
        t = table(("a.example.com", "A"))
        self.assertEqual(t.lookup("a.example.com"), ("A", "exact"))
        self.assertEqual(t.lookup("A.Example.Com."), ("A", "exact"))
        self.assertIsNone(t.lookup("b.example.com"))

    def test_wildcard_single_label(self) -> None:
        """*.example.com matches one label below it, not the apex nor two labels."""
        t = table(("*.example.com", "W"))
        self.assertEqual(t.lookup("a.example.com"), ("W", "wildcard"))
        self.assertIsNone(t.lookup("example.com"))
        self.assertIsNone(t.lookup("a.b.example.com"))
        self.assertIsNone(t.lookup("aexample.com"))
        self.assertIsNone(t.lookup(".example.com"))

    def test_exact_beats_wildcard(self) -> None:
        """A name with its own exact route ignores the wildcard covering it."""
        t = table(("*.example.com", "W"), ("a.example.com", "A"))
        self.assertEqual(t.lookup("a.example.com"), ("A", "exact"))
        self.assertEqual(t.lookup("b.example.com"), ("W", "wildcard"))

    def test_longest_wildcard(self) -> None:
        """The wildcard with the longest parent wins; each covers one label."""
        t = table(("*.example.com", "short"), ("*.b.example.com", "long"))
        self.assertEqual(t.lookup("a.b.example.com"), ("long", "wildcard"))
        self.assertEqual(t.lookup("b.example.com"), ("short", "wildcard"))
        self.assertIsNone(t.lookup("x.a.b.example.com"))

    def test_fallback(self) -> None:
        """Unmatched names and hellos without SNI go to the fallback."""
        t = table(("a.example.com", "A"), ("*.example.com", "W"), (None, "F"))
        self.assertEqual(t.lookup("other.org"), ("F", "fallback"))
        self.assertEqual(t.lookup("a.b.example.com"), ("F", "fallback"))
        self.assertEqual(t.lookup(None), ("F", "fallback"))

    def test_miss(self) -> None:
        """Without a fallback, an unmatched name or a missing SNI is a miss."""
        t = table(("a.example.com", "A"), ("*.example.com", "W"))
        self.assertIsNone(t.lookup("other.org"))
        self.assertIsNone(t.lookup(None))
        self.assertIsNone(table().lookup("a.example.com"))

    def test_add_normalizes(self) -> None:
        """Patterns are normalized on the way in."""
        t = table(("  A.Example.COM ", "A"), ("*.X.Example.com", "W"))
        self.assertEqual(t.lookup("a.example.com"), ("A", "exact"))
        self.assertEqual(t.lookup("b.x.example.com"), ("W", "wildcard"))
        self.assertEqual(sorted(p or "" for p, _ in t), ["*.x.example.com", "a.example.com"])

    def test_malformed_pattern(self) -> None:
        """A malformed pattern is refused with the grammar's code."""
        t = table()
        with self.assertRaises(SniError) as raised:
            t.add("*.com", "X")
        self.assertEqual(raised.exception.code, MALFORMED)
        self.assertEqual(len(t), 0)

    def test_duplicate_route(self) -> None:
        """The same pattern twice, in any case, is a route conflict; the first stays."""
        cases = [
            ("a.example.com", "A.EXAMPLE.com", "a.example.com", "exact"),
            ("*.example.com", " *.Example.com", "x.example.com", "wildcard"),
        ]
        for first, second, name, kind in cases:
            t = table((first, "1"))
            with self.assertRaises(SniError) as raised:
                t.add(second, "2")
            self.assertEqual(raised.exception.code, ROUTE_DUPLICATE)
            self.assertIn("change its sni_pattern", raised.exception.message)
            self.assertEqual(t.lookup(name), ("1", kind))
            self.assertEqual(len(t), 1)

    def test_exact_and_wildcard_of_same_parent_coexist(self) -> None:
        """example.com and *.example.com are different routes."""
        t = table(("example.com", "apex"), ("*.example.com", "sub"))
        self.assertEqual(t.lookup("example.com"), ("apex", "exact"))
        self.assertEqual(t.lookup("www.example.com"), ("sub", "wildcard"))

    def test_duplicate_fallback(self) -> None:
        """A second fallback is refused; the first stays."""
        t = table((None, "F"))
        with self.assertRaises(SniError) as raised:
            t.add(None, "G")
        self.assertEqual(raised.exception.code, FALLBACK_DUPLICATE)
        self.assertEqual(t.lookup(None), ("F", "fallback"))

    def test_remove(self) -> None:
        """Removing a value drops its routes and leaves the others."""
        t = table(("a.example.com", "A"), ("*.example.com", "W"), (None, "F"))
        self.assertEqual(len(t), 3)
        t.remove("A")
        self.assertEqual(t.lookup("a.example.com"), ("W", "wildcard"))
        t.remove("W")
        self.assertEqual(t.lookup("a.example.com"), ("F", "fallback"))
        t.remove("F")
        self.assertIsNone(t.lookup("a.example.com"))
        self.assertEqual(len(t), 0)

    def test_remove_frees_the_pattern(self) -> None:
        """After removal the same pattern and a new fallback can be added again."""
        t = table(("a.example.com", "A"), (None, "F"))
        t.remove("A")
        t.remove("F")
        t.add("a.example.com", "B")
        t.add(None, "G")
        self.assertEqual(
            (t.lookup("a.example.com"), t.lookup(None)), (("B", "exact"), ("G", "fallback"))
        )

    def test_remove_unknown(self) -> None:
        """Removing a value the table does not hold is a KeyError."""
        self.assertRaises(KeyError, table(("a.example.com", "A")).remove, "B")

    def test_iteration(self) -> None:
        """Iterating lists every route, the fallback with no pattern."""
        t = table(("a.example.com", "A"), ("*.example.com", "W"), (None, "F"))
        self.assertEqual(list(t), [("a.example.com", "A"), ("*.example.com", "W"), (None, "F")])

    def test_counters(self) -> None:
        """Each lookup outcome counts under its match kind; None is a miss."""
        t = table(("a.example.com", "A"), ("*.example.com", "W"))
        counters = SniCounters()
        for name in ("a.example.com", "b.example.com", "c.example.com", "nope.org"):
            match = t.lookup(name)
            counters.count(match[1] if match else None)
        counters.count("fallback")
        self.assertEqual(counters.snapshot(), {"exact": 1, "wildcard": 2, "fallback": 1, "miss": 1})


# -- rule conflicts ------------------------------------------------------------
