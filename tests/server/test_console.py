"""
The web console's files as the operator API serves them (the real Klein
resource through StubTreq): the index fallback for the console's own
routes, assets with their media types and caching, the security headers,
and C{/v1} paths that stay JSON 404s.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from portunus.server.api.console import CONTENT_SECURITY_POLICY, Console, content_type
from tests.server._apiharness import ApiHarness
from tests.server._fakeplane import FakePlane

_IMPORT = re.compile(r"""(?:import|from)\s*(?:[\w{},*\s]+from\s*)?['"](\.{1,2}/[^'"]+)['"]""")
_INDEX_REF = re.compile(r"""(?:src|href)="(/assets/[^"]+)\"""")


class ConsoleTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = ApiHarness(self, FakePlane())
        self.console = Console.load()

    def get(self, path: str, **headers: str) -> tuple[int, bytes, Any]:
        status, _, response = self.api.request("GET", path, token=None, headers=headers or None)
        content = self.successResultOf(response.content())
        return status, content, response

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def assertSecurityHeaders(self, response: Any) -> None:
        self.assertEqual(self.header(response, "content-security-policy"), CONTENT_SECURITY_POLICY)
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
        self.assertEqual(self.header(response, "referrer-policy"), "same-origin")


class IndexTests(ConsoleTestCase):
    def test_root_is_the_index(self) -> None:
        """C{/} answers index.html, revalidated on every load, with the security headers."""
        status, body, response = self.get("/")
        self.assertEqual(status, 200)
        self.assertEqual(body, self.console.index.body)
        self.assertIn(b'<script type="module" src="/assets/app.js">', body)
        self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")
        self.assertEqual(self.header(response, "cache-control"), "no-cache")
        self.assertSecurityHeaders(response)

    def test_console_routes_fall_back_to_the_index(self) -> None:
        """Deep links of the console (reloaded or bookmarked) get index.html."""
        for path in ("/rules", "/rules/7", "/users/bob", "/login", "/v1x", "/favicon.ico"):
            status, body, _ = self.get(path)
            self.assertEqual((status, body), (200, self.console.index.body), path)

    def test_console_needs_no_credentials_and_is_not_audited(self) -> None:
        """
        The console's files are public (its data is not) and are served
        before onboarding; they never reach the API pipeline or its audit.
        """
        self.assertIsNotNone(self.api.setup_token)
        status, _, _ = self.get("/onboarding")
        self.assertEqual(status, 200)
        self.assertEqual(self.api.audit.entries, [])

    def test_only_get_and_head(self) -> None:
        """Writes to a console path are 405 with Allow, still with the security headers."""
        status, _, response = self.api.request("POST", "/", {"x": 1}, token=None)
        self.assertEqual(status, 405)
        self.assertEqual(self.header(response, "allow"), "GET, HEAD")
        self.assertSecurityHeaders(response)

    def test_head(self) -> None:
        """HEAD answers the headers of GET without a body."""
        status, body, response = self.api.request("HEAD", "/rules", token=None)
        self.assertEqual(status, 200)
        self.assertIsNone(body)
        self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")


class AssetTests(ConsoleTestCase):
    def test_asset_types_and_cache(self) -> None:
        """Assets carry their media type (module scripts need a JS one) and a short cache."""
        expected = {
            "/assets/app.js": "text/javascript; charset=utf-8",
            "/assets/pages/rules.js": "text/javascript; charset=utf-8",
            "/assets/styles.css": "text/css; charset=utf-8",
            "/assets/favicon.svg": "image/svg+xml",
        }
        for path, kind in expected.items():
            status, body, response = self.get(path)
            self.assertEqual(status, 200, path)
            self.assertEqual(self.header(response, "content-type"), kind, path)
            self.assertEqual(self.header(response, "cache-control"), "public, max-age=300")
            self.assertEqual(body, self.console.assets[path[len("/assets/") :]].body)
            self.assertSecurityHeaders(response)

    def test_etag_revalidation(self) -> None:
        """A matching If-None-Match is 304 with no body."""
        _, _, response = self.get("/assets/app.js")
        etag = self.header(response, "etag")
        assert etag is not None
        status, body, _ = self.get("/assets/app.js", **{"if-none-match": etag})
        self.assertEqual((status, body), (304, b""))
        status, _, _ = self.get("/assets/app.js", **{"if-none-match": '"stale"'})
        self.assertEqual(status, 200)

    def test_unknown_asset_is_a_plain_404(self) -> None:
        """
        A missing asset is a 404, not index.html (a module script must
        fail loudly), and names outside the shipped set never reach the disk.
        """
        for path in (
            "/assets/nope.js",
            "/assets/../index.html",
            "/assets/%2e%2e/__init__.py",
            "/assets/",
            "/assets/pages",
        ):
            status, body, response = self.get(path)
            self.assertEqual(status, 404, path)
            self.assertEqual(self.header(response, "content-type"), "text/plain; charset=utf-8")
            self.assertNotIn(b"<html", body)
            self.assertSecurityHeaders(response)

    def test_every_reference_resolves(self) -> None:
        """
        index.html's assets and every relative import of every module are
        shipped files, so no page breaks on a typo in an import.
        """
        for ref in _INDEX_REF.findall(self.console.index.body.decode()):
            self.assertIn(ref[len("/assets/") :], self.console.assets, ref)
        modules = [name for name in self.console.assets if name.endswith(".js")]
        self.assertIn("pages/rules.js", modules)
        for name in modules:
            source = self.console.assets[name].body.decode()
            for ref in _IMPORT.findall(source):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), ref))
                self.assertIn(target, self.console.assets, f"{name} imports {ref}")

    def test_no_inline_script_or_style(self) -> None:
        """The CSP forbids inline script and style; index.html has none."""
        index = self.console.index.body.decode()
        self.assertNotIn("style=", index)
        self.assertNotIn("<style", index)
        self.assertIsNone(re.search(r"<script(?![^>]*\bsrc=)[^>]*>", index))


class ApiPathTests(ConsoleTestCase):
    def test_unknown_v1_paths_stay_json_404s(self) -> None:
        """The console never answers under /v1: unknown API routes are JSON errors."""
        for path in ("/v1", "/v1/", "/v1/nothing-here", "/v1/assets/app.js"):
            status, body, response = self.api.request("GET", path, token=None)
            self.assertEqual(status, 404, path)
            self.assertEqual(body["error"]["code"], "not_found", path)
            self.assertEqual(self.header(response, "content-type"), "application/json")
            self.assertIsNone(self.header(response, "content-security-policy"))

    def test_api_routes_still_answer(self) -> None:
        """Known routes are untouched by the fallback."""
        status, body, _ = self.api.request("GET", "/v1/health", token=None)
        self.assertEqual((status, body), (200, {"status": "ok"}))

    def test_wrong_method_on_api_route_is_still_405(self) -> None:
        """The fallback does not swallow the API's 405s."""
        status, body, _ = self.api.request("DELETE", "/v1/health", token=None)
        self.assertEqual(status, 405)
        self.assertEqual(body["error"]["code"], "method_not_allowed")


class LoadTests(SynchronousTestCase):
    def test_load_reads_index_and_assets_only(self) -> None:
        """Python files, hidden and private entries of the folder are not served."""
        root = Path(self.mktemp())
        (root / "assets" / "pages").mkdir(parents=True)
        (root / "assets" / "_private").mkdir()
        (root / "index.html").write_text("<!doctype html>")
        (root / "assets" / "a.js").write_text("export {};")
        (root / "assets" / "pages" / "b.js").write_text("export {};")
        (root / "assets" / ".hidden.js").write_text("x")
        (root / "assets" / "x.py").write_text("x")
        (root / "assets" / "_private" / "c.js").write_text("x")
        console = Console.load(root)
        self.assertEqual(sorted(console.assets), ["a.js", "pages/b.js"])
        self.assertEqual(console.index.body, b"<!doctype html>")
        self.assertEqual(console.assets["a.js"].content_type, "text/javascript; charset=utf-8")

    def test_content_types(self) -> None:
        """Extensions map to media types, case-insensitively; others are octet-stream."""
        self.assertEqual(content_type("A.JS"), "text/javascript; charset=utf-8")
        self.assertEqual(content_type("x.png"), "image/png")
        self.assertEqual(content_type("noext"), "application/octet-stream")

    def test_shipped_package_has_the_console(self) -> None:
        """The installed package carries the files (package data), not only the checkout."""
        console = Console.load()
        for name in ("app.js", "api.js", "styles.css", "theme.js", "pages/dashboard.js"):
            self.assertIn(name, console.assets)
