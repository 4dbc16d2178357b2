"""
CSRF for cookie-authenticated writes: the Origin, the X-Portunus-CSRF
header and the JSON content type, checked on every cookie write and on
nothing else; each refusal is audited.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.server._apiharness import TOKEN, ApiHarness
from tests.server._fakeplane import FakePlane

PASSWORD = "correct horse battery"
ORIGIN = "http://127.0.0.1:7080"
HOST = "127.0.0.1:7080"
ENROLL = {"name": "edge-02"}

Answer = tuple[int, Any, Any]


class CsrfTestCase(SynchronousTestCase):
    """Alice onboarded and logged in; cookie writes go out with exactly the headers given."""

    public_origin: str | None = None

    def setUp(self) -> None:
        self.plane = FakePlane()
        self.edge = self.plane.add_client("edge-01")
        self.api = ApiHarness(self, self.plane, public_origin=self.public_origin)
        self.api.onboard("alice", PASSWORD)
        self.cookie = self.api.login("alice", PASSWORD)
        self.api.audit.entries.clear()

    def write(
        self,
        headers: dict[str, str],
        body: object = ENROLL,
        *,
        method: str = "POST",
        path: str = "/v1/client-enrollments",
        raw: bytes | None = None,
        content_type: str = "application/json",
        token: str | None = None,
    ) -> Answer:
        """A cookie request with C{headers} (the Host is always this server's)."""
        return self.api.request(
            method,
            path,
            body,
            token=token,
            cookie=self.cookie,
            headers={"host": HOST, **headers},
            raw=raw,
            content_type=content_type,
        )

    def assertRefused(self, answer: Answer, code: str) -> None:
        """C{answer} is a 403 C{code}, the plane saw nothing, and the deny is audited."""
        status, body, _ = answer
        self.assertEqual((status, body["error"]["code"]), (403, code), body)
        self.assertIsInstance(body["error"]["message"], str)
        self.assertNotIn("enroll_client", [name for name, _ in self.plane.calls])
        entry = self.api.audit.entries[-1]
        self.assertEqual(
            (entry.outcome, entry.reason, entry.method, entry.path),
            ("deny", code, "POST", "/v1/client-enrollments"),
        )
        self.assertEqual((entry.actor, entry.role), ("alice", "superadmin"))

    def assertPassed(self, answer: Answer) -> None:
        status, body, _ = answer
        self.assertEqual(status, 201, body)
        self.assertEqual(self.plane.calls[-1][0], "enroll_client")


class HostOriginTests(CsrfTestCase):
    """Without operator_http_public_origin the Origin must name the Host."""

    def test_all_right(self) -> None:
        """Same-origin Origin, the CSRF header and a JSON body pass."""
        self.assertPassed(self.write({"origin": ORIGIN, "x-portunus-csrf": "1"}))
        entry = self.api.audit.entries[-1]
        self.assertEqual((entry.outcome, entry.actor), ("allow", "alice"))

    def test_no_origin(self) -> None:
        """A cookie write without Origin is csrf_origin_required."""
        self.assertRefused(self.write({"x-portunus-csrf": "1"}), "csrf_origin_required")

    def test_blank_origin(self) -> None:
        """A blank Origin counts as none."""
        self.assertRefused(
            self.write({"origin": " ", "x-portunus-csrf": "1"}), "csrf_origin_required"
        )

    def test_null_origin(self) -> None:
        """Origin: null (sandboxed frames, some redirects) counts as none."""
        self.assertRefused(
            self.write({"origin": "null", "x-portunus-csrf": "1"}), "csrf_origin_required"
        )

    def test_foreign_origin(self) -> None:
        """Another site's Origin is csrf_origin_mismatch."""
        self.assertRefused(
            self.write({"origin": "https://evil.example", "x-portunus-csrf": "1"}),
            "csrf_origin_mismatch",
        )

    def test_other_port(self) -> None:
        """The same host on another port is another origin."""
        self.assertRefused(
            self.write({"origin": "http://127.0.0.1:7081", "x-portunus-csrf": "1"}),
            "csrf_origin_mismatch",
        )

    def test_host_as_subdomain_of_attacker(self) -> None:
        """An Origin merely containing the Host is a mismatch."""
        self.assertRefused(
            self.write({"origin": "http://127.0.0.1:7080.evil.example", "x-portunus-csrf": "1"}),
            "csrf_origin_mismatch",
        )

    def test_host_compared_without_case(self) -> None:
        """Host names are compared case-insensitively."""
        self.assertPassed(
            self.write(
                {
                    "origin": "http://Console.Example.NET:7080",
                    "x-portunus-csrf": "1",
                    "host": "console.example.net:7080",
                }
            )
        )

    def test_https_origin_matches_host(self) -> None:
        """Either scheme is stripped before comparing with Host (the proxy may terminate TLS)."""
        self.assertPassed(self.write({"origin": f"https://{HOST}", "x-portunus-csrf": "1"}))

    def test_no_csrf_header(self) -> None:
        """The right Origin without X-Portunus-CSRF is csrf_header_required."""
        self.assertRefused(self.write({"origin": ORIGIN}), "csrf_header_required")

    def test_wrong_csrf_header(self) -> None:
        """X-Portunus-CSRF must be exactly 1."""
        self.assertRefused(
            self.write({"origin": ORIGIN, "x-portunus-csrf": "yes"}), "csrf_header_required"
        )

    def test_text_plain_body(self) -> None:
        """A form-encodable body type (text/plain) is csrf_content_type_required."""
        self.assertRefused(
            self.write(
                {"origin": ORIGIN, "x-portunus-csrf": "1"},
                raw=json.dumps(ENROLL).encode(),
                content_type="text/plain",
            ),
            "csrf_content_type_required",
        )

    def test_form_body(self) -> None:
        """A form body is csrf_content_type_required."""
        self.assertRefused(
            self.write(
                {"origin": ORIGIN, "x-portunus-csrf": "1"},
                raw=b"name=edge-02",
                content_type="application/x-www-form-urlencoded",
            ),
            "csrf_content_type_required",
        )

    def test_json_with_charset(self) -> None:
        """application/json with parameters is JSON."""
        self.assertPassed(
            self.write(
                {"origin": ORIGIN, "x-portunus-csrf": "1"},
                raw=json.dumps(ENROLL).encode(),
                content_type="application/json; charset=utf-8",
            )
        )

    def test_origin_checked_first(self) -> None:
        """With everything wrong the Origin is what the refusal names."""
        self.assertRefused(
            self.write({}, raw=b"x", content_type="text/plain"), "csrf_origin_required"
        )

    def test_bodiless_write_needs_no_content_type(self) -> None:
        """A write without a body passes on Origin and header alone."""
        status, _, _ = self.write(
            {"origin": ORIGIN, "x-portunus-csrf": "1"},
            None,
            method="POST",
            path=f"/v1/clients/{self.edge.client_id}/revoke",
        )
        self.assertEqual(status, 204)

    def test_bodiless_write_still_needs_origin(self) -> None:
        """A write without a body still needs the Origin."""
        status, body, _ = self.write(
            {"x-portunus-csrf": "1"},
            None,
            method="DELETE",
            path=f"/v1/clients/{self.edge.client_id}",
        )
        self.assertEqual((status, body["error"]["code"]), (403, "csrf_origin_required"))
        self.assertEqual(self.api.audit.entries[-1].reason, "csrf_origin_required")

    def test_every_mutating_method(self) -> None:
        """POST, PATCH and DELETE with a cookie all need CSRF."""
        for method, path in [
            ("POST", "/v1/rules"),
            ("PATCH", f"/v1/clients/{self.edge.client_id}"),
            ("DELETE", "/v1/rules/1"),
        ]:
            with self.subTest(method=method):
                status, body, _ = self.write({}, {"name": "x"}, method=method, path=path)
                self.assertEqual((status, body["error"]["code"]), (403, "csrf_origin_required"))

    def test_get_needs_no_csrf(self) -> None:
        """Reads with a cookie need no Origin or CSRF header."""
        status, body, _ = self.write({}, None, method="GET", path="/v1/clients")
        self.assertEqual((status, len(body)), (200, 1))
        self.assertEqual(self.api.audit.entries, [])

    def test_bearer_writes_skip_csrf(self) -> None:
        """A bearer write from anywhere, without the header, passes CSRF."""
        status, body, _ = self.api.request(
            "POST", "/v1/client-enrollments", ENROLL, headers={"origin": "https://evil.example"}
        )
        self.assertEqual(status, 201, body)

    def test_bearer_does_not_excuse_a_cookie(self) -> None:
        """A cookie write is checked even when a valid bearer comes with it."""
        self.assertRefused(self.write({}, token=TOKEN), "csrf_origin_required")

    def test_bad_cookie_is_refused_before_csrf(self) -> None:
        """An unknown session is credential_invalid, whatever the CSRF headers say."""
        status, body, _ = self.api.request(
            "POST",
            "/v1/client-enrollments",
            ENROLL,
            token=None,
            cookie="forged",
            headers={"host": HOST},
        )
        self.assertEqual((status, body["error"]["code"]), (401, "credential_invalid"))

    def test_public_routes_skip_csrf(self) -> None:
        """Login is public: a cookie sent along is ignored and needs no CSRF."""
        status, body, _ = self.api.request(
            "POST",
            "/v1/auth/login",
            {"user_id": "alice", "password": PASSWORD},
            token=None,
            cookie=self.cookie,
        )
        self.assertEqual(status, 200, body)


class PublicOriginTests(CsrfTestCase):
    """With operator_http_public_origin the Origin must equal it exactly."""

    public_origin = "https://console.example.net"

    def test_exact_match_passes(self) -> None:
        """The configured origin passes, though the Host is the internal address."""
        self.assertPassed(self.write({"origin": self.public_origin, "x-portunus-csrf": "1"}))

    def test_host_is_ignored(self) -> None:
        """An Origin matching the Host is refused: only the public origin counts."""
        self.assertRefused(
            self.write({"origin": ORIGIN, "x-portunus-csrf": "1"}), "csrf_origin_mismatch"
        )

    def test_near_misses(self) -> None:
        """Another scheme, an explicit port or a trailing slash is not the public origin."""
        for origin in [
            "http://console.example.net",
            "https://console.example.net:443",
            "https://console.example.net/",
            "https://evil.example",
        ]:
            with self.subTest(origin=origin):
                self.assertRefused(
                    self.write({"origin": origin, "x-portunus-csrf": "1"}),
                    "csrf_origin_mismatch",
                )

    def test_still_needs_the_header(self) -> None:
        """The public origin does not excuse the CSRF header."""
        self.assertRefused(self.write({"origin": self.public_origin}), "csrf_header_required")
