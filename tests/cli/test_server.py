"""
C{portunus-server} end to end through the real operator API: the CLI's
HTTP client is StubTreq over the Klein app over a fake control plane, so
every command crosses the same JSON, auth and error mapping as in
production, without sockets.
"""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from portunus import __version__
from portunus.cli import server as cli
from portunus.errors import PortunusError
from portunus.model import PortRange, ProxyProtocolVersion, RateLimit
from tests.server._apiharness import ApiHarness
from tests.server._fakeplane import FakePlane

TOKEN = "operator-token-for-tests"


class _Refusing:
    """An HTTP client whose every request finds nobody listening."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.urls.append(url)
        return fail(ConnectionRefusedError("Connection refused"))


class CliTestCase(SynchronousTestCase):
    """A CLI wired to an API over a L{FakePlane} with client C{edge-01}."""

    def setUp(self) -> None:
        self.plane = FakePlane()
        self.edge = self.plane.add_client("edge-01")
        self.api = ApiHarness(self, self.plane, operator_token=TOKEN)
        self.http: Any = self.api.http
        self.env = {"PORTUNUS_OPERATOR_TOKEN": TOKEN}

    def cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = StringIO(), StringIO()
        d = ensureDeferred(cli.run(argv, self.http, self.env, out, err, timeout=None))
        for _ in range(20):
            if d.called:
                break
            if isinstance(self.http, StubTreq):
                self.http.flush()
        code = self.successResultOf(d)
        return code, out.getvalue(), err.getvalue()

    def assertFails(self, argv: tuple[str, ...], exit_code: int, code: str) -> str:
        status, out, err = self.cli(*argv)
        self.assertEqual((status, out), (exit_code, ""), err)
        self.assertTrue(err.startswith(f"error: {code}: "), err)
        return err

    def pushed(self) -> Any:
        method, args = self.plane.calls[-1]
        self.assertEqual(method, "push_rule")
        return args[1]


class GlobalTests(CliTestCase):
    def test_gen_token(self) -> None:
        """gen-token prints 43 URL-safe characters, new each time, offline."""
        self.http = _Refusing()
        tokens = set()
        for _ in range(2):
            code, out, _ = self.cli("gen-token")
            self.assertEqual(code, 0)
            token = out.strip()
            self.assertRegex(token, r"^[A-Za-z0-9_-]{43}$")
            tokens.add(token)
        self.assertEqual(len(tokens), 2)
        self.assertEqual(self.http.urls, [])

    def test_token_missing(self) -> None:
        """No PORTUNUS_OPERATOR_TOKEN: exit 4 saying where the token lives, no request."""
        self.env = {}
        self.http = _Refusing()
        err = self.assertFails(("list-clients",), 4, "unauthenticated")
        self.assertIn("PORTUNUS_OPERATOR_TOKEN", err)
        self.assertIn("server.toml", err)
        self.assertEqual(self.http.urls, [])

    def test_wrong_token(self) -> None:
        self.env = {"PORTUNUS_OPERATOR_TOKEN": "wrong"}
        self.assertFails(("list-clients",), 4, "credential_invalid")

    def test_server_down(self) -> None:
        """Nobody listening: exit 1 naming the endpoint and how to start the server."""
        self.http = _Refusing()
        err = self.assertFails(("list-rules",), 1, "transport")
        self.assertIn("http://127.0.0.1:7080", err)
        self.assertIn("portunus-server serve", err)

    def test_endpoint_flag_and_env(self) -> None:
        """--http-endpoint beats PORTUNUS_HTTP_ENDPOINT, which beats the default."""
        self.http = _Refusing()
        self.env["PORTUNUS_HTTP_ENDPOINT"] = "10.1.1.1:9000"
        self.cli("list-clients")
        self.cli("--http-endpoint", "http://[::1]:7081", "list-clients")
        self.assertEqual(
            self.http.urls, ["http://10.1.1.1:9000/v1/clients", "http://[::1]:7081/v1/clients"]
        )

    def test_usage(self) -> None:
        """No command, an unknown one or a missing argument is exit 2."""
        for argv in ((), ("frobnicate",), ("revoke",), ("rename-client", "--name", "x")):
            code, _, err = self.cli(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn("error: usage:", err)

    def test_help_lists_every_command(self) -> None:
        """--help (or -h) prints the synopsis and every command, serve too, to stdout; exit 0."""
        self.http = _Refusing()
        for flag in ("--help", "-h"):
            code, out, err = self.cli(flag)
            self.assertEqual((code, err), (0, ""))
            self.assertTrue(out.startswith("Usage: portunus-server [--http-endpoint"), out)
            for name in [c.name for c in cli.COMMANDS] + ["serve"]:
                self.assertRegex(out, rf"\n +{name} +[A-Z]")
        self.assertEqual(self.http.urls, [])

    def test_command_help(self) -> None:
        """COMMAND --help names the program and the command once, and lists its options."""
        code, out, _ = self.cli("rule-stats", "--help")
        self.assertEqual(code, 0)
        self.assertTrue(
            out.startswith("Usage: portunus-server rule-stats ID [--per-port | --per-target]"), out
        )
        self.assertIn("--per-target", out)
        code, out, _ = self.cli("audit", "prune", "-h")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("Usage: portunus-server audit prune --before TIME"), out)

    def test_version(self) -> None:
        """--version prints portunus-server and Portunus' version (not Twisted's), at any level."""
        for argv in (("--version",), ("list-clients", "--version")):
            self.assertEqual(self.cli(*argv), (0, f"portunus-server {__version__}\n", ""))

    def test_serve_comes_first(self) -> None:
        """serve after a portunus-server option is a usage error saying it must come first."""
        code, out, err = self.cli("--http-endpoint", "127.0.0.1:1", "serve")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("error: usage: serve takes twistd's options and must come first", err)


class ClientCommandTests(CliTestCase):
    def test_enroll_client(self) -> None:
        """enroll-client prints the client, the expiry and the command for the edge."""
        code, out, _ = self.cli("enroll-client", "edge-09", "--address", "203.0.113.7")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("client_id="))
        self.assertEqual(lines[1], "client_name=edge-09")
        self.assertEqual(lines[2], "expires_at=2023-11-14T22:23:20Z")
        self.assertRegex(lines[3], r"^portunus-client enroll 'portunus://203\.0\.113\.7:7443/")
        self.assertEqual(self.plane.calls[-1], ("enroll_client", ("edge-09", "203.0.113.7", 600)))

    def test_enroll_client_bad_ttl(self) -> None:
        self.assertFails(("enroll-client", "e", "--ttl-secs", "0"), 3, "invalid_enrollment_ttl")

    def test_list_clients(self) -> None:
        code, out, _ = self.cli("list-clients")
        self.assertEqual(code, 0)
        header, row = out.splitlines()
        self.assertEqual(
            header.split(), ["CLIENT_ID", "NAME", "STATE", "REMOTE_ADDR", "CONNECTED_AT"]
        )
        self.assertEqual(row.split(), [self.edge.client_id, "edge-01", "connected", "-", "-"])

    def test_list_clients_json(self) -> None:
        _, out, _ = self.cli("list-clients", "--format", "json")
        self.assertEqual([c["client_name"] for c in json.loads(out)], ["edge-01"])

    def test_revoke_by_name(self) -> None:
        """revoke takes a name (or id) and the client is revoked at once."""
        code, out, _ = self.cli("revoke", "edge-01")
        self.assertEqual(code, 0)
        self.assertIn(f"client_id={self.edge.client_id}", out)
        self.assertEqual(self.plane.clients[self.edge.client_id].state, "revoked")

    def test_revoke_unknown(self) -> None:
        self.assertFails(("revoke", "ghost"), 8, "client_not_found")

    def test_revoke_ambiguous(self) -> None:
        self.plane.add_client("edge-01")
        self.assertFails(("revoke", "edge-01"), 3, "client_name_ambiguous")

    def test_rename(self) -> None:
        code, out, _ = self.cli(
            "rename-client", "--client-id", self.edge.client_id, "--name", "edge-one"
        )
        self.assertEqual(code, 0)
        self.assertEqual(
            out.splitlines(), [f"client_id={self.edge.client_id}", "client_name=edge-one"]
        )

    def test_rename_bad_name(self) -> None:
        self.assertFails(
            ("rename-client", "--client-id", self.edge.client_id, "--name", " x"),
            3,
            "invalid_name",
        )

    def test_delete_client(self) -> None:
        """delete-client refuses a live client (exit 5) and deletes a revoked one."""
        self.assertFails(("delete-client", "edge-01"), 5, "client_not_revoked")
        self.cli("revoke", "edge-01")
        code, out, _ = self.cli("delete-client", self.edge.client_id)
        self.assertEqual(code, 0)
        self.assertIn("deleted", out)
        self.assertEqual(self.plane.clients, {})


class PushRuleTests(CliTestCase):
    def test_positional_target(self) -> None:
        """push-rule prints the bare rule id and pushes what was asked."""
        code, out, err = self.cli("push-rule", "edge-01", "8080", "10.0.0.5:80")
        self.assertEqual((code, out, err), (0, "1\n", ""))
        rule = self.pushed()
        self.assertEqual((rule.listen, rule.targets[0].host), (PortRange(8080, 8080), "10.0.0.5"))
        self.assertEqual(self.plane.calls[-1][1][2], 2.0)

    def test_range_and_ipv6(self) -> None:
        code, _, err = self.cli(
            "push-rule", "edge-01", "9000-9009", "[2001:db8::1]:7000-7009", "--protocol", "udp"
        )
        self.assertEqual(code, 0, err)
        rule = self.pushed()
        self.assertEqual(rule.targets[0].ports, PortRange(7000, 7009))
        self.assertEqual(rule.targets[0].host, "2001:db8::1")

    def test_repeated_targets(self) -> None:
        """--target keeps its order as priority unless @priority says otherwise."""
        code, _, err = self.cli(
            "push-rule", "edge-01", "443",
            "--target", "a.example.net:443",
            "--target", "b.example.net:443@7",
            "--target", "c.example.net:443",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertEqual([t.priority for t in self.pushed().targets], [0, 7, 2])

    def test_targets_json_and_options(self) -> None:
        code, _, err = self.cli(
            "push-rule", "edge-01", "443",
            "--targets-json", '[{"host": "10.0.0.9", "port": 443, "proxy_protocol": "v2"}]',
            "--sni", " App.Example.COM ",
            "--prefer-ipv6",
            "--health-check-interval-secs", "5",
            "--bandwidth-in-bps", "1000",
            "--concurrent-connections", "10",
            "--ack-timeout", "0.5",
            "--name", "web",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        rule = self.pushed()
        self.assertEqual(rule.targets[0].proxy_protocol, ProxyProtocolVersion.V2)
        self.assertEqual(rule.sni_pattern, "app.example.com")
        self.assertTrue(rule.prefer_ipv6)
        self.assertEqual(rule.health_check_interval_secs, 5)
        self.assertEqual(
            rule.rate_limit, RateLimit(bandwidth_in_bps=1000, concurrent_connections=10)
        )
        self.assertEqual(rule.name, "web")
        self.assertEqual(self.plane.calls[-1][1][2], 0.5)

    def test_sni_prechecks(self) -> None:
        """--sni on UDP or a range is exit 2 before any request."""
        self.http = _Refusing()
        for extra in (("8080", "h:80", "--protocol", "udp"), ("80-81", "h:80-81")):
            self.assertFails(
                ("push-rule", "edge-01", *extra, "--sni", "a.example.com"),
                2,
                "validation.sni_on_unsupported_rule",
            )
        self.assertEqual(self.http.urls, [])

    def test_shape_prechecks(self) -> None:
        """Neither or several target shapes is exit 3 before any request."""
        self.http = _Refusing()
        self.assertFails(("push-rule", "edge-01", "80"), 3, "rule_shape_missing")
        self.assertFails(
            ("push-rule", "edge-01", "80", "h:80", "--target", "h:81"), 3, "rule_shape_conflict"
        )
        self.assertFails(
            ("push-rule", "edge-01", "80", "--target", "h:81", "--targets-json", "[]"),
            3,
            "rule_shape_conflict",
        )
        self.assertFails(
            ("push-rule", "edge-01", "80", "h:80", "--health-check-interval-secs", "0"),
            3,
            "health_check_interval_out_of_range",
        )
        self.assertFails(("push-rule", "edge-01", "80", "no-port"), 3, "invalid_target")
        self.assertEqual(self.http.urls, [])

    def test_server_side_validation(self) -> None:
        """The API's field checks come back as exit 3 with the field named."""
        err = self.assertFails(("push-rule", "edge-01", "90-80", "h:80"), 3, "range_inverted")
        self.assertIn("listen", err)
        self.assertFails(("push-rule", "edge-01", "80", "h:80-81"), 3, "mismatched_range")
        self.assertFails(("push-rule", "ghost", "80", "h:80"), 8, "client_not_found")

    def test_plane_refusals(self) -> None:
        """Each refusal of the plane exits with its Portunus exit code."""
        for code, exit_code in (
            ("client_not_connected", 4),
            ("port_in_use", 5),
            ("conflict.sni_route_duplicate", 5),
            ("activation_failed", 6),
            ("ack_timeout", 7),
        ):
            self.plane.fail_next("push_rule", PortunusError(code, "no"))
            self.assertFails(("push-rule", "edge-01", "80", "h:80"), exit_code, code)

    def test_internal_error(self) -> None:
        self.plane.fail_next("push_rule", RuntimeError("boom"))
        err = self.assertFails(("push-rule", "edge-01", "80", "h:80"), 1, "internal")
        self.assertNotIn("boom", err)
        self.flushLoggedErrors(RuntimeError)


class RuleCommandTests(CliTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.cli("push-rule", "edge-01", "8080", "10.0.0.5:80", "--bandwidth-in-bps", "500")
        self.other = self.plane.add_client("edge-02")
        self.cli("push-rule", "edge-02", "53", "--protocol", "udp", "--target", "a:53",
                 "--target", "b:53")  # fmt: skip

    def test_list_rules(self) -> None:
        code, out, _ = self.cli("list-rules")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(
            lines[0].split(),
            ["RULE_ID", "NAME", "CLIENT", "PROTO", "LISTEN", "TARGETS", "STATE", "CAPS"],
        )
        self.assertEqual(
            lines[1].split(), ["1", "rule", "edge-01", "tcp", "8080", "10.0.0.5:80", "active",
                               "in=500"]
        )  # fmt: skip
        self.assertEqual(lines[2].split()[5], "a:53,b:53@1")

    def test_list_rules_of_a_client(self) -> None:
        _, out, _ = self.cli("list-rules", "--client", "edge-02", "--format", "json")
        self.assertEqual([v["rule"]["id"] for v in json.loads(out)], [2])

    def test_remove_rule(self) -> None:
        """remove-rule prints nothing; a second time the rule is not found (exit 8)."""
        self.assertEqual(self.cli("remove-rule", "1"), (0, "", ""))
        self.assertFails(("remove-rule", "1"), 8, "rule_not_found")
        self.assertFails(("remove-rule", "web"), 8, "rule_not_found")

    def test_rule_stats(self) -> None:
        self.plane.stats[1] = {
            "bytes_in": 10,
            "bytes_out": 20,
            "active_connections": 1,
            "per_port": [{"port": 8080, "bytes_in": 10, "bytes_out": 20}],
            "per_target": [],
            "updated_at": 1_700_000_000,
        }
        code, out, _ = self.cli("rule-stats", "1")
        self.assertEqual(
            out,
            "rule_id=1 client=edge-01 protocol=tcp bytes_in=10 bytes_out=20 active=1 "
            "dns_failures=0 target_failovers_total=0 updated_at=2023-11-14T22:13:20Z\n",
        )
        code, out, _ = self.cli("rule-stats", "1", "--per-port")
        self.assertEqual(out.splitlines()[1], "port=8080 bytes_in=10 bytes_out=20")
        code, out, _ = self.cli("rule-stats", "1", "--per-target")
        self.assertEqual(
            (code, out.splitlines()[1]), (0, "(single-target rule, no per-target state)")
        )
        code, out, _ = self.cli("rule-stats", "1", "--format", "json")
        self.assertEqual(json.loads(out)["bytes_out"], 20)
        self.assertFails(("rule-stats", "9"), 8, "rule_not_found")

    def test_rule_stats_per_target(self) -> None:
        self.plane.stats[2] = {
            "per_target": [{"target": "a:53", "healthy": True}, {"target": "b:53",
                                                                 "healthy": False}],
        }  # fmt: skip
        _, out, _ = self.cli("rule-stats", "2", "--per-target")
        self.assertEqual(
            out.splitlines()[1:], ["target=a:53 healthy=True", "target=b:53 healthy=False"]
        )


class MainTests(SynchronousTestCase):
    def test_serve_is_twistd_in_the_foreground(self) -> None:
        """portunus-server serve ARGS is twistd --nodaemon --pidfile= portunus-server ARGS."""
        from twisted.scripts import twistd

        seen: list[list[str]] = []
        self.patch(cli.sys, "argv", ["portunus-server"])
        self.patch(twistd, "run", lambda: seen.append(list(cli.sys.argv)))
        cli.main(["serve", "--data-dir", "d"])
        self.assertEqual(
            seen, [["twistd", "--nodaemon", "--pidfile=", "portunus-server", "--data-dir", "d"]]
        )

    def test_main_runs_under_react(self) -> None:
        """main() hands the work to task.react; a failing command exits non-zero."""
        from twisted.internet import task

        outcomes: list[Any] = []

        def fake_react(start: Any, argv: Any = ()) -> None:
            d = start(MemoryReactorClock())
            d.addBoth(outcomes.append)

        self.patch(task, "react", fake_react)
        self.patch(cli.sys, "stdout", StringIO())
        self.patch(cli.sys, "stderr", StringIO())
        cli.main(["gen-token"])
        cli.main(["no-such-command"])
        self.assertIsNone(outcomes[0])
        self.assertIsInstance(outcomes[1].value, SystemExit)
        self.assertEqual(outcomes[1].value.code, 2)
