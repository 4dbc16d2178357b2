"""
Names refuse Unicode format characters as they refuse control characters,
on every path that takes one: user display names (creation and
onboarding), client names (enrollment and rename), rule names, grant
notes.  One check does it (L{portunus.fields.has_bad_characters}).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from portunus.fields import has_bad_characters
from tests.server._apiharness import ApiHarness
from tests.server._fakeplane import FakePlane

#: Characters that make a name display as something else, or look like another.
FORMAT_CHARACTERS = {
    "LRE": "\u202a",
    "RLE": "\u202b",
    "PDF": "\u202c",
    "LRO": "\u202d",
    "RLO": "\u202e",
    "LRI": "\u2066",
    "RLI": "\u2067",
    "FSI": "\u2068",
    "PDI": "\u2069",
    "ZWSP": "\u200b",
    "ZWNJ": "\u200c",
    "ZWJ": "\u200d",
    "WJ": "\u2060",
    "BOM": "\ufeff",
    "soft hyphen": "\u00ad",
    "LS": "\u2028",
    "PS": "\u2029",
    "NBSP": "\u00a0",
}


class BadCharacterTests(SynchronousTestCase):
    def test_format_characters_are_bad(self) -> None:
        """Bidirectional controls, zero-width characters and odd separators are refused."""
        for name, char in FORMAT_CHARACTERS.items():
            with self.subTest(name=name):
                self.assertTrue(has_bad_characters(f"invoice{char}fdp.exe"))

    def test_control_characters_and_surrogates_still_are(self) -> None:
        """What was refused before still is."""
        for text in ("a\x00", "a\tb", "a\nb", "a\x7f", "a\x85", "\ud800"):
            self.assertTrue(has_bad_characters(text), repr(text))

    def test_printable_text_of_any_script_is_not(self) -> None:
        """Letters, marks, digits, symbols and the ASCII space of any script pass."""
        for text in ("web", "edge 01", "naïve", "Ünïcødé", "東京-1", "مرحبا", "ok 🚀"):
            self.assertFalse(has_bad_characters(text), text)


class NamePathTests(SynchronousTestCase):
    """Each API path that takes a name refuses one holding a right-to-left override."""

    BAD = "gnp\u202eexe.txt"

    def setUp(self) -> None:
        self.plane = FakePlane()
        self.client = self.plane.add_client("edge-01")
        self.api = ApiHarness(self, self.plane)

    def assert_refused(self, answer: tuple[int, Any, Any], status: int, code: str) -> None:
        got, body, _ = answer
        self.assertEqual((got, body["error"]["code"]), (status, code), body)
        text = body["error"]["message"] + " ".join(
            issue["message"] for issue in body["error"].get("issues", [])
        )
        self.assertIn("format characters", text)

    def test_onboarding_display_name(self) -> None:
        """The first superadmin's display name."""
        answer = self.api.request(
            "POST",
            "/v1/auth/onboarding",
            {
                "user_id": "alice",
                "display_name": f"Alice {self.BAD}",
                "password": "correct horse battery",
                "password_confirm": "correct horse battery",
                "setup_token": self.api.setup_token,
            },
            token=None,
        )
        self.assert_refused(answer, 422, "invalid_display_name")

    def test_user_display_name(self) -> None:
        """A new user's display name."""
        self.api.onboard()
        answer = self.api.request(
            "POST",
            "/v1/users",
            {"user_id": "bob", "display_name": self.BAD, "initial_password": "x" * 12},
        )
        self.assert_refused(answer, 422, "invalid_display_name")

    def test_client_names(self) -> None:
        """A client's name, at enrollment and at rename."""
        self.api.onboard()
        answer = self.api.request(
            "POST", "/v1/client-enrollments", {"name": self.BAD, "address": "127.0.0.1"}
        )
        self.assert_refused(answer, 400, "invalid_name")
        answer = self.api.request(
            "PATCH", f"/v1/clients/{self.client.client_id}", {"name": self.BAD}
        )
        self.assert_refused(answer, 400, "invalid_name")

    def test_rule_name(self) -> None:
        """A pushed rule's name."""
        self.api.onboard()
        answer = self.api.request(
            "POST",
            "/v1/rules",
            {
                "client": "edge-01",
                "listen": 8080,
                "targets": [{"host": "10.0.0.5", "port": 80}],
                "name": self.BAD,
            },
        )
        self.assert_refused(answer, 400, "invalid_name")

    def test_grant_note(self) -> None:
        """A grant's note, shown next to names."""
        self.api.onboard()
        self.api.add_user("bob")
        answer = self.api.request(
            "POST",
            "/v1/grants",
            {"user_id": "bob", "client": "edge-01", "listen_port_start": 8000, "note": self.BAD},
        )
        self.assert_refused(answer, 400, "validation_failed")
