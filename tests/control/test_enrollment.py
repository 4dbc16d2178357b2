"""
Tests for L{portunus.control.enrollment}: the enroll URI grammar and its
errors, the bundle file, default locations and secret hashing.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from portunus.addresses import format_host_port
from portunus.control.enrollment import (
    BUNDLE_VERSION,
    Bundle,
    BundleError,
    EnrollUri,
    EnrollUriError,
    EnrollUriErrorKind,
    bundle_from_json,
    default_bundle_paths,
    default_enroll_out,
    format_enroll_uri,
    hash_secret,
    new_secret,
    parse_endpoint,
    parse_enroll_uri,
    read_bundle,
    write_bundle,
)
from portunus.errors import PortunusError

PIN = "3f" * 32
# Looks like a real code, so a leak would be obvious in any message.
CODE = "Zk9SECRETCODEq1w2e3r4t5y6u7i8o9p0a1s2d3f4g5"
TOKEN = "tok_SECRET_TOKEN_do_not_print_0123456789abcd"
GOOD = f"portunus://ctl.example.com:7443/enroll?pin=sha256:{PIN}&code={CODE}"

K = EnrollUriErrorKind


class ParseTests(SynchronousTestCase):
    """L{parse_enroll_uri} accepts what Portunus accepts."""

    def test_good(self) -> None:
        """All four parts come out; the code is kept verbatim."""
        uri = parse_enroll_uri(GOOD)
        self.assertEqual(uri, EnrollUri("ctl.example.com", 7443, PIN, CODE))
        self.assertEqual(uri.endpoint, "ctl.example.com:7443")

    def test_pin_lowercased(self) -> None:
        """An uppercase pin is accepted and lower-cased."""
        uri = parse_enroll_uri(GOOD.replace(PIN, PIN.upper()))
        self.assertEqual(uri.pin, PIN)

    def test_hosts(self) -> None:
        """Names, IPv4 and bracketed IPv6 hosts (brackets dropped)."""
        for endpoint, host in (
            ("10.0.0.5:1", "10.0.0.5"),
            ("[::1]:7443", "::1"),
            ("[2001:DB8::1]:65535", "2001:db8::1"),
            ("localhost:7443", "localhost"),
            ("portunus_server:7443", "portunus_server"),
            ("a-b.c-d.example.:7443", "a-b.c-d.example."),
        ):
            with self.subTest(endpoint=endpoint):
                uri = parse_enroll_uri(f"portunus://{endpoint}/enroll?pin=sha256:{PIN}&code=c")
                self.assertEqual(uri.host, host)

    def test_unknown_keys_and_order(self) -> None:
        """Unknown keys are ignored, order does not matter, the last repeat wins."""
        uri = parse_enroll_uri(
            f"portunus://h:1/enroll?x=1&code=first&v=&pin=sha256:{PIN}&code=second"
        )
        self.assertEqual((uri.pin, uri.code), (PIN, "second"))

    def test_blanks_trimmed(self) -> None:
        """Whitespace around a pasted URI is ignored."""
        self.assertEqual(parse_enroll_uri(f"  {GOOD}\n").code, CODE)

    def test_code_verbatim(self) -> None:
        """Nothing is percent-decoded; C{=} inside a value is kept."""
        uri = parse_enroll_uri(f"portunus://h:1/enroll?pin=sha256:{PIN}&code=a%41=b")
        self.assertEqual(uri.code, "a%41=b")

    def test_repr_hides_code(self) -> None:
        """The repr (and so str) of a parsed URI never shows the code."""
        uri = parse_enroll_uri(GOOD)
        self.assertNotIn(CODE, repr(uri))
        self.assertNotIn(CODE, str(uri))
        self.assertIn(PIN, repr(uri))


class ParseErrorTests(SynchronousTestCase):
    """Every refusal has its kind, says how to fix it, and never leaks the code."""

    def refuse(self, text: str, kind: EnrollUriErrorKind) -> EnrollUriError:
        e = self.assertRaises(EnrollUriError, parse_enroll_uri, text)
        self.assertEqual(e.kind, kind)
        self.assertEqual(e.code, "client.enroll_uri_invalid")
        self.assertIsInstance(e, PortunusError)
        # What a correct URI looks like.
        self.assertIn("portunus://HOST:PORT/enroll?pin=sha256:", e.message)
        for rendered in (str(e), repr(e), e.message, json.dumps(e.to_json())):
            self.assertNotIn(CODE, rendered)
        return e

    def test_bad_scheme(self) -> None:
        """Anything but C{portunus://} (including case changes) is BadScheme."""
        for text in (
            GOOD.replace("portunus://", "https://"),
            GOOD.replace("portunus://", "Portunus://"),
            GOOD.replace("portunus://", "portunus:"),
            CODE,
            "",
        ):
            with self.subTest(text=text[:12]):
                e = self.refuse(text, K.BadScheme)
                self.assertIn("must start with portunus://", e.message)

    def test_missing_query(self) -> None:
        """No C{?} at all is MissingQuery."""
        e = self.refuse(f"portunus://h:1/enroll&pin=sha256:{PIN}&code={CODE}", K.MissingQuery)
        self.assertIn("?", e.message)

    def test_bad_path(self) -> None:
        """The authority must end with C{/enroll} and hold no other C{/}."""
        for text in (
            f"portunus://h:1/?pin=sha256:{PIN}&code={CODE}",
            f"portunus://h:1/enrol?pin=sha256:{PIN}&code={CODE}",
            f"portunus://h:1/enroll/?pin=sha256:{PIN}&code={CODE}",
            f"portunus://h:1/x/enroll?pin=sha256:{PIN}&code={CODE}",
            f"portunus://h:1?pin=sha256:{PIN}&code={CODE}",
            f"portunus://h:1/{CODE}/enroll?pin=sha256:{PIN}&code={CODE}",
        ):
            with self.subTest(text=text[:30]):
                self.refuse(text, K.BadPath)

    def test_missing_endpoint(self) -> None:
        """Nothing before C{/enroll} is MissingField(endpoint)."""
        e = self.refuse(f"portunus:///enroll?pin=sha256:{PIN}&code={CODE}", K.MissingField)
        self.assertEqual(e.field, "endpoint")
        self.assertIn("endpoint", e.message)
        self.assertEqual(e.fields["field"], "endpoint")

    def test_missing_pin(self) -> None:
        """No C{pin} key is MissingField(pin)."""
        e = self.refuse(f"portunus://h:1/enroll?code={CODE}", K.MissingField)
        self.assertEqual(e.field, "pin")
        self.assertIn("pin", e.message)

    def test_missing_code(self) -> None:
        """No C{code}, or an empty one, is MissingField(code)."""
        for text in (
            f"portunus://h:1/enroll?pin=sha256:{PIN}",
            f"portunus://h:1/enroll?pin=sha256:{PIN}&code=",
        ):
            with self.subTest(text=text):
                e = self.refuse(text, K.MissingField)
                self.assertEqual(e.field, "code")
                self.assertIn("code", e.message)

    def test_malformed_pair(self) -> None:
        """A query part without C{=}, even an empty one, is MalformedQueryPair."""
        for query in (
            f"pin=sha256:{PIN}&{CODE}",
            f"pin=sha256:{PIN}&code={CODE}&",
            f"pin=sha256:{PIN}&&code={CODE}",
            "",
        ):
            with self.subTest(query=query[-10:]):
                self.refuse(f"portunus://h:1/enroll?{query}", K.MalformedQueryPair)

    def test_bad_pin(self) -> None:
        """A pin without C{sha256:} or not 64 hex digits is BadPin."""
        for pin in (
            PIN,
            "sha1:" + PIN,
            "SHA256:" + PIN,
            "sha256:" + PIN[:-1],
            "sha256:" + PIN + "0",
            "sha256:" + PIN[:-1] + "z",
            "sha256:",
        ):
            with self.subTest(pin=pin[:10]):
                e = self.refuse(f"portunus://h:1/enroll?pin={pin}&code={CODE}", K.BadPin)
                self.assertIn("64 hex", e.message)

    def test_bad_port(self) -> None:
        """A missing, zero, too large or non-numeric port is BadPort."""
        for endpoint in (
            "h",
            "h:",
            "h:0",
            "h:65536",
            "h:99999999",
            "h:-1",
            "h:+80",
            "h:http",
            "h:\uff18\uff10",
            "[::1]",
            "[::1]x",
        ):
            with self.subTest(endpoint=endpoint):
                e = self.refuse(
                    f"portunus://{endpoint}/enroll?pin=sha256:{PIN}&code={CODE}", K.BadPort
                )
                self.assertIn("port", e.message)

    def test_bad_host(self) -> None:
        """A host that is not a name, IPv4 or bracketed IPv6 is BadHost."""
        for endpoint in (
            ":7443",
            "::1:7443",
            "[not-ip]:7443",
            "[10.0.0.1]:7443",
            "[::1:7443",
            "a b:7443",
            "bad..name:7443",
            "-lead:7443",
            "999.1.1.1:7443",
            "user@h:7443",
            "h\u00e9:7443",
        ):
            with self.subTest(endpoint=endpoint):
                self.refuse(f"portunus://{endpoint}/enroll?pin=sha256:{PIN}&code={CODE}", K.BadHost)

    def test_kinds_are_strings(self) -> None:
        """Kinds compare equal to Portunus' variant names."""
        self.assertEqual(K.MissingQuery, "MissingQuery")
        self.assertEqual(
            {k.value for k in K},
            {
                "BadScheme",
                "MissingQuery",
                "BadPath",
                "MissingField",
                "MalformedQueryPair",
                "BadPin",
                "BadPort",
                "BadHost",
            },
        )


class FormatTests(SynchronousTestCase):
    """L{format_enroll_uri} and the endpoint helpers."""

    def test_format(self) -> None:
        """The canonical form, pin lower-cased with its prefix."""
        self.assertEqual(
            format_enroll_uri("ctl.example.com", 7443, "SHA256:" + PIN.upper(), CODE), GOOD
        )
        self.assertEqual(format_enroll_uri("ctl.example.com", 7443, PIN, CODE), GOOD)

    def test_ipv6_bracketed(self) -> None:
        """IPv6 hosts are bracketed, already-bracketed ones not twice."""
        for host in ("::1", "[::1]"):
            uri = format_enroll_uri(host, 7443, PIN, "c")
            self.assertTrue(uri.startswith("portunus://[::1]:7443/enroll?"))
            self.assertEqual(parse_enroll_uri(uri).host, "::1")

    def test_refuses_unroundtrippable(self) -> None:
        """Values that would not parse back are refused."""
        for args in (
            ("h", 0, PIN, "c"),
            ("h", 65536, PIN, "c"),
            ("a/b", 1, PIN, "c"),
            ("h", 1, PIN[1:], "c"),
            ("h", 1, PIN, ""),
            ("h", 1, PIN, "a&b"),
            ("h", 1, PIN, "a b"),
        ):
            with self.subTest(args=args):
                self.assertRaises(ValueError, format_enroll_uri, *args)

    @given(
        host=st.one_of(
            st.ip_addresses().map(str),
            st.from_regex(
                r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{1,8}){0,3}", fullmatch=True
            ).filter(lambda h: not all(p.isdigit() for p in h.split("."))),
        ),
        port=st.integers(1, 65535),
        pin=st.binary(min_size=32, max_size=32).map(bytes.hex),
        code=st.from_regex(r"[A-Za-z0-9._~-]{1,60}", fullmatch=True),
    )
    def test_round_trip(self, host: str, port: int, pin: str, code: str) -> None:
        """format then parse gives back the same values."""
        uri = parse_enroll_uri(format_enroll_uri(host, port, pin, code))
        self.assertEqual((uri.host, uri.port, uri.pin, uri.code), (host, port, pin, code))

    def test_real_secret_round_trips(self) -> None:
        """A code from L{new_secret} survives the URI."""
        code = new_secret()
        self.assertEqual(parse_enroll_uri(format_enroll_uri("h", 1, PIN, code)).code, code)

    def test_endpoints(self) -> None:
        """parse_endpoint and format_host_port are inverses."""
        for text, parsed in (
            ("h:1", ("h", 1)),
            ("[::1]:7443", ("::1", 7443)),
            ("192.0.2.1:80", ("192.0.2.1", 80)),
        ):
            with self.subTest(text=text):
                self.assertEqual(parse_endpoint(text), parsed)
                self.assertEqual(format_host_port(*parsed), text)
        for bad in ("h", "::1:80", "h:0", "[h]:1", ""):
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, parse_endpoint, bad)


def good_bundle(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": 1,
        "client_name": "edge-1",
        "client_id": "01HZX3V8Q0F3J6K9W2N5R7T4YB",
        "server_endpoint": "ctl.example.com:7443",
        "server_cert_sha256": PIN,
        "token": TOKEN,
    }
    for key, value in changes.items():
        if value is DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


DROP = object()


class BundleTests(SynchronousTestCase):
    """Reading, checking and writing C{client.bundle.json}."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "client.bundle.json")

    def put(self, data: object) -> None:
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, bytes):
            data = json.dumps(data).encode()
        with open(self.path, "wb") as f:
            f.write(data)

    def refuse(self, data: object, field: str | None, *words: str) -> BundleError:
        self.put(data)
        e = self.assertRaises(BundleError, read_bundle, self.path)
        self.assertEqual(e.code, "client.bundle_invalid")
        self.assertEqual(e.path, self.path)
        self.assertEqual(e.field, field)
        self.assertIn(self.path, e.message)
        if field:
            self.assertIn(repr(field), e.message)
        for word in words:
            self.assertIn(word, e.message)
        for rendered in (str(e), repr(e), json.dumps(e.to_json())):
            self.assertNotIn(TOKEN, rendered)
        return e

    def test_read_good(self) -> None:
        """A complete bundle reads into the same values."""
        self.put(good_bundle())
        self.assertEqual(
            read_bundle(self.path),
            Bundle(
                client_name="edge-1",
                client_id="01HZX3V8Q0F3J6K9W2N5R7T4YB",
                server_endpoint="ctl.example.com:7443",
                server_cert_sha256=PIN,
                token=TOKEN,
            ),
        )

    def test_defaults_and_legacy(self) -> None:
        """
        No version means 1; no (or null) client_id is a pre-v2 bundle;
        unknown fields are ignored; the pin is lower-cased.
        """
        for body in (
            good_bundle(version=DROP, client_id=DROP, server_cert_pem="x"),
            good_bundle(client_id=None, server_cert_sha256=PIN.upper()),
        ):
            with self.subTest(body=sorted(body)):
                self.put(body)
                bundle = read_bundle(self.path)
                self.assertEqual(bundle.version, BUNDLE_VERSION)
                self.assertIsNone(bundle.client_id)
                self.assertEqual(bundle.server_cert_sha256, PIN)

    def test_not_readable(self) -> None:
        """A missing file is refused, naming it."""
        e = self.assertRaises(BundleError, read_bundle, self.path)
        self.assertIn(self.path, e.message)
        self.assertIsNone(e.field)

    def test_not_json(self) -> None:
        """Broken JSON, or JSON that is not an object, is refused."""
        self.refuse('{"token": "' + TOKEN, None, "JSON")
        self.refuse("[1, 2]", None, "object")
        self.refuse(b'{"token": "\xff"}', None, "JSON")

    def test_version(self) -> None:
        """Version must be the integer 1."""
        self.refuse(good_bundle(version=2), "version", "version 2 is not supported")
        self.refuse(good_bundle(version=0), "version")
        for bad in ("1", True, 1.0, None):
            with self.subTest(version=bad):
                self.refuse(good_bundle(version=bad), "version")

    def test_required_strings(self) -> None:
        """The four required fields are present, non-empty strings."""
        for field in ("client_name", "server_endpoint", "server_cert_sha256", "token"):
            for bad in (DROP, "", "  ", 7, None, ["x"]):
                with self.subTest(field=field, bad=bad):
                    self.refuse(good_bundle(**{field: bad}), field)

    def test_client_id(self) -> None:
        """client_id, when present, is a non-empty string."""
        for bad in ("", 5, ["x"]):
            with self.subTest(bad=bad):
                self.refuse(good_bundle(client_id=bad), "client_id")

    def test_endpoint(self) -> None:
        """server_endpoint must be HOST:PORT."""
        for bad in ("ctl.example.com", "https://ctl:7443", "ctl:0", "ctl:7443/x", "::1:7443"):
            with self.subTest(bad=bad):
                self.refuse(good_bundle(server_endpoint=bad), "server_endpoint", "HOST:PORT")
        self.put(good_bundle(server_endpoint="[::1]:7443"))
        self.assertEqual(read_bundle(self.path).server_endpoint, "[::1]:7443")

    def test_pin(self) -> None:
        """server_cert_sha256 must be exactly 64 hex digits (no prefix)."""
        for bad in (PIN[:-1], PIN + "a", "sha256:" + PIN, PIN[:-1] + "x"):
            with self.subTest(bad=bad):
                self.refuse(good_bundle(server_cert_sha256=bad), "server_cert_sha256", "64 hex")

    def test_from_json_source(self) -> None:
        """bundle_from_json names the source it is given (e.g. a server reply)."""
        e = self.assertRaises(
            BundleError, bundle_from_json, good_bundle(token=""), "enrollment reply"
        )
        self.assertTrue(e.message.startswith("enrollment reply: field 'token'"))

    def test_write_read_round_trip(self) -> None:
        """What write_bundle writes, read_bundle reads back equal."""
        for client_id in ("01HZX3V8Q0F3J6K9W2N5R7T4YB", None):
            bundle = Bundle(
                client_name="edge",
                client_id=client_id,
                server_endpoint="[2001:db8::1]:7443",
                server_cert_sha256=PIN,
                token=TOKEN,
            )
            write_bundle(bundle, self.path)
            self.assertEqual(read_bundle(self.path), bundle)
            with open(self.path) as f:
                on_disk = json.load(f)
            self.assertEqual("client_id" in on_disk, client_id is not None)
            self.assertEqual(on_disk["version"], 1)

    def test_write_mode_and_parents(self) -> None:
        """Parents are created and the file is 0600 whatever the umask."""
        path = os.path.join(self.dir, "x", "y", "client.bundle.json")
        old = os.umask(0)
        try:
            write_bundle(bundle_from_json(good_bundle()), path)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["client.bundle.json"])

    def test_write_replaces_open_file(self) -> None:
        """An existing, world-readable bundle is replaced by a 0600 one."""
        self.put({"old": True})
        os.chmod(self.path, 0o644)
        write_bundle(bundle_from_json(good_bundle()), self.path)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(read_bundle(self.path).token, TOKEN)

    def test_repr_hides_token(self) -> None:
        """The token never appears in a bundle's repr."""
        bundle = bundle_from_json(good_bundle())
        self.assertNotIn(TOKEN, repr(bundle))
        self.assertNotIn(TOKEN, str(bundle))
        self.assertIn("edge-1", repr(bundle))


class PathTests(SynchronousTestCase):
    """Default bundle locations."""

    def test_full_order(self) -> None:
        """Env override, XDG, HOME, then the working directory."""
        env = {
            "PORTUNUS_CLIENT_BUNDLE": "/etc/portunus/b.json",
            "XDG_CONFIG_HOME": "/x",
            "HOME": "/h",
        }
        self.assertEqual(
            default_bundle_paths(env),
            [
                "/etc/portunus/b.json",
                "/x/portunus/client.bundle.json",
                "/h/.config/portunus/client.bundle.json",
                "./client.bundle.json",
            ],
        )
        self.assertEqual(default_enroll_out(env), "/x/portunus/client.bundle.json")

    def test_empty_skipped(self) -> None:
        """Unset and empty variables are skipped."""
        env = {"PORTUNUS_CLIENT_BUNDLE": "", "XDG_CONFIG_HOME": "", "HOME": "/h"}
        self.assertEqual(
            default_bundle_paths(env),
            ["/h/.config/portunus/client.bundle.json", "./client.bundle.json"],
        )
        self.assertEqual(default_enroll_out(env), "/h/.config/portunus/client.bundle.json")
        self.assertEqual(default_bundle_paths({}), ["./client.bundle.json"])
        self.assertEqual(default_enroll_out({"HOME": ""}), "./client.bundle.json")

    def test_enroll_out_ignores_override(self) -> None:
        """The bundle override does not redirect where enroll writes."""
        self.assertEqual(
            default_enroll_out({"PORTUNUS_CLIENT_BUNDLE": "/b.json", "HOME": "/h"}),
            "/h/.config/portunus/client.bundle.json",
        )


class SecretTests(SynchronousTestCase):
    """new_secret, hash_secret."""

    def test_new_secret_shape(self) -> None:
        """43 URL-safe base64 characters, no padding, 32 bytes of entropy, unique."""
        import base64

        seen = {new_secret() for _ in range(50)}
        self.assertEqual(len(seen), 50)
        for secret in seen:
            self.assertEqual(len(secret), 43)
            self.assertRegex(secret, r"^[A-Za-z0-9_-]{43}$")
            self.assertEqual(len(base64.urlsafe_b64decode(secret + "=")), 32)

    def test_hash(self) -> None:
        """BLAKE2b-256 hex of the UTF-8 bytes; stable; differs per secret."""
        self.assertEqual(
            hash_secret("abc"),
            "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319",
        )
        self.assertEqual(len(hash_secret(new_secret())), 64)
        self.assertNotEqual(hash_secret("a"), hash_secret("b"))
