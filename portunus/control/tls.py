"""
TLS for the control link: the server's self-signed certificate and the
client's fingerprint pin.

The control plane needs no certificate authority.  On first start the
server makes itself an ECDSA P-256 certificate valid for ten years
(L{ensure_server_certificate}); the enroll URI carries the SHA-256 of that
certificate's DER encoding, and each client accepts the server iff the leaf
certificate it is shown hashes to exactly that value (L{PinnedClientTLS}).
There is no chain check and no host name check: the pin is the whole trust
decision, as in Portunus (reference inventory §3.1).

The pin is checked inside the handshake, from OpenSSL's verify callback, so a
wrong server fails the handshake before the client has sent a single
application byte (the enrollment code and the bearer token are such bytes).
The failure reaches the application protocol's C{connectionLost} as a
L{PinMismatch} carrying the expected and the observed fingerprint, which the
client logs as C{control.tls_pinned_mismatch}.

The server's key file must not be readable by group or others; a looser
file is refused at startup (C{startup.tls_key_permissions}) rather than
silently used.

This module never imports the reactor.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from portunus.addresses import ip_version, unbracket
from portunus.errors import PortunusError
from portunus.secretfiles import refuse_shared_secret_file

__all__ = [
    "CERT_VALIDITY",
    "DEFAULT_SANS",
    "MISMATCH_EVENT",
    "MISMATCH_MESSAGE",
    "CertificateInfo",
    "PinMismatch",
    "PinnedClientTLS",
    "certificate_hosts",
    "ensure_server_certificate",
    "fingerprint_sha256",
    "generate_self_signed",
    "load_certificate_info",
    "normalise_pin",
    "server_tls_options",
    "write_file_atomically",
]

#: How long a generated server certificate is valid.  Pinned clients do
#: not look at the dates, but other tools (and curious operators) do.
CERT_VALIDITY: Final = timedelta(days=3650)

#: Names every generated certificate covers besides the host name, so local
#: clients and health checks can dial the server by any loopback name.
DEFAULT_SANS: Final = ("localhost", "127.0.0.1", "::1")

#: Portunus' wording for a pin mismatch.
MISMATCH_MESSAGE: Final = "server certificate fingerprint does not match the pinned value"

#: The event a client logs, with C{expected} and C{got}, on a mismatch.
MISMATCH_EVENT: Final = "control.tls_pinned_mismatch"

# Generated certificates start slightly in the past, so a peer whose clock
# is a little behind does not see a certificate from the future.
_BACKDATE: Final = timedelta(minutes=5)

# Key types OpenSSL can serve TLS with.
_TLS_KEY_TYPES: Final = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)
_TLSKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_PIN_PREFIX: Final = "sha256:"


# Fingerprints and pins.


def fingerprint_sha256(der: bytes) -> str:
    """
    The fingerprint Portunus pins: lowercase hex of SHA-256 over the leaf
    certificate's DER encoding (what C{openssl x509 -fingerprint -sha256}
    prints, without the colons).
    """
    return hashlib.sha256(der).hexdigest()


def normalise_pin(text: str) -> str:
    """
    Turn a pin as an operator may write it (upper- or lowercase hex, with or
    without a C{sha256:} prefix, surrounding blanks) into the 64 lowercase hex
    digits L{fingerprint_sha256} returns.

    @raise ValueError: if C{text} is not 64 hex digits after the prefix.
    """
    pin = text.strip()
    if pin[: len(_PIN_PREFIX)].lower() == _PIN_PREFIX:
        pin = pin[len(_PIN_PREFIX) :]
    pin = pin.lower()
    if not _HEX64.fullmatch(pin):
        raise ValueError(
            "a certificate pin is 64 hex digits (SHA-256 of the server certificate),"
            " optionally prefixed with sha256:"
        )
    return pin


# Certificate generation.


def _san_for(host: str) -> x509.GeneralName:
    """An IP SAN for an IP literal (brackets allowed), a DNS SAN otherwise."""
    text = unbracket(host.strip())
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text or any(c.isspace() or c in "/:@[]" for c in text):
        raise ValueError(f"{host!r} is neither a host name nor an IP address")
    try:
        name = text.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise ValueError(f"{host!r} is not a valid host name") from e
    return x509.DNSName(name.lower())


def _san_key(name: x509.GeneralName) -> tuple[str, str]:
    if isinstance(name, x509.IPAddress):
        return ("ip", str(name.value))
    return ("dns", str(name.value).lower())


def generate_self_signed(
    hostname: str,
    extra_hosts: Sequence[str] = (),
    *,
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    """
    Make the server's self-signed certificate, as Portunus does: a fresh
    ECDSA P-256 key, C{CN=hostname}, valid for L{CERT_VALIDITY}, with subject
    alternative names for C{hostname}, L{DEFAULT_SANS} and C{extra_hosts}
    (IP literals as IP SANs, names as DNS SANs, each once).

    @param now: the issue time (default: the current UTC time); the
        certificate is valid from a few minutes before it.
    @return: C{(certificate PEM, PKCS#8 private key PEM)}.
    @raise ValueError: if a host is neither a name nor an IP literal.
    """
    sans: list[x509.GeneralName] = []
    seen: set[tuple[str, str]] = set()
    for host in (hostname, *DEFAULT_SANS, *extra_hosts):
        san = _san_for(host)
        if _san_key(san) not in seen:
            seen.add(_san_key(san))
            sans.append(san)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname.strip())])
    issued = (now or datetime.now(UTC)).astimezone(UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued - _BACKDATE)
        .not_valid_after(issued + CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


# Files.


def write_file_atomically(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """
    Replace C{path} with C{data} so that readers see the old file or the
    whole new one, never a part, even across a crash.

    The data goes to a temporary file in the same directory, created with
    C{mode} (so a secret is never readable by others, not even for an
    instant), is flushed to disk, then renamed over C{path}; the directory
    is flushed too so the rename survives a power cut.  Missing parent
    directories are created (C{0700}).
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        # mkstemp creates the file 0600; widen (for a certificate) or keep.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@attrs.frozen
class CertificateInfo:
    """
    The server certificate in use, as L{ensure_server_certificate} found or
    made it.

    @ivar fingerprint: lowercase hex SHA-256 of the leaf certificate's DER:
        the pin enroll URIs carry.
    @ivar not_after: when the certificate expires (UTC).
    @ivar sans: the subject alternative names, DNS names and IP addresses as
        text, in certificate order.
    @ivar cert_path: the certificate file.
    @ivar key_path: the private key file.
    @ivar generated: whether this call generated the pair (log
        C{tls.cert_generated}) rather than loading existing files.
    @ivar cert_pem: the certificate file's content (leaf first, then any chain).
    @ivar key_pem: the private key (never shown in the repr).
    """

    fingerprint: str
    not_after: datetime
    sans: tuple[str, ...]
    cert_path: str
    key_path: str
    generated: bool = False
    cert_pem: bytes = attrs.field(default=b"", repr=False)
    key_pem: bytes = attrs.field(default=b"", repr=False)


def _invalid(message: str, path: str) -> PortunusError:
    return PortunusError("startup.tls_material_invalid", message, path=path)


def _check_key_permissions(key_path: str) -> None:
    try:
        refuse_shared_secret_file(key_path, "startup.tls_key_permissions", "the TLS private key")
    except OSError as e:
        raise _invalid(f"cannot read {key_path}: {e.strerror}", key_path) from None


def _public_der(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _sans_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        str(name.value) for name in ext.value if isinstance(name, x509.DNSName | x509.IPAddress)
    )


def certificate_hosts(
    cert_pem: bytes,
) -> tuple[tuple[str, ...], tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]]:
    """
    The host names (lowercase, wildcards kept as C{*.example.com}) and the
    IP addresses the leaf certificate in C{cert_pem} names in its subject
    alternative names; a certificate without that extension names none.

    @raise ValueError: if C{cert_pem} holds no PEM certificate.
    """
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return (), ()
    names = tuple(name.lower() for name in ext.value.get_values_for_type(x509.DNSName))
    addresses = tuple(
        address
        for address in ext.value.get_values_for_type(x509.IPAddress)
        if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    )
    return names, addresses


def _parse_pair(
    cert_pem: bytes, key_pem: bytes, cert_path: str, key_path: str
) -> tuple[x509.Certificate, _TLSKey]:
    """Parse and match a certificate and key, naming the culprit file."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise _invalid(
            f"{cert_path} does not hold a PEM certificate ({e}); replace it, or remove"
            f" both {cert_path} and {key_path} to have a new pair generated",
            cert_path,
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise _invalid(
            f"{key_path} does not hold an unencrypted PEM private key ({e}); replace it,"
            f" or remove both {cert_path} and {key_path} to have a new pair generated",
            key_path,
        ) from None
    if not isinstance(key, _TLS_KEY_TYPES):
        raise _invalid(
            f"{key_path} holds a {type(key).__name__}, which cannot sign TLS handshakes;"
            " use an EC, RSA or Ed25519 key",
            key_path,
        )
    if _public_der(key) != _public_der(certs[0]):
        raise _invalid(
            f"the private key in {key_path} does not belong to the certificate in"
            f" {cert_path}; put the matching pair in place, or remove both to have a"
            " new pair generated",
            cert_path,
        )
    return certs[0], key


def load_certificate_info(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    generated: bool = False,
) -> CertificateInfo:
    """
    Load and check an existing certificate and key.

    @raise PortunusError: C{startup.tls_key_permissions} if the key file has
        any group or other permission bit; C{startup.tls_material_invalid}
        if either file is unreadable, does not parse, or the two do not
        match.
    """
    cpath, kpath = os.fspath(cert_path), os.fspath(key_path)
    _check_key_permissions(kpath)
    blobs: list[bytes] = []
    for path in (cpath, kpath):
        try:
            with open(path, "rb") as f:
                blobs.append(f.read())
        except OSError as e:
            raise _invalid(f"cannot read {path}: {e.strerror}", path) from None
    cert_pem, key_pem = blobs
    cert, _ = _parse_pair(cert_pem, key_pem, cpath, kpath)
    return CertificateInfo(
        fingerprint=fingerprint_sha256(cert.public_bytes(serialization.Encoding.DER)),
        not_after=cert.not_valid_after_utc,
        sans=_sans_of(cert),
        cert_path=cpath,
        key_path=kpath,
        generated=generated,
        cert_pem=cert_pem,
        key_pem=key_pem,
    )


def ensure_server_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hostname: str,
    extra_hosts: Sequence[str] = (),
) -> CertificateInfo:
    """
    The server's certificate: loaded if both files exist, generated with
    L{generate_self_signed} and written if neither does.

    The key is written first, created C{0600}; the certificate C{0644}; each
    atomically (L{write_file_atomically}).  If only one of the two files
    exists nothing is generated (that would orphan the other): the operator
    has to restore or remove it.

    @raise PortunusError: C{startup.tls_key_permissions} or
        C{startup.tls_material_invalid}, see L{load_certificate_info}.
    """
    cpath, kpath = os.fspath(cert_path), os.fspath(key_path)
    have_cert, have_key = os.path.lexists(cpath), os.path.lexists(kpath)
    if have_cert and have_key:
        return load_certificate_info(cpath, kpath)
    if have_cert or have_key:
        present, missing = (cpath, kpath) if have_cert else (kpath, cpath)
        raise _invalid(
            f"found {present} but not {missing}; restore {missing}, or remove {present}"
            " to have a new certificate and key generated",
            missing,
        )
    cert_pem, key_pem = generate_self_signed(hostname, extra_hosts)
    write_file_atomically(kpath, key_pem, 0o600)
    write_file_atomically(cpath, cert_pem, 0o644)
    return load_certificate_info(cpath, kpath, generated=True)


# The server side.


def server_tls_options(cert_pem: bytes, key_pem: bytes) -> CertificateOptions:
    """
    Server-side TLS options for the control listener: the given certificate
    (leaf first, then any chain) and key, TLS 1.2 at least, no client
    certificate requested (clients authenticate with a bearer token).

    @raise ValueError: if the PEM data does not parse or the key does not
        belong to the certificate.
    """
    certs = x509.load_pem_x509_certificates(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, _TLS_KEY_TYPES):
        raise ValueError(f"a {type(key).__name__} cannot sign TLS handshakes")
    if _public_der(key) != _public_der(certs[0]):
        raise ValueError("the private key does not belong to the certificate")
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(certs[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in certs[1:]],
        raiseMinimumTo=TLSVersion.TLSv1_2,
        verify=False,
    )


# The client side.


class PinMismatch(SSL.Error):
    """
    The server's certificate is not the pinned one: the handshake was
    aborted before any application byte was sent.

    It is an L{OpenSSL.SSL.Error}, so L{TLSMemoryBIOProtocol} treats it as
    the handshake failure it is and hands it, as the reason, to the
    application protocol's C{connectionLost}.

    @ivar expected: the pin (64 lowercase hex digits).
    @ivar got: the fingerprint of the certificate the server presented, or
        C{None} if it presented none.
    """

    def __init__(self, expected: str, got: str | None) -> None:
        # The args mimic OpenSSL's error queue, which Twisted inspects.
        super().__init__([("portunus", "pinned verify", MISMATCH_MESSAGE)])
        self.expected = expected
        self.got = got

    def __str__(self) -> str:
        return f"{MISMATCH_MESSAGE} (expected {self.expected}, got {self.got or 'none'})"


def _is_ip(text: str) -> bool:
    return ip_version(unbracket(text)) is not None


@implementer(IOpenSSLClientConnectionCreator)
class PinnedClientTLS:
    """
    Client-side TLS that trusts exactly one certificate: the one whose
    SHA-256 fingerprint is C{pin}.  Use it with
    L{twisted.internet.endpoints.wrapClientTLS} or
    L{twisted.protocols.tls.TLSMemoryBIOFactory}.

    The check runs in OpenSSL's verify callback, on the leaf certificate,
    while the handshake is in progress; certificates above the leaf, dates
    and names are not looked at.  On a mismatch the handshake fails, the
    application protocol's C{connectionLost} gets a L{PinMismatch} (use
    C{reason.check(PinMismatch)}), and L{last_mismatch} keeps it too.  A
    second check when the handshake completes guards against any path (a
    resumed session, say) that skipped the callback.

    @ivar pin: the expected fingerprint, normalised.
    @ivar last_mismatch: the most recent mismatch seen by any connection
        made with this creator, or C{None}.
    """

    def __init__(self, pin: str, server_name: str | None = None) -> None:
        """
        @param pin: the expected fingerprint, in any form L{normalise_pin}
            accepts.
        @param server_name: sent as SNI (never checked) unless it is an IP
            literal; useful when a TLS router sits in front of the server.
        @raise ValueError: if C{pin} is not a valid pin.
        """
        self.pin = normalise_pin(pin)
        self.last_mismatch: PinMismatch | None = None
        self._server_name = (
            server_name.encode("idna") if server_name and not _is_ip(server_name) else None
        )
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        # No resumption: every handshake shows (and so checks) the certificate.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
        ctx.set_verify(SSL.VERIFY_PEER, self._verify)
        ctx.set_info_callback(self._info)
        self._context = ctx

    def _mismatch(self, got: str | None) -> PinMismatch:
        self.last_mismatch = PinMismatch(self.pin, got)
        return self.last_mismatch

    def _verify(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if depth != 0:
            # Only the leaf is pinned; whatever the server sends above it
            # (and OpenSSL's opinion of it) does not matter.
            return True
        der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
        got = fingerprint_sha256(der)
        if got != self.pin:
            # pyOpenSSL fails the handshake and re-raises this from
            # do_handshake(), where TLSMemoryBIOProtocol reports it.
            raise self._mismatch(got)
        return True

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        peer = connection.get_peer_certificate(as_cryptography=True)
        got = (
            None
            if peer is None
            else fingerprint_sha256(peer.public_bytes(serialization.Encoding.DER))
        )
        if got != self.pin:
            protocol = connection.get_app_data()
            protocol.failVerification(Failure(self._mismatch(got)))

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        A new OpenSSL connection for C{tlsProtocol}, pinned and (if a server
        name was given) with SNI.
        """
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection
