"""
Tests for L{portunus.control.tls}: the generated certificate, the files on
disk, fingerprints and pins, and handshakes between the server options and
the pinned client, in memory (L{iosim}) and against C{openssl}.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from portunus.control.tls import (
    CERT_VALIDITY,
    MISMATCH_MESSAGE,
    CertificateInfo,
    PinMismatch,
    PinnedClientTLS,
    ensure_server_certificate,
    fingerprint_sha256,
    generate_self_signed,
    load_certificate_info,
    normalise_pin,
    server_tls_options,
    write_file_atomically,
)
from portunus.errors import PortunusError
from tests._net import LOOPBACK

reactor: Any = _reactor

# One pair for the whole module: key generation is cheap, but there is no
# reason to repeat it in every handshake test.
CERT_PEM, KEY_PEM = generate_self_signed("control.example")
CERT = x509.load_pem_x509_certificate(CERT_PEM)
FINGERPRINT = fingerprint_sha256(CERT.public_bytes(serialization.Encoding.DER))
OTHER_CERT_PEM, OTHER_KEY_PEM = generate_self_signed("control.example")


def sans_of(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class GenerateTests(SynchronousTestCase):
    """L{generate_self_signed} makes the certificate Portunus makes."""

    def test_key_is_p256(self) -> None:
        """The key is ECDSA on P-256 and matches the certificate."""
        key = serialization.load_pem_private_key(KEY_PEM, password=None)
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        self.assertEqual(
            key.public_key().public_numbers(),
            CERT.public_key().public_numbers(),  # type: ignore[union-attr]
        )
        self.assertIn(b"BEGIN PRIVATE KEY", KEY_PEM)

    def test_subject_and_issuer(self) -> None:
        """CN is the host name and the certificate is self-issued."""
        self.assertEqual(
            CERT.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "control.example",
        )
        self.assertEqual(CERT.issuer, CERT.subject)

    def test_validity_ten_years(self) -> None:
        """Valid from (just before) the issue time for ten years."""
        now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        cert = x509.load_pem_x509_certificate(generate_self_signed("h", now=now)[0])
        self.assertEqual(cert.not_valid_after_utc, now + CERT_VALIDITY)
        self.assertEqual(CERT_VALIDITY, timedelta(days=3650))
        self.assertLessEqual(cert.not_valid_before_utc, now)
        self.assertGreater(cert.not_valid_before_utc, now - timedelta(hours=1))

    def test_default_sans(self) -> None:
        """Host name, localhost, 127.0.0.1 and ::1, the IPs as IP SANs."""
        self.assertEqual(
            sans_of(CERT),
            [
                x509.DNSName("control.example"),
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ],
        )

    def test_extra_hosts_typed_and_deduplicated(self) -> None:
        """
        Extra IP literals become IP SANs (brackets allowed), names DNS SANs;
        a host given twice, in another case or spelling, appears once.
        """
        cert = x509.load_pem_x509_certificate(
            generate_self_signed(
                "Edge.Example",
                [
                    "192.0.2.7",
                    "edge.example",
                    "LOCALHOST",
                    "[::1]",
                    "0:0::1",
                    "[2001:db8::1]",
                    "a.b",
                ],
            )[0]
        )
        self.assertEqual(
            sans_of(cert),
            [
                x509.DNSName("edge.example"),
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
                x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
                x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
                x509.DNSName("a.b"),
            ],
        )

    def test_ip_hostname(self) -> None:
        """An IP host name is the CN and an IP SAN, not a DNS SAN."""
        cert = x509.load_pem_x509_certificate(generate_self_signed("203.0.113.5")[0])
        self.assertIn(x509.IPAddress(ipaddress.ip_address("203.0.113.5")), sans_of(cert))
        self.assertNotIn(x509.DNSName("203.0.113.5"), sans_of(cert))

    def test_bad_host_refused(self) -> None:
        """Something that is neither a name nor an IP is refused."""
        for bad in ("", "host:7443", "a b", "http://x"):
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, generate_self_signed, "ok", [bad])

    def test_each_call_new_key(self) -> None:
        """Two calls never share a key (or a fingerprint)."""
        self.assertNotEqual(KEY_PEM, OTHER_KEY_PEM)
        other = x509.load_pem_x509_certificate(OTHER_CERT_PEM)
        self.assertNotEqual(
            FINGERPRINT, fingerprint_sha256(other.public_bytes(serialization.Encoding.DER))
        )


class PinTests(SynchronousTestCase):
    """L{fingerprint_sha256} and L{normalise_pin}."""

    def test_fingerprint(self) -> None:
        """Lowercase hex SHA-256 of the bytes."""
        self.assertEqual(
            fingerprint_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )

    def test_normalise_forms(self) -> None:
        """Case, a C{sha256:} prefix (any case) and blanks are all accepted."""
        for text in (
            FINGERPRINT,
            FINGERPRINT.upper(),
            "sha256:" + FINGERPRINT,
            "SHA256:" + FINGERPRINT.upper(),
            "  sha256:" + FINGERPRINT + "\n",
        ):
            with self.subTest(text=text):
                self.assertEqual(normalise_pin(text), FINGERPRINT)

    def test_normalise_refuses(self) -> None:
        """Anything but 64 hex digits is a ValueError."""
        for text in (
            "",
            "sha256:",
            FINGERPRINT[:-1],
            FINGERPRINT + "0",
            FINGERPRINT[:-1] + "g",
            "sha1:" + FINGERPRINT,
            ":".join(FINGERPRINT[i : i + 2] for i in range(0, 64, 2)),
        ):
            with self.subTest(text=text):
                self.assertRaises(ValueError, normalise_pin, text)

    def test_matches_openssl(self) -> None:
        """The fingerprint is the one C{openssl x509 -fingerprint -sha256} prints."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise self.skipTest("the openssl command is not installed")
        out = subprocess.run(
            [openssl, "x509", "-noout", "-fingerprint", "-sha256"],
            input=CERT_PEM,
            capture_output=True,
            check=True,
        ).stdout.decode()
        self.assertEqual(out.strip().split("=", 1)[1].replace(":", "").lower(), FINGERPRINT)


class FilesTests(SynchronousTestCase):
    """L{ensure_server_certificate}, L{load_certificate_info}, atomic writes."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.cert = os.path.join(self.dir, "server.crt")
        self.key = os.path.join(self.dir, "server.key")

    def write(self, path: str, data: bytes, mode: int) -> None:
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)

    def test_generates_when_missing(self) -> None:
        """Both files are written, key 0600, and the info describes them."""
        info = ensure_server_certificate(self.cert, self.key, "ctl.example", ["198.51.100.1"])
        self.assertTrue(info.generated)
        self.assertEqual(mode_of(self.key), 0o600)
        self.assertEqual(mode_of(self.cert) & 0o600, 0o600)
        with open(self.cert, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(
            info.fingerprint, fingerprint_sha256(cert.public_bytes(serialization.Encoding.DER))
        )
        self.assertEqual(
            info.sans, ("ctl.example", "localhost", "127.0.0.1", "::1", "198.51.100.1")
        )
        self.assertEqual(info.not_after, cert.not_valid_after_utc)
        self.assertEqual((info.cert_path, info.key_path), (self.cert, self.key))
        self.assertEqual(sorted(os.listdir(self.dir)), ["server.crt", "server.key"])

    def test_key_private_despite_umask(self) -> None:
        """A permissive umask does not widen the key file."""
        old = os.umask(0)
        try:
            ensure_server_certificate(self.cert, self.key, "h")
        finally:
            os.umask(old)
        self.assertEqual(mode_of(self.key), 0o600)

    def test_creates_parent_directories(self) -> None:
        """A data directory that does not exist yet is created."""
        cert = os.path.join(self.dir, "a", "b", "server.crt")
        key = os.path.join(self.dir, "a", "b", "server.key")
        ensure_server_certificate(cert, key, "h")
        self.assertTrue(os.path.isfile(key))

    def test_loads_existing(self) -> None:
        """Existing files are loaded, not replaced."""
        first = ensure_server_certificate(self.cert, self.key, "h")
        second = ensure_server_certificate(self.cert, self.key, "other-name", ["192.0.2.1"])
        self.assertFalse(second.generated)
        self.assertEqual(second.fingerprint, first.fingerprint)
        self.assertEqual(second.cert_pem, first.cert_pem)
        self.assertEqual(second.key_pem, first.key_pem)

    def test_operator_pair(self) -> None:
        """An operator's own pair (0400 key) is used as it is."""
        self.write(self.cert, CERT_PEM, 0o644)
        self.write(self.key, KEY_PEM, 0o400)
        info = ensure_server_certificate(self.cert, self.key, "h")
        self.assertEqual(info.fingerprint, FINGERPRINT)
        self.assertFalse(info.generated)

    def test_refuses_open_key(self) -> None:
        """
        A key with any group or other bit is refused with
        C{startup.tls_key_permissions}, and the message says how to fix it.
        """
        self.write(self.cert, CERT_PEM, 0o644)
        for mode in (0o644, 0o640, 0o604, 0o610, 0o601, 0o660):
            with self.subTest(mode=oct(mode)):
                os.chmod(self.key if os.path.exists(self.key) else self.cert, 0o644)
                self.write(self.key, KEY_PEM, mode)
                e = self.assertRaises(
                    PortunusError, ensure_server_certificate, self.cert, self.key, "h"
                )
                self.assertEqual(e.code, "startup.tls_key_permissions")
                self.assertIn(f"chmod 600 {self.key}", e.message)
                self.assertEqual(e.fields["path"], self.key)

    def test_refuses_mismatched_pair(self) -> None:
        """A key that belongs to another certificate is refused."""
        self.write(self.cert, CERT_PEM, 0o644)
        self.write(self.key, OTHER_KEY_PEM, 0o600)
        e = self.assertRaises(PortunusError, ensure_server_certificate, self.cert, self.key, "h")
        self.assertEqual(e.code, "startup.tls_material_invalid")
        self.assertIn(self.key, e.message)
        self.assertIn(self.cert, e.message)

    def test_refuses_garbage_cert(self) -> None:
        """A certificate file that does not parse is refused, naming it."""
        self.write(self.cert, b"not a certificate\n", 0o644)
        self.write(self.key, KEY_PEM, 0o600)
        e = self.assertRaises(PortunusError, ensure_server_certificate, self.cert, self.key, "h")
        self.assertEqual(e.code, "startup.tls_material_invalid")
        self.assertEqual(e.fields["path"], self.cert)
        self.assertIn(self.cert, e.message)

    def test_refuses_garbage_key(self) -> None:
        """A key file that does not parse, is encrypted or cannot sign is refused, naming it."""
        encrypted = serialization.load_pem_private_key(KEY_PEM, None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
        self.write(self.cert, CERT_PEM, 0o644)
        for data in (
            b"",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            encrypted,
            x25519.X25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ):
            with self.subTest(data=data[:30]):
                self.write(self.key, data, 0o600)
                e = self.assertRaises(
                    PortunusError, ensure_server_certificate, self.cert, self.key, "h"
                )
                self.assertEqual(e.code, "startup.tls_material_invalid")
                self.assertEqual(e.fields["path"], self.key)
                self.assertIn(self.key, e.message)

    def test_refuses_half_pair(self) -> None:
        """
        With only one of the two files present nothing is generated (that
        would orphan or overwrite the other) and the missing one is named.
        """
        self.write(self.key, KEY_PEM, 0o600)
        e = self.assertRaises(PortunusError, ensure_server_certificate, self.cert, self.key, "h")
        self.assertEqual(e.code, "startup.tls_material_invalid")
        self.assertEqual(e.fields["path"], self.cert)
        with open(self.key, "rb") as f:
            self.assertEqual(f.read(), KEY_PEM)
        os.unlink(self.key)
        self.write(self.cert, CERT_PEM, 0o644)
        e = self.assertRaises(PortunusError, ensure_server_certificate, self.cert, self.key, "h")
        self.assertEqual(e.fields["path"], self.key)
        self.assertFalse(os.path.exists(self.key))

    def test_load_missing(self) -> None:
        """Loading a file that is not there is a material error naming it."""
        e = self.assertRaises(PortunusError, load_certificate_info, self.cert, self.key)
        self.assertEqual(e.code, "startup.tls_material_invalid")
        self.assertIn(self.key, e.message)

    def test_error_codes_registered(self) -> None:
        """Both codes are in the registry with the config exit code."""
        for code in ("startup.tls_key_permissions", "startup.tls_material_invalid"):
            e = PortunusError(code, "x")
            self.assertTrue(e.hint)

    def test_repr_hides_key(self) -> None:
        """The info's repr shows neither PEM."""
        info = ensure_server_certificate(self.cert, self.key, "h")
        self.assertNotIn("PRIVATE", repr(info))
        self.assertNotIn(info.key_pem.decode()[40:80], repr(info))
        self.assertIsInstance(info, CertificateInfo)

    def test_atomic_write_replaces(self) -> None:
        """The new content replaces the old, with the mode asked, no leftovers."""
        path = os.path.join(self.dir, "f")
        self.write(path, b"old", 0o644)
        write_file_atomically(path, b"new", 0o600)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(mode_of(path), 0o600)
        self.assertEqual(os.listdir(self.dir), ["f"])

    def test_atomic_write_failure_leaves_old(self) -> None:
        """If the write fails, the old file stays and no temporary file is left."""
        path = os.path.join(self.dir, "f")
        self.write(path, b"old", 0o600)
        self.assertRaises(TypeError, write_file_atomically, path, "not bytes", 0o600)  # type: ignore[arg-type]
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(os.listdir(self.dir), ["f"])


class Recorder(Protocol):
    """
    Writes C{greeting} on connect (then hangs up if C{hang_up}); records
    what arrives and how the connection ended.
    """

    def __init__(self, greeting: bytes = b"", hang_up: bool = False) -> None:
        self.greeting = greeting
        self.hang_up = hang_up
        self.received = b""
        self.reason: Failure | None = None
        self.first_data: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]
        if self.hang_up:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.first_data.called:
            self.first_data.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason
        self.lost.callback(None)


class Handshake:
    """A server and a pinned client meeting in memory."""

    def __init__(
        self,
        pin: str,
        cert_pem: bytes = CERT_PEM,
        key_pem: bytes = KEY_PEM,
        server_name: str | None = None,
    ) -> None:
        self.clock = Clock()
        self.server = Recorder(b"welcome")
        self.client = Recorder(b"secret-token")
        self.creator = PinnedClientTLS(pin, server_name)
        server_factory = TLSMemoryBIOFactory(
            server_tls_options(cert_pem, key_pem),
            False,
            Factory.forProtocol(lambda: self.server),
            clock=self.clock,
        )
        client_factory = TLSMemoryBIOFactory(
            self.creator, True, Factory.forProtocol(lambda: self.client), clock=self.clock
        )
        self.client_tls: TLSMemoryBIOProtocol
        self.server_tls: TLSMemoryBIOProtocol
        self.pump: IOPump
        self.client_tls, self.server_tls, self.pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            greet=False,
            clock=self.clock,
        )
        self.pump.flush()
        # Let the write aggregators run, then deliver what they wrote.
        self.clock.advance(1)
        self.pump.flush()


class HandshakeTests(SynchronousTestCase):
    """L{server_tls_options} and L{PinnedClientTLS} in memory."""

    def test_interface(self) -> None:
        """The pinned creator provides what wrapClientTLS needs."""
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, PinnedClientTLS(FINGERPRINT)))

    def test_bad_pin_refused_up_front(self) -> None:
        """A malformed pin is a ValueError before any connection."""
        self.assertRaises(ValueError, PinnedClientTLS, "abc")

    def test_right_pin_exchanges_data(self) -> None:
        """With the right pin both sides see each other's bytes over TLS 1.3."""
        h = Handshake("SHA256:" + FINGERPRINT.upper())
        self.assertEqual(h.server.received, b"secret-token")
        self.assertEqual(h.client.received, b"welcome")
        self.assertIsNone(h.client.reason)
        self.assertIsNone(h.creator.last_mismatch)
        self.assertEqual(h.client_tls.getHandle().get_protocol_version_name(), "TLSv1.3")

    def test_wrong_pin_fails_handshake(self) -> None:
        """
        With another pin the handshake fails: the server's application never
        gets a byte and the client's sees a L{PinMismatch} with both
        fingerprints.
        """
        wrong = "ab" * 32
        h = Handshake(wrong)
        self.assertEqual(h.server.received, b"")
        self.assertEqual(h.client.received, b"")
        assert h.client.reason is not None and h.server.reason is not None
        mismatch = h.client.reason.value
        self.assertIsInstance(mismatch, PinMismatch)
        assert isinstance(mismatch, PinMismatch)
        self.assertEqual((mismatch.expected, mismatch.got), (wrong, FINGERPRINT))
        self.assertIn(MISMATCH_MESSAGE, str(mismatch))
        self.assertIn(f"expected {wrong}, got {FINGERPRINT}", str(mismatch))
        self.assertIs(h.creator.last_mismatch, mismatch)
        # The server saw a failed handshake, not a clean connection.
        self.assertIsInstance(h.server.reason.value, SSL.Error)
        self.assertFalse(h.server_tls._handshakeDone)

    def test_other_server_same_name(self) -> None:
        """A server with a different key for the same name is refused."""
        h = Handshake(FINGERPRINT, OTHER_CERT_PEM, OTHER_KEY_PEM, server_name="control.example")
        self.assertEqual(h.server.received, b"")
        assert h.client.reason is not None
        self.assertIsInstance(h.client.reason.value, PinMismatch)

    def test_no_hostname_check(self) -> None:
        """
        The name dialled does not matter, only the pin: a certificate for
        control.example is accepted when dialling another name.
        """
        h = Handshake(FINGERPRINT, server_name="elsewhere.example")
        self.assertEqual(h.server.received, b"secret-token")
        self.assertEqual(h.server_tls.getHandle().get_servername(), b"elsewhere.example")

    def test_no_sni_for_ip(self) -> None:
        """An IP literal is not sent as SNI (TLS forbids it)."""
        h = Handshake(FINGERPRINT, server_name="127.0.0.1")
        self.assertEqual(h.server.received, b"secret-token")
        self.assertIsNone(h.server_tls.getHandle().get_servername())

    def test_chain_above_leaf_ignored(self) -> None:
        """
        Extra certificates the server sends after its leaf do not change the
        decision: the pin is on the leaf.
        """
        h = Handshake(FINGERPRINT, CERT_PEM + OTHER_CERT_PEM)
        self.assertEqual(h.server.received, b"secret-token")
        h = Handshake(
            fingerprint_sha256(
                x509.load_pem_x509_certificate(OTHER_CERT_PEM).public_bytes(
                    serialization.Encoding.DER
                )
            ),
            CERT_PEM + OTHER_CERT_PEM,
        )
        self.assertEqual(h.server.received, b"")

    def test_handshake_done_check(self) -> None:
        """
        The check at handshake completion (for paths that skip the verify
        callback) fails verification when the peer is not the pinned one,
        or shows no certificate, and leaves a matching peer alone.
        """

        class FakeConnection:
            def __init__(self, peer: x509.Certificate | None) -> None:
                self.peer = peer
                self.failed: list[Failure] = []

            def get_peer_certificate(self, as_cryptography: bool) -> x509.Certificate | None:
                return self.peer

            def get_app_data(self) -> FakeConnection:
                return self

            def failVerification(self, reason: Failure) -> None:
                self.failed.append(reason)

        creator = PinnedClientTLS(FINGERPRINT)
        other = x509.load_pem_x509_certificate(OTHER_CERT_PEM)
        for peer, fails in ((CERT, False), (other, True), (None, True)):
            conn = FakeConnection(peer)
            creator._info(conn, SSL.SSL_CB_HANDSHAKE_DONE, 1)  # type: ignore[arg-type]
            creator._info(conn, SSL.SSL_CB_HANDSHAKE_START, 1)  # type: ignore[arg-type]
            self.assertEqual(len(conn.failed), 1 if fails else 0)
            if fails:
                self.assertIsInstance(conn.failed[0].value, PinMismatch)
        self.assertIsNone(creator.last_mismatch.got)  # type: ignore[union-attr]

    def test_server_options_refuse_mismatch(self) -> None:
        """server_tls_options refuses a key that is not the certificate's."""
        self.assertRaises(ValueError, server_tls_options, CERT_PEM, OTHER_KEY_PEM)

    def test_server_requests_no_client_cert(self) -> None:
        """The server context does not ask for a client certificate."""
        ctx = server_tls_options(CERT_PEM, KEY_PEM).getContext()
        self.assertEqual(ctx.get_verify_mode(), SSL.VERIFY_NONE)


class RealSocketTests(TestCase):
    """The server options and the pinned client over real loopback sockets."""

    def setUp(self) -> None:
        self.servers: list[Recorder] = []
        self.greeting = b"hello from portunus\n"
        self.hang_up = False

    def new_server(self) -> Recorder:
        server = Recorder(self.greeting, self.hang_up)
        self.servers.append(server)
        return server

    @inlineCallbacks
    def listen(self) -> Any:
        endpoint = SSL4ServerEndpoint(
            reactor, 0, server_tls_options(CERT_PEM, KEY_PEM), interface=LOOPBACK
        )
        port = yield endpoint.listen(Factory.forProtocol(self.new_server))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def s_client(self, port: int, *extra: str) -> Deferred[tuple[bytes, bytes, int]]:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise self.skipTest("the openssl command is not installed")
        return getProcessOutputAndValue(  # type: ignore[no-any-return]
            openssl,
            ["s_client", "-connect", f"{LOOPBACK}:{port}", "-ign_eof", *extra],
            env={"PATH": os.environ.get("PATH", "")},
            reactor=reactor,
            stdinBytes=b"",
        )

    @inlineCallbacks
    def test_openssl_s_client(self) -> Any:
        """
        C{openssl s_client} completes a TLS 1.2+ handshake with the server,
        sees the generated certificate and the server's bytes.
        """
        self.hang_up = True
        port = yield self.listen()
        out, err, code = yield self.s_client(port, "-showcerts")
        text = out.decode(errors="replace")
        self.assertEqual(code, 0, err.decode(errors="replace"))
        self.assertIn("hello from portunus", text)
        self.assertRegex(text, r"Protocol\s*:\s*TLSv1\.[23]")
        seen = x509.load_pem_x509_certificates(text.encode())[0]
        self.assertEqual(
            fingerprint_sha256(seen.public_bytes(serialization.Encoding.DER)), FINGERPRINT
        )
        yield self.servers[0].lost

    @inlineCallbacks
    def test_openssl_tls11_refused(self) -> Any:
        """A TLS 1.1 client is refused, even one that allows legacy ciphers."""
        port = yield self.listen()
        out, err, code = yield self.s_client(port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"hello from portunus", out)
        self.assertIn(b"alert protocol version", err)
        yield self.servers[0].lost
        self.assertEqual(self.servers[0].received, b"")

    @inlineCallbacks
    def test_wrap_client_tls(self) -> Any:
        """
        wrapClientTLS with the pinned creator talks to the server over TCP;
        with a wrong pin the connection ends in a L{PinMismatch} and the
        server's application sees nothing.
        """
        port = yield self.listen()
        client = Recorder(b"token\n")
        endpoint = wrapClientTLS(
            PinnedClientTLS(FINGERPRINT), TCP4ClientEndpoint(reactor, LOOPBACK, port)
        )
        yield connectProtocol(endpoint, client)
        yield client.first_data
        self.assertEqual(client.received, b"hello from portunus\n")
        yield self.servers[0].first_data
        self.assertEqual(self.servers[0].received, b"token\n")
        client.transport.loseConnection()  # type: ignore[union-attr]
        yield client.lost
        yield self.servers[0].lost

        bad = Recorder(b"token\n")
        endpoint = wrapClientTLS(
            PinnedClientTLS("00" * 32), TCP4ClientEndpoint(reactor, LOOPBACK, port)
        )
        yield connectProtocol(endpoint, bad)
        yield bad.lost
        assert bad.reason is not None
        self.assertIsInstance(bad.reason.value, PinMismatch)
        self.assertEqual(bad.reason.value.got, FINGERPRINT)
        yield self.servers[1].lost
        self.assertEqual(self.servers[1].received, b"")
