"""
C{portunus-server} user and grant commands through the real operator API
(StubTreq over the Klein app, real accounts in a temporary store): their
outputs, and that each refusal keeps the API's code and the registry's
exit code.
"""

from __future__ import annotations

import json
import sys
from io import StringIO

from portunus.control.enrollment import hash_secret
from tests.cli.test_server import CliTestCase

PASSWORD = "a long enough password"


class AccountsCliTestCase(CliTestCase):
    def stdin(self, text: str) -> None:
        self.patch(sys, "stdin", StringIO(text))

    def add_user(self, user_id: str, *extra: str) -> tuple[int, str, str]:
        self.stdin(PASSWORD + "\n")
        return self.cli(
            "user-add", user_id, "--display-name", user_id.title(), "--password-stdin", *extra
        )

    def add_grant(self, user_id: str = "bob", *extra: str) -> dict[str, object]:
        code, out, err = self.cli(
            "grant-add",
            "--user-id",
            user_id,
            "--client",
            "edge-01",
            "--listen-port-start",
            "8000",
            "--format",
            "json",
            *extra,
        )
        self.assertEqual(code, 0, err)
        grant: dict[str, object] = json.loads(out)
        return grant


class UserCommandTests(AccountsCliTestCase):
    def test_user_add(self) -> None:
        """user-add sends stdin's first line as the password and prints the user as key=value."""
        self.stdin(PASSWORD + "\nsecond line is not read\n")
        code, out, err = self.cli(
            "user-add",
            "bob",
            "--display-name",
            "Bob Builder",
            "--password-stdin",
            "--password-change-required",
        )
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(
            lines[:6],
            [
                "user_id=bob",
                "display_name=Bob Builder",
                "role=user",
                "disabled=false",
                "password_change_required=true",
                "grant_count=0",
            ],
        )
        self.assertRegex(lines[6], r"^created_at=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        login = self.successResultOf(self.api.accounts.login("bob", PASSWORD, None, None))
        self.assertTrue(login.user.password_change_required)

    def test_user_add_json_superadmin(self) -> None:
        """--format json prints the API's user object; --role is passed on."""
        code, out, err = self.add_user("carol", "--role", "superadmin", "--format", "json")
        self.assertEqual(code, 0, err)
        user = json.loads(out)
        self.assertEqual((user["user_id"], user["role"]), ("carol", "superadmin"))
        self.assertFalse(user["password_change_required"])

    def test_user_add_password_from_windows_stdin(self) -> None:
        """A CRLF line ending is not part of the password."""
        self.stdin(PASSWORD + "\r\n")
        self.cli("user-add", "bob", "--display-name", "Bob", "--password-stdin")
        self.successResultOf(self.api.accounts.login("bob", PASSWORD, None, None))

    def test_user_add_needs_password_stdin(self) -> None:
        """Without --password-stdin: exit 3 before any request, saying how to pass it."""
        err = self.assertFails(
            ("user-add", "bob", "--display-name", "Bob"), 3, "initial_password_required"
        )
        self.assertIn("--password-stdin", err)
        self.assertEqual(self.api.audit.entries, [])

    def test_user_add_needs_display_name(self) -> None:
        """--display-name is required: a usage error, exit 2."""
        self.stdin(PASSWORD + "\n")
        code, _, err = self.cli("user-add", "bob", "--password-stdin")
        self.assertEqual(code, 2)
        self.assertIn("--display-name is required", err)

    def test_user_add_refusals(self) -> None:
        """Server-side checks keep their codes: exists 2, bad id, role or password 3."""
        self.assertEqual(self.add_user("bob")[0], 0)
        self.stdin(PASSWORD + "\n")
        self.assertFails(
            ("user-add", "bob", "--display-name", "B", "--password-stdin"),
            2,
            "user_already_exists",
        )
        self.stdin(PASSWORD + "\n")
        self.assertFails(
            ("user-add", "Bad Id", "--display-name", "B", "--password-stdin"),
            3,
            "invalid_user_id",
        )
        self.stdin(PASSWORD + "\n")
        self.assertFails(
            ("user-add", "eve", "--display-name", "E", "--password-stdin", "--role", "root"),
            3,
            "invalid_role",
        )
        self.stdin("short\n")
        self.assertFails(
            ("user-add", "eve", "--display-name", "E", "--password-stdin"),
            3,
            "password_too_short",
        )
        self.stdin("")
        self.assertFails(
            ("user-add", "eve", "--display-name", "E", "--password-stdin"),
            3,
            "initial_password_required",
        )

    def test_user_list(self) -> None:
        """user-list prints aligned columns, reserved machine users included."""
        self.add_user("bob", "--password-change-required")
        self.add_grant("bob")
        code, out, err = self.cli("user-list")
        self.assertEqual(code, 0, err)
        header, *rows = out.splitlines()
        self.assertEqual(
            header.split(), ["USER_ID", "ROLE", "DISPLAY_NAME", "STATE", "GRANTS", "CREATED_AT"]
        )
        cells = {row.split()[0]: row.split() for row in rows}
        self.assertEqual(set(cells), {"_legacy", "bob"})
        self.assertEqual(cells["bob"][1:5], ["user", "Bob", "password_change_required", "1"])
        self.assertEqual(cells["_legacy"][1], "superadmin")
        self.assertEqual(header.index("ROLE"), rows[0].index("superadmin"))

    def test_user_list_json(self) -> None:
        """--format json prints the API's user list as is."""
        self.add_user("bob")
        _, out, _ = self.cli("user-list", "--format", "json")
        self.assertEqual([u["user_id"] for u in json.loads(out)], ["_legacy", "bob"])

    def test_user_get(self) -> None:
        """user-get prints one user, as key=value lines or JSON; unknown is exit 8."""
        self.add_user("bob")
        code, out, _ = self.cli("user-get", "bob")
        self.assertEqual(code, 0)
        self.assertIn("role=user", out.splitlines())
        _, out, _ = self.cli("user-get", "--format", "json", "bob")
        self.assertEqual(json.loads(out)["display_name"], "Bob")
        self.assertFails(("user-get", "ghost"), 8, "user_not_found")

    def test_user_remove_prints_what_went(self) -> None:
        """user-remove names what went with the user (here its grant)."""
        self.add_user("bob")
        grant = self.add_grant("bob")
        code, out, err = self.cli("user-remove", "bob")
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out,
            f"removed user_id=bob revoked_grant_ids={grant['grant_id']} "
            "removed_rule_ids=- removed_credential_ids=-\n",
        )
        self.assertFails(("user-get", "bob"), 8, "user_not_found")

    def test_user_remove_json(self) -> None:
        """--format json prints the API's removal answer."""
        self.add_user("bob")
        _, out, _ = self.cli("user-remove", "bob", "--format", "json")
        self.assertEqual(
            json.loads(out),
            {
                "user_id": "bob",
                "revoked_grant_ids": [],
                "removed_rule_ids": [],
                "removed_credential_ids": [],
            },
        )

    def test_user_remove_refusals(self) -> None:
        """Unknown is 8; removing yourself or the last superadmin is 2."""
        self.assertFails(("user-remove", "ghost"), 8, "user_not_found")
        self.assertFails(("user-remove", "_legacy"), 2, "cannot_remove_self")
        self.api.onboard("alice")
        self.assertFails(("user-remove", "alice"), 2, "last_superadmin")


class GrantCommandTests(AccountsCliTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_user("bob")

    def test_grant_add(self) -> None:
        """grant-add sends the range, protocols and note; prints the grant as key=value."""
        code, out, err = self.cli(
            "grant-add",
            "--user-id",
            "bob",
            "--client",
            "edge-01",
            "--listen-port-start",
            "8000",
            "--listen-port-end",
            "8100",
            "--protocols",
            "udp, TCP",
            "--note",
            "team web",
        )
        self.assertEqual(code, 0, err)
        fields = dict(line.split("=", 1) for line in out.splitlines())
        self.assertEqual(
            {k: fields[k] for k in ("user_id", "client_id", "protocols", "note")},
            {
                "user_id": "bob",
                "client_id": self.edge.client_id,
                "protocols": "tcp,udp",
                "note": "team web",
            },
        )
        self.assertEqual((fields["listen_port_start"], fields["listen_port_end"]), ("8000", "8100"))
        _, out, _ = self.cli("grant-list", "--format", "json")
        [grant] = json.loads(out)
        self.assertEqual(
            (fields["grant_id"], fields["client"]), (grant["grant_id"], grant["client"])
        )

    def test_grant_add_allow_local_targets(self) -> None:
        """--allow-local-targets makes a grant whose rules may target local addresses."""
        grant = self.add_grant("bob", "--client", "*", "--allow-local-targets")
        self.assertIs(grant["allow_local_targets"], True)
        plain = self.add_grant("bob", "--client", "*", "--listen-port-start", "9000")
        self.assertIs(plain["allow_local_targets"], False)

    def test_grant_add_defaults_and_wildcard(self) -> None:
        """One port, tcp only, and * for every client."""
        grant = self.add_grant("bob", "--client", "*")
        self.assertEqual(
            (grant["client"], grant["listen_port_end"], grant["protocols"], grant["note"]),
            ("*", 8000, ["tcp"], ""),
        )

    def test_grant_add_refusals(self) -> None:
        """Unknown user or client is 8; bad ports or protocols 3; missing flags 2."""
        base = ("grant-add", "--listen-port-start", "8000")
        self.assertFails((*base, "--user-id", "ghost", "--client", "*"), 8, "user_not_found")
        self.assertFails((*base, "--user-id", "bob", "--client", "edge-9"), 8, "client_not_found")
        self.assertFails(
            ("grant-add", "--user-id", "bob", "--client", "*", "--listen-port-start", "0"),
            3,
            "invalid_port_range",
        )
        self.assertFails(
            (*base, "--user-id", "bob", "--client", "*", "--listen-port-end", "7000"),
            3,
            "invalid_port_range",
        )
        self.assertFails(
            (*base, "--user-id", "bob", "--client", "*", "--protocols", "sctp"),
            3,
            "invalid_protocol",
        )
        self.assertFails(
            (*base, "--user-id", "bob", "--client", "*", "--protocols", ","),
            3,
            "empty_protocol_set",
        )
        for argv in (
            ("grant-add", "--user-id", "bob", "--client", "*"),
            ("grant-add", "--user-id", "bob", "--listen-port-start", "1"),
            ("grant-add", "--client", "*", "--listen-port-start", "x"),
        ):
            code, _, err = self.cli(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn("error: usage:", err)

    def test_grant_list(self) -> None:
        """grant-list aligns its columns, ranges as A-B, and filters by --user-id."""
        self.add_user("carol")
        first = self.add_grant(
            "bob", "--client", "*", "--listen-port-end", "8100", "--note", "web team"
        )
        self.api.clock.advance(1)  # grant ids, and so the listing, follow time
        self.add_grant("carol")
        code, out, _ = self.cli("grant-list")
        self.assertEqual(code, 0)
        header, *rows = out.splitlines()
        self.assertEqual(
            header.split(),
            ["GRANT_ID", "USER_ID", "CLIENT", "PORTS", "PROTOCOLS", "LOCAL", "CREATED_AT", "NOTE"],
        )
        self.assertEqual(len(rows), 2)
        self.assertEqual(
            rows[0].split()[:6] + rows[0].split()[7:],
            [first["grant_id"], "bob", "*", "8000-8100", "tcp", "no", "web", "team"],
        )
        self.assertEqual(rows[1].split()[3], "8000")
        self.assertEqual(rows[1].split()[-1], "-")
        self.assertEqual(header.index("PORTS"), rows[0].index("8000-8100"))
        _, out, _ = self.cli("grant-list", "--user-id", "carol", "--format", "json")
        self.assertEqual([g["user_id"] for g in json.loads(out)], ["carol"])

    def test_grant_revoke(self) -> None:
        """grant-revoke prints the rules it removed; revoking again is exit 8."""
        grant = self.add_grant("bob")
        code, out, err = self.cli("grant-revoke", str(grant["grant_id"]))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"revoked grant_id={grant['grant_id']} removed_rule_ids=-\n")
        self.assertEqual(self.successResultOf(self.api.accounts.list_grants("bob")), [])
        self.assertFails(("grant-revoke", str(grant["grant_id"])), 8, "grant_not_found")

    def test_grant_revoke_json(self) -> None:
        """--format json prints the API's revoke answer."""
        grant = self.add_grant("bob")
        _, out, _ = self.cli("grant-revoke", "--format", "json", str(grant["grant_id"]))
        self.assertEqual(json.loads(out), {"grant_id": grant["grant_id"], "removed_rule_ids": []})


class AuthTests(AccountsCliTestCase):
    def test_token_missing(self) -> None:
        """Every account command stops at exit 4 without PORTUNUS_OPERATOR_TOKEN."""
        self.env = {}
        self.stdin(PASSWORD + "\n")
        for argv in (
            ("user-add", "bob", "--display-name", "Bob", "--password-stdin"),
            ("user-list",),
            ("user-get", "bob"),
            ("user-remove", "bob"),
            ("grant-add", "--user-id", "b", "--client", "*", "--listen-port-start", "1"),
            ("grant-list",),
            ("grant-revoke", "g"),
        ):
            err = self.assertFails(argv, 4, "unauthenticated")
            self.assertIn("PORTUNUS_OPERATOR_TOKEN", err)
        self.assertEqual(self.api.audit.entries, [])

    def test_wrong_token(self) -> None:
        """A token the server does not know is credential_invalid, exit 4."""
        self.env = {"PORTUNUS_OPERATOR_TOKEN": "not-the-token"}
        self.assertFails(("user-list",), 4, "credential_invalid")

    def test_user_role_is_refused(self) -> None:
        """A bearer of a plain user gets role_required, exit 5, on superadmin routes."""
        self.add_user("bob")
        self.successResultOf(
            self.api.store.accounts.add_credential(
                "bob", hash_secret("bob-token"), "test", self.api.clock.seconds()
            )
        )
        self.env = {"PORTUNUS_OPERATOR_TOKEN": "bob-token"}
        self.assertFails(("user-list",), 5, "role_required")
        self.assertFails(("grant-list", "--user-id", "bob"), 5, "role_required")
