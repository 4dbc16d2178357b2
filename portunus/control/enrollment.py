"""
Enrollment: the URI an operator hands to an edge, the bundle the edge keeps,
and the secrets behind both.

An operator creates an enrollment and gets a one-line command to run on
the edge::

    portunus-client enroll 'portunus://ctl.example.com:7443/enroll?pin=sha256:<64 hex>&code=<code>'

L{parse_enroll_uri} reads that URI exactly as Portunus does (reference
inventory §1.6): it names where to dial, the server certificate's pin, and
the one-time code.  The edge dials with the pin (L{portunus.control.tls}),
redeems the code and writes the answer as its credential bundle
(L{write_bundle}), a small JSON file that L{read_bundle} checks field by
field at every start.

The code and the token are secrets: no error message here repeats them, and
the reprs of L{EnrollUri} and L{Bundle} leave them out.  The server keeps
only their hashes (L{hash_secret}) and finds a secret's row by its hash:
a lookup by a 256-bit hash of a 256-bit random secret leaks nothing useful
through timing.

This module never imports the reactor.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any, Final

import attrs

from portunus.addresses import (
    AddressError,
    format_host_port,
    host_problem,
    ip_version,
    parse_port,
    split_host_port,
    unbracket,
)
from portunus.bounds import PORT
from portunus.control.tls import write_file_atomically
from portunus.errors import PortunusError

__all__ = [
    "BUNDLE_FILENAME",
    "BUNDLE_VERSION",
    "ENROLL_URI_EXAMPLE",
    "ENV_BUNDLE",
    "Bundle",
    "BundleError",
    "EnrollUri",
    "EnrollUriError",
    "EnrollUriErrorKind",
    "bundle_from_json",
    "default_bundle_paths",
    "default_enroll_out",
    "format_enroll_uri",
    "hash_secret",
    "new_secret",
    "parse_endpoint",
    "parse_enroll_uri",
    "read_bundle",
    "write_bundle",
]

#: The only bundle format version there is.
BUNDLE_VERSION: Final = 1

#: The bundle's file name in the default locations.
BUNDLE_FILENAME: Final = "client.bundle.json"

#: The environment variable naming the bundle to use.
ENV_BUNDLE: Final = "PORTUNUS_CLIENT_BUNDLE"

#: What a correct enroll URI looks like, for error messages.
ENROLL_URI_EXAMPLE: Final = (
    "portunus://HOST:PORT/enroll?pin=sha256:<64 hex digits>&code=<enrollment code>"
    " (for example portunus://ctl.example.com:7443/enroll?pin=sha256:3f2a...&code=...)"
)

_SCHEME: Final = "portunus://"
_PATH: Final = "/enroll"
_PIN_PREFIX: Final = "sha256:"
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
# Characters a code may hold and still survive the URI unescaped: the
# server's codes are URL-safe base64, well inside this set.
_CODE: Final = re.compile(r"[A-Za-z0-9._~-]+")

# Endpoints.


def _check_host(host: str) -> str:
    """
    C{host} if it is an IP literal (normalized) or a DNS name, whose labels
    may hold underscores (Compose service names).

    @raise AddressError: for the host.
    """
    if ip_version(host) is not None:
        return str(ipaddress.ip_address(host))
    problem = host_problem(host, allow_underscore=True)
    if problem is not None:
        raise AddressError("host", problem)
    return host


def parse_endpoint(text: str) -> tuple[str, int]:
    """
    Split C{host:port} (IPv6 in brackets: C{[::1]:7443}) into the host,
    without brackets, and the port.

    @raise AddressError: (a C{ValueError}) if the host is not a name or an
        IP literal, or the port is not a port number; its C{part} says which.
    """
    split = split_host_port(text)
    if split.port is None:
        raise AddressError("port", f"'{text}' has no port; write it as HOST:PORT or [IPv6]:PORT")
    return _check_host(split.host), parse_port(split.port)


# The enroll URI.


class EnrollUriErrorKind(enum.StrEnum):
    """Why an enroll URI was refused (Portunus' C{EnrollUriError} variants)."""

    BadScheme = "BadScheme"
    MissingQuery = "MissingQuery"
    BadPath = "BadPath"
    MissingField = "MissingField"
    MalformedQueryPair = "MalformedQueryPair"
    BadPin = "BadPin"
    BadPort = "BadPort"
    #: Not in Portunus, which does not look inside the endpoint.
    BadHost = "BadHost"


class EnrollUriError(PortunusError):
    """
    An enroll URI that cannot be used (code C{client.enroll_uri_invalid}).

    The message says what is wrong and what a correct URI looks like; it
    never contains the enrollment code, nor the URI (which holds the code).

    @ivar kind: an L{EnrollUriErrorKind}.
    @ivar field: for L{EnrollUriErrorKind.MissingField}, the missing part:
        C{endpoint}, C{pin} or C{code}; otherwise C{None}.
    """

    def __init__(self, kind: EnrollUriErrorKind, message: str, field: str | None = None) -> None:
        extra: dict[str, object] = {"kind": str(kind)}
        if field is not None:
            extra["field"] = field
        super().__init__(
            "client.enroll_uri_invalid",
            f"{message}; an enroll URI looks like {ENROLL_URI_EXAMPLE}",
            **extra,
        )
        self.kind = kind
        self.field = field


@attrs.frozen
class EnrollUri:
    """
    A parsed enroll URI.

    @ivar host: a DNS name or an IP address (IPv6 without brackets).
    @ivar port: the server's control port.
    @ivar pin: the server certificate's SHA-256, 64 lowercase hex digits.
    @ivar code: the one-time enrollment code (a secret; not in the repr).
    """

    host: str
    port: int
    pin: str
    code: str = attrs.field(repr=False)

    @property
    def endpoint(self) -> str:
        """C{host:port} to dial, IPv6 in brackets."""
        return format_host_port(self.host, self.port)


def parse_enroll_uri(text: str) -> EnrollUri:
    """
    Parse C{portunus://HOST:PORT/enroll?pin=sha256:<64 hex>&code=<code>}.

    As Portunus: the scheme must be C{portunus://}; a C{?} must follow the
    path; the part before it must end in C{/enroll} and hold no other
    C{/}; every C{&}-separated query pair needs an C{=}; unknown keys are
    ignored (the last of repeated keys wins); the pin must be C{sha256:}
    and 64 hex digits, and is lower-cased; the code must not be empty.
    Beyond Portunus, the endpoint is split and checked here (a name, IPv4
    or bracketed IPv6 host; a port number).  Surrounding blanks
    (from a copy and paste) are ignored; nothing is percent-decoded.

    @raise EnrollUriError: naming what is wrong, never the code.
    """
    uri = text.strip()
    if not uri.startswith(_SCHEME):
        raise EnrollUriError(
            EnrollUriErrorKind.BadScheme, "an enroll URI must start with portunus://"
        )
    rest = uri[len(_SCHEME) :]
    authority_path, sep, query = rest.partition("?")
    if not sep:
        raise EnrollUriError(
            EnrollUriErrorKind.MissingQuery,
            "the enroll URI has no query (the ?pin=...&code=... part is missing)",
        )
    if not authority_path.endswith(_PATH):
        raise EnrollUriError(
            EnrollUriErrorKind.BadPath, "the enroll URI's path must be /enroll, right before ?"
        )
    endpoint = authority_path[: -len(_PATH)]
    if "/" in endpoint:
        raise EnrollUriError(
            EnrollUriErrorKind.BadPath,
            "the enroll URI must hold HOST:PORT, then /enroll, and no other /",
        )
    if not endpoint:
        raise EnrollUriError(
            EnrollUriErrorKind.MissingField,
            "the enroll URI names no server endpoint (HOST:PORT before /enroll)",
            field="endpoint",
        )

    fields: dict[str, str] = {}
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if not eq:
            raise EnrollUriError(
                EnrollUriErrorKind.MalformedQueryPair,
                "every part of the enroll URI's query must be key=value, joined by &",
            )
        fields[key] = value

    pin_text = fields.get("pin")
    if pin_text is None:
        raise EnrollUriError(
            EnrollUriErrorKind.MissingField,
            "the enroll URI has no pin (pin=sha256:<64 hex digits>)",
            field="pin",
        )
    if not pin_text.startswith(_PIN_PREFIX) or not _HEX64.fullmatch(pin_text[len(_PIN_PREFIX) :]):
        raise EnrollUriError(
            EnrollUriErrorKind.BadPin,
            "the enroll URI's pin must be sha256: followed by exactly 64 hex digits",
        )
    pin = pin_text[len(_PIN_PREFIX) :].lower()

    code = fields.get("code")
    if not code:
        raise EnrollUriError(
            EnrollUriErrorKind.MissingField,
            "the enroll URI has no code (code=<enrollment code>, not empty)",
            field="code",
        )

    try:
        host, port = parse_endpoint(endpoint)
    except AddressError as e:
        kind = EnrollUriErrorKind.BadPort if e.part == "port" else EnrollUriErrorKind.BadHost
        raise EnrollUriError(kind, f"the enroll URI's server endpoint is unusable: {e}") from None
    return EnrollUri(host=host, port=port, pin=pin, code=code)


def format_enroll_uri(host: str, port: int, pin: str, code: str) -> str:
    """
    The enroll URI for C{host:port}, a pin (64 hex digits, C{sha256:} prefix
    optional) and a code; L{parse_enroll_uri} reads it back to the same
    values.  An IPv6 host is put in brackets.

    @raise ValueError: if a value could not survive the round trip (bad
        host, port or pin; a code with characters outside C{A-Z a-z 0-9 . _ ~ -}).
    """
    bare = unbracket(host)
    if port not in PORT:
        raise ValueError(f"the port must be a number from {PORT.span()}")
    _check_host(bare)
    digits = pin[len(_PIN_PREFIX) :] if pin.lower().startswith(_PIN_PREFIX) else pin
    if not _HEX64.fullmatch(digits):
        raise ValueError("the pin must be 64 hex digits")
    if not _CODE.fullmatch(code):
        raise ValueError("the code may hold only letters, digits and . _ ~ -")
    return (
        f"{_SCHEME}{format_host_port(bare, port)}{_PATH}"
        f"?pin={_PIN_PREFIX}{digits.lower()}&code={code}"
    )


# The bundle.


@attrs.frozen(kw_only=True)
class Bundle:
    """
    A client's credentials, as stored in C{client.bundle.json}.

    @ivar version: the format version, always L{BUNDLE_VERSION}.
    @ivar client_name: the name the operator gave the client.
    @ivar client_id: the server's id for the client (a ULID); C{None} in
        bundles written before ids existed.
    @ivar server_endpoint: C{host:port} of the server's control listener.
    @ivar server_cert_sha256: the pin, 64 lowercase hex digits.
    @ivar token: the client's bearer token (a secret; not in the repr).
    """

    version: int = BUNDLE_VERSION
    client_name: str
    client_id: str | None = None
    server_endpoint: str
    server_cert_sha256: str
    token: str = attrs.field(repr=False)

    def to_json(self) -> dict[str, object]:
        """The bundle as the JSON object written to disk (no C{client_id} if None)."""
        body: dict[str, object] = {"version": self.version, "client_name": self.client_name}
        if self.client_id is not None:
            body["client_id"] = self.client_id
        body["server_endpoint"] = self.server_endpoint
        body["server_cert_sha256"] = self.server_cert_sha256
        body["token"] = self.token
        return body


class BundleError(PortunusError):
    """
    A bundle that cannot be used (code C{client.bundle_invalid}).

    @ivar path: the file (or another description of the source).
    @ivar field: the offending field, or C{None} if the whole file is at fault.
    """

    def __init__(self, path: str, field: str | None, problem: str) -> None:
        where = f"{path}: field {field!r}" if field else path
        extra: dict[str, object] = {"path": path}
        if field:
            extra["field"] = field
        super().__init__("client.bundle_invalid", f"{where}: {problem}", **extra)
        self.path = path
        self.field = field


def _string(data: Mapping[str, Any], key: str, source: str, what: str) -> str:
    value = data.get(key)
    if value is None:
        raise BundleError(source, key, f"missing; it must hold {what}")
    if not isinstance(value, str) or not value.strip():
        raise BundleError(source, key, f"must be a non-empty string holding {what}")
    return value


def bundle_from_json(data: object, source: str = "<bundle>") -> Bundle:
    """
    Check a decoded bundle object field by field and build a L{Bundle}.

    A missing C{version} means 1; any other version is refused.  Unknown
    fields are ignored (later versions may add some).  C{client_id} may be
    absent or null.  The pin is lower-cased; the endpoint is checked with
    L{parse_endpoint}.

    @param source: names the bundle (its path) in error messages.
    @raise BundleError: naming C{source} and the field at fault; never
        showing the token.
    """
    if not isinstance(data, dict):
        raise BundleError(source, None, "a bundle is a JSON object; enroll again to rewrite it")
    version = data.get("version", BUNDLE_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(source, "version", f"must be the number {BUNDLE_VERSION}")
    if version != BUNDLE_VERSION:
        raise BundleError(
            source,
            "version",
            f"version {version} is not supported (this client reads version"
            f" {BUNDLE_VERSION}); upgrade portunus-client or enroll again",
        )
    client_name = _string(data, "client_name", source, "the client's name")
    client_id = data.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not client_id.strip()):
        raise BundleError(source, "client_id", "must be a non-empty string, or absent")
    endpoint = _string(data, "server_endpoint", source, "the server's HOST:PORT")
    try:
        parse_endpoint(endpoint)
    except ValueError as e:
        raise BundleError(source, "server_endpoint", f"must be HOST:PORT: {e}") from None
    pin = _string(data, "server_cert_sha256", source, "64 hex digits")
    if not _HEX64.fullmatch(pin):
        raise BundleError(
            source,
            "server_cert_sha256",
            "must be exactly 64 hex digits (the SHA-256 of the server certificate)",
        )
    token = _string(data, "token", source, "the client's token")
    return Bundle(
        version=version,
        client_name=client_name,
        client_id=client_id,
        server_endpoint=endpoint,
        server_cert_sha256=pin.lower(),
        token=token,
    )


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """
    Read and check the bundle at C{path} (see L{bundle_from_json}).

    @raise BundleError: if the file cannot be read, is not JSON, or a field
        is wrong; the message names the file and the field.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BundleError(source, None, f"cannot read the bundle: {e.strerror}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        # json's message names a position, never the content.
        raise BundleError(source, None, f"not valid JSON ({e})") from None
    return bundle_from_json(data, source)


def write_bundle(bundle: Bundle, path: str | os.PathLike[str]) -> None:
    """
    Write C{bundle} to C{path} as JSON: parent directories created, the file
    created mode C{0600} (it holds the token), flushed to disk and renamed
    into place, so a crash leaves the old bundle or the new one.
    """
    data = json.dumps(bundle.to_json(), indent=2).encode("utf-8") + b"\n"
    write_file_atomically(path, data, 0o600)


# Where bundles live.


def default_enroll_out(environ: Mapping[str, str]) -> str:
    """
    Where C{portunus-client enroll} writes the bundle without C{--out}:
    C{$XDG_CONFIG_HOME/portunus/client.bundle.json}, else
    C{$HOME/.config/portunus/client.bundle.json}, else
    C{./client.bundle.json} (empty variables count as unset).
    """
    return _config_paths(environ)[0]


def _config_paths(environ: Mapping[str, str]) -> list[str]:
    paths = []
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg:
        paths.append(os.path.join(xdg, "portunus", BUNDLE_FILENAME))
    home = environ.get("HOME", "")
    if home:
        paths.append(os.path.join(home, ".config", "portunus", BUNDLE_FILENAME))
    paths.append(os.path.join(".", BUNDLE_FILENAME))
    return paths


def default_bundle_paths(environ: Mapping[str, str]) -> list[str]:
    """
    Where the client looks for its bundle without C{--bundle}, in order:
    C{$PORTUNUS_CLIENT_BUNDLE}, C{$XDG_CONFIG_HOME/portunus/client.bundle.json},
    C{$HOME/.config/portunus/client.bundle.json}, C{./client.bundle.json}.
    Empty variables are skipped.  The caller uses the first that exists and
    lists them all if none does.
    """
    paths = []
    explicit = environ.get(ENV_BUNDLE, "")
    if explicit:
        paths.append(explicit)
    paths.extend(_config_paths(environ))
    return paths


# Secrets.


def new_secret() -> str:
    """
    A new enrollment code, client token or session secret: 32 random bytes
    as URL-safe base64 without padding (43 characters), as Portunus makes them.
    """
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """
    What the server stores instead of a secret: the hex digest of BLAKE2b
    with a 32-byte digest over the secret's UTF-8 bytes.

    Portunus stores BLAKE3-256 here.  BLAKE3 is not in Python's standard
    library, so this port uses BLAKE2b-256 (same size, also a keyless
    collision-resistant hash; secrets are 256 random bits, so no slow
    password hash is needed).  Hashes are therefore not interchangeable with
    a Portunus database.
    """
    return hashlib.blake2b(secret.encode("utf-8"), digest_size=32).hexdigest()
