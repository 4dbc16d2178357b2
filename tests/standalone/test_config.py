"""
Tests for L{portunus.standalone.config}.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane import SUPPORTED_PROTOCOLS
from portunus.errors import PortunusError
from portunus.model import (
    DEFAULT_LISTEN_ADDRESSES,
    PortRange,
    Protocol,
    ProxyProtocolVersion,
    Rule,
    Target,
    rule_id_for_name,
)
from portunus.standalone import config
from portunus.standalone.config import (
    ConfigError,
    ConfigIssue,
    StandaloneConfig,
    load_config,
    parse_config,
)

SOURCE = "/etc/portunus/portunus.toml"
BOTH = frozenset({Protocol.TCP, Protocol.UDP})
EXAMPLES = Path(__file__).resolve().parents[2] / "contrib" / "examples"

MINIMAL = """
[[rule]]
name = "web"
listen_port = 8080
target = "10.0.0.5:80"
"""


def rule_text(name: str | None = "web", **keys: str) -> str:
    """
    A [[rule]] table.  C{keys} are raw TOML values replacing the defaults;
    C{""} drops a key, and so does C{name=None}.
    """
    values = {"listen_port": "8080", "target": '"10.0.0.5:80"'}
    if name is not None:
        values["name"] = f'"{name}"'
    values.update(keys)
    body = "".join(f"{k} = {v}\n" for k, v in values.items() if v != "")
    return f"[[rule]]\n{body}"


def tcp(name: str, listen: PortRange, *targets: Target, **kwargs: object) -> Rule:
    return Rule(name=name, protocol=Protocol.TCP, listen=listen, targets=targets, **kwargs)  # type: ignore[arg-type]


class ParseMixin:
    """Helpers to parse and to pull the issues out of a L{ConfigError}."""

    def parse(
        self, text: str, supported: frozenset[Protocol] = frozenset({Protocol.TCP})
    ) -> StandaloneConfig:
        return parse_config(text, SOURCE, supported)

    def issues(
        self, text: str, supported: frozenset[Protocol] = frozenset({Protocol.TCP})
    ) -> tuple[ConfigIssue, ...]:
        test: SynchronousTestCase = self  # type: ignore[assignment]
        error = test.assertRaises(ConfigError, parse_config, text, SOURCE, supported)
        return error.issues

    def one_issue(
        self,
        text: str,
        rule: str | None,
        field: str | None,
        phrase: str,
        supported: frozenset[Protocol] = frozenset({Protocol.TCP}),
    ) -> ConfigIssue:
        """Assert C{text} has exactly one issue, located and worded as given."""
        test: SynchronousTestCase = self  # type: ignore[assignment]
        issues = self.issues(text, supported)
        test.assertEqual(len(issues), 1, "\n".join(map(str, issues)))
        (issue,) = issues
        test.assertEqual(issue.source, SOURCE)
        test.assertEqual(issue.rule, rule)
        test.assertEqual(issue.field, field)
        test.assertIn(phrase, issue.message)
        return issue


class ValidConfigTests(ParseMixin, SynchronousTestCase):
    """Configs that parse, and the exact values they produce."""

    def test_minimal(self) -> None:
        """A single rule with no other tables yields one TCP rule and all defaults."""
        cfg = self.parse(MINIMAL)
        self.assertEqual(
            cfg,
            StandaloneConfig(
                source=SOURCE,
                label=None,
                log_level="warn",
                log_format="json",
                shutdown_drain_secs=30.0,
                stats_enabled=True,
                stats_log_interval_secs=60,
                stats_socket_path="/run/portunus/standalone.sock",
                stats_refresh_ms=1000,
                rules=(tcp("web", PortRange(8080, 8080), Target("10.0.0.5", PortRange(80, 80))),),
            ),
        )
        rule = cfg.rules[0]
        self.assertEqual(rule.listen_addresses, DEFAULT_LISTEN_ADDRESSES)
        self.assertEqual(rule.id, rule_id_for_name("web"))
        self.assertIsInstance(cfg.shutdown_drain_secs, float)

    def test_full(self) -> None:
        """Every table and key set explicitly is carried into the config and rules."""
        cfg = self.parse(
            """
            [global]
            label = "edge-1"
            log_level = "debug"
            log_format = "pretty"
            shutdown_drain_secs = 2.5
            listen_addresses = ["127.0.0.1"]

            [defaults]
            protocol = "tcp"
            udp_max_flows = 10
            udp_flow_idle_secs = 30
            prefer_ipv6 = true

            [stats]
            enabled = false
            log_interval_secs = 5
            socket_path = "/tmp/p.sock"
            refresh_ms = 250

            [[rule]]
            name = "db"
            listen_port = 5432
            target = "db.internal:5432"
            prefer_ipv6 = false
            udp_max_flows = 20
            udp_flow_idle_secs = 300
            listen_addresses = ["::1", "10.1.2.3"]
            """
        )
        self.assertEqual(
            cfg,
            StandaloneConfig(
                source=SOURCE,
                label="edge-1",
                log_level="debug",
                log_format="pretty",
                shutdown_drain_secs=2.5,
                stats_enabled=False,
                stats_log_interval_secs=5,
                stats_socket_path="/tmp/p.sock",
                stats_refresh_ms=250,
                rules=(
                    tcp(
                        "db",
                        PortRange(5432, 5432),
                        Target("db.internal", PortRange(5432, 5432)),
                        listen_addresses=("::1", "10.1.2.3"),
                        prefer_ipv6=False,
                        udp_max_flows=20,
                        udp_flow_idle_secs=300,
                    ),
                ),
            ),
        )

    def test_range(self) -> None:
        """A listen range maps onto a target range of the same size, IPv6 unbracketed."""
        cfg = self.parse(
            rule_text(listen_port="", listen_ports='"10000-10009"', target='"[::1]:20000-20009"')
        )
        (rule,) = cfg.rules
        self.assertEqual(
            rule, tcp("web", PortRange(10000, 10009), Target("::1", PortRange(20000, 20009)))
        )
        self.assertEqual(rule.target_port(rule.targets[0], 10003), 20003)

    def test_listen_ports_single_forms(self) -> None:
        """listen_ports accepts "A" and a bare integer as a one-port range."""
        for value in ('"8080"', "8080", '"8080-8080"'):
            (rule,) = self.parse(rule_text(listen_port="", listen_ports=value)).rules
            self.assertEqual(rule.listen, PortRange(8080, 8080))

    def test_multi_target(self) -> None:
        """targets builds Targets in file order with priority and PROXY version."""
        cfg = self.parse(
            rule_text(
                target="",
                targets='[{ host = "a.example", port = 80, priority = 5, proxy_protocol = "v2" },'
                ' { host = "2001:db8::1", port = 8080 },'
                ' { host = "[::1]", port = 81, proxy_protocol = "v1" }]',
            )
        )
        (rule,) = cfg.rules
        self.assertEqual(
            rule,
            tcp(
                "web",
                PortRange(8080, 8080),
                Target("a.example", PortRange(80, 80), 5, ProxyProtocolVersion.V2),
                Target("2001:db8::1", PortRange(8080, 8080), 0, None),
                Target("::1", PortRange(81, 81), 0, ProxyProtocolVersion.V1),
            ),
        )

    def test_inheritance(self) -> None:
        """Rule keys override [defaults], which override [global] and built-ins."""
        cfg = self.parse(
            """
            [global]
            listen_addresses = ["10.0.0.1"]

            [defaults]
            protocol = "udp"
            udp_max_flows = 99
            udp_flow_idle_secs = 45
            prefer_ipv6 = true
            listen_addresses = ["10.0.0.2"]

            [[rule]]
            name = "inherits"
            listen_port = 1000
            target = "h:1"

            [[rule]]
            name = "overrides"
            protocol = "tcp"
            listen_port = 1001
            target = "h:1"
            udp_max_flows = 7
            udp_flow_idle_secs = 31
            prefer_ipv6 = false
            listen_addresses = ["10.0.0.3"]
            """,
            BOTH,
        )
        inherits, overrides = cfg.rules
        self.assertEqual(
            (
                inherits.protocol,
                inherits.udp_max_flows,
                inherits.udp_flow_idle_secs,
                inherits.prefer_ipv6,
                inherits.listen_addresses,
            ),
            (Protocol.UDP, 99, 45, True, ("10.0.0.2",)),
        )
        self.assertEqual(
            (
                overrides.protocol,
                overrides.udp_max_flows,
                overrides.udp_flow_idle_secs,
                overrides.prefer_ipv6,
                overrides.listen_addresses,
            ),
            (Protocol.TCP, 7, 31, False, ("10.0.0.3",)),
        )

    def test_global_listen_addresses_inherited(self) -> None:
        """Without [defaults] listen_addresses a rule uses [global] listen_addresses."""
        cfg = self.parse('[global]\nlisten_addresses = ["::1"]\n' + MINIMAL)
        self.assertEqual(cfg.rules[0].listen_addresses, ("::1",))

    def test_listen_addresses_normalised(self) -> None:
        """Listen addresses are stored in canonical form so equal ones compare equal."""
        cfg = self.parse(rule_text(listen_addresses='["0:0::1", "2001:DB8::0001"]'))
        self.assertEqual(cfg.rules[0].listen_addresses, ("::1", "2001:db8::1"))

    def test_warning_alias(self) -> None:
        """log_level = "warning" is accepted and stored as "warn"."""
        cfg = self.parse('[global]\nlog_level = "warning"\n' + MINIMAL)
        self.assertEqual(cfg.log_level, "warn")

    def test_udp_rule_when_supported(self) -> None:
        """A UDP rule parses when the build supports UDP."""
        (rule,) = self.parse(rule_text(protocol='"udp"'), BOTH).rules
        self.assertEqual(rule.protocol, Protocol.UDP)

    def test_same_port_different_protocols(self) -> None:
        """A TCP and a UDP rule may share a port: they are different sockets."""
        cfg = self.parse(rule_text("a") + rule_text("b", protocol='"udp"'), BOTH)
        self.assertEqual(len(cfg.rules), 2)

    def test_same_port_disjoint_addresses(self) -> None:
        """Two rules may share a port on addresses that cannot collide."""
        cfg = self.parse(
            rule_text("a", listen_addresses='["127.0.0.1"]')
            + rule_text("b", listen_addresses='["127.0.0.2", "::1"]')
        )
        self.assertEqual(len(cfg.rules), 2)

    def test_examples_parse(self) -> None:
        """The shipped contrib/examples configs load and contain the rules the docs promise."""
        minimal = load_config(str(EXAMPLES / "minimal.toml"))
        self.assertEqual([r.name for r in minimal.rules], ["web"])
        full = load_config(str(EXAMPLES / "portunus.toml"), SUPPORTED_PROTOCOLS)
        self.assertEqual([r.name for r in full.rules], ["web", "game-range", "api", "dns-relay"])
        self.assertEqual(full.rules[3].protocol, Protocol.UDP)
        self.assertEqual(full.label, "edge-example")
        api = full.rules[2]
        self.assertEqual(api.targets[0].proxy_protocol, ProxyProtocolVersion.V2)
        self.assertEqual(api.listen_addresses, ("127.0.0.1", "::1"))

    def test_load_config(self) -> None:
        """load_config reads the file and uses its path as the source."""
        path = self.mktemp()
        Path(path).write_text(MINIMAL, encoding="utf-8")
        self.assertEqual(load_config(path).source, path)


class IssueRenderingTests(ParseMixin, SynchronousTestCase):
    """How issues and errors present themselves."""

    def test_issue_str_with_rule(self) -> None:
        """An issue renders as 'source: rule 'name': field-without-rule-prefix: message'."""
        issue = ConfigIssue(SOURCE, "web", "rule.listen_ports", "listen has 10 ports")
        self.assertEqual(str(issue), f"{SOURCE}: rule 'web': listen_ports: listen has 10 ports")

    def test_issue_str_numbered_rule(self) -> None:
        """A rule known only by its position renders as 'rule #N' without quotes."""
        issue = ConfigIssue(SOURCE, "rule #2", "rule.name", "is missing")
        self.assertEqual(str(issue), f"{SOURCE}: rule #2: name: is missing")

    def test_issue_str_without_rule(self) -> None:
        """A non-rule issue renders as 'source: field: message'."""
        issue = ConfigIssue(SOURCE, None, "global.shutdown_drain_secs", "too big")
        self.assertEqual(str(issue), f"{SOURCE}: global.shutdown_drain_secs: too big")
        self.assertEqual(str(ConfigIssue(SOURCE, None, None, "bad")), f"{SOURCE}: bad")

    def test_error_code(self) -> None:
        """ConfigError is a PortunusError with code config_invalid and exit code 2."""
        error = self.assertRaises(ConfigError, parse_config, "", SOURCE)
        self.assertIsInstance(error, PortunusError)
        self.assertEqual(error.code, "config_invalid")
        self.assertEqual(error.error.exit_code, 2)
        body = error.to_json()["error"]
        assert isinstance(body, dict)
        self.assertEqual(body["code"], "config_invalid")
        self.assertEqual(body["issues"], [i.to_json() for i in error.issues])

    def test_error_str_lists_every_issue(self) -> None:
        """str(ConfigError) is every issue, one per line, in file order."""
        error = self.assertRaises(
            ConfigError, parse_config, '[global]\nlog_format = "xml"\nlog_level = 3\n', SOURCE
        )
        self.assertEqual(str(error), "\n".join(str(i) for i in error.issues))
        self.assertEqual(len(str(error).splitlines()), 3)

    def test_empty_error_refused(self) -> None:
        """A ConfigError without issues is a programming error."""
        self.assertRaises(ValueError, ConfigError, [])

    def test_several_errors_at_once(self) -> None:
        """Problems in different tables and rules are all reported in one pass."""
        issues = self.issues(
            """
            [global]
            log_level = "loud"

            [stats]
            log_interval_secs = 0

            [[rule]]
            name = "a"
            listen_ports = "8000-8009"
            target = "h:9000-9004"

            [[rule]]
            listen_port = 8080
            target = "h:80"

            [[rule]]
            name = "a"
            listen_port = 9090
            target = "h"
            """
        )
        located = [(i.rule, i.field) for i in issues]
        self.assertEqual(
            located,
            [
                (None, "global.log_level"),
                (None, "stats.log_interval_secs"),
                ("a", "rule.listen_ports"),
                ("rule #2", "rule.name"),
                ("a", "rule.name"),
                ("a", "rule.target"),
            ],
        )


class FileErrorTests(ParseMixin, SynchronousTestCase):
    """Problems with the file as a whole."""

    def test_syntax_error(self) -> None:
        """A TOML syntax error is one issue carrying tomllib's line and column."""
        issue = self.one_issue("[[rule]]\nname = \n", None, None, "TOML syntax error")
        self.assertIn("line 2", issue.message)
        self.assertIn("column", issue.message)

    def test_deep_nesting(self) -> None:
        """Arrays nested beyond the recursion limit are a ConfigError, not a crash."""
        self.one_issue("a = " + "[" * 5000, None, None, "TOML syntax error")

    def test_unreadable_value(self) -> None:
        """An integer too long for int() is a ConfigError, not a bare ValueError."""
        self.one_issue("a = 1" + "0" * 5000 + "\n", None, None, "TOML value cannot be read")

    def test_missing_file(self) -> None:
        """A missing file is a ConfigError naming the path."""
        path = os.path.join(tempfile.gettempdir(), "does-not-exist", "portunus.toml")
        error = self.assertRaises(ConfigError, load_config, path)
        (issue,) = error.issues
        self.assertEqual((issue.source, issue.rule, issue.field), (path, None, None))
        self.assertIn("cannot read the config file", issue.message)

    def test_directory(self) -> None:
        """A directory given as the config is a ConfigError."""
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("cannot read", error.issues[0].message)

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is a ConfigError saying so."""
        path = self.mktemp()
        Path(path).write_bytes(b'[global]\nlabel = "\xff"\n')
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("not valid UTF-8", error.issues[0].message)

    def test_no_rules(self) -> None:
        """A config without [[rule]] tables says to add one."""
        issue = self.one_issue("[global]\n", None, "rule", "no [[rule]] tables")
        self.assertIn("add at least one [[rule]]", issue.message)

    def test_empty_rule_array(self) -> None:
        """rule = [] is the same as no rules."""
        self.one_issue("rule = []\n", None, "rule", "no [[rule]] tables")

    def test_single_bracket_rule(self) -> None:
        """[rule] instead of [[rule]] is explained."""
        self.one_issue(
            '[rule]\nname = "a"\nlisten_port = 1\ntarget = "h:1"\n',
            None,
            "rule",
            "[[rule]] (double brackets)",
        )

    def test_rule_not_a_table(self) -> None:
        """A non-table element in the rule array is reported by its position."""
        self.one_issue("rule = [1]\n", "rule #1", None, "must be a table")

    def test_unknown_top_level_table(self) -> None:
        """An unknown top-level table is named, with a suggestion and the allowed tables."""
        issue = self.one_issue("[rules]\n" + MINIMAL, None, "rules", "unknown top-level")
        self.assertIn("did you mean 'rule'?", issue.message)
        self.assertIn("[global], [defaults], [stats], [resolver], [[rule]]", issue.message)

    def test_table_not_a_table(self) -> None:
        """global = 1 is reported as needing to be a table."""
        self.one_issue("global = 1\n" + MINIMAL, None, "global", "must be a table")


class GlobalTableTests(ParseMixin, SynchronousTestCase):
    """[global], [defaults] and [stats] validation."""

    def test_unknown_global_key(self) -> None:
        """An unknown [global] key is named with the allowed keys listed."""
        issue = self.one_issue(
            "[global]\nlog_levle = 'info'\n" + MINIMAL, None, "global.log_levle", "unknown key"
        )
        self.assertIn("did you mean 'log_level'?", issue.message)
        self.assertIn("label, log_level, log_format, shutdown_drain_secs", issue.message)

    def test_unknown_key_escaped(self) -> None:
        """A quoted key holding a newline is escaped so each issue stays one line."""
        issue = self.one_issue(
            '[global]\n"a\\nb" = 1\n' + MINIMAL, None, "global.a\\nb", "unknown key 'a\\nb'"
        )
        self.assertEqual(len(str(issue).splitlines()), 1)

    def test_unknown_defaults_key(self) -> None:
        """An unknown [defaults] key is an issue."""
        self.one_issue(
            "[defaults]\ntimeout = 3\n" + MINIMAL, None, "defaults.timeout", "unknown key"
        )

    def test_unknown_stats_key(self) -> None:
        """An unknown [stats] key is an issue naming the keys there are."""
        issue = self.one_issue(
            "[stats]\nsocket = '/x'\n" + MINIMAL, None, "stats.socket", "unknown key"
        )
        self.assertIn("enabled, log_interval_secs, socket_path, refresh_ms", issue.message)

    def test_label_type(self) -> None:
        """label must be a string."""
        self.one_issue("[global]\nlabel = 1\n" + MINIMAL, None, "global.label", "must be a string")

    def test_log_level(self) -> None:
        """An unknown log_level lists the accepted levels."""
        self.one_issue(
            "[global]\nlog_level = 'trace'\n" + MINIMAL,
            None,
            "global.log_level",
            '"debug", "info", "warn", "error"',
        )

    def test_log_format(self) -> None:
        """log_format must be json or pretty."""
        self.one_issue(
            "[global]\nlog_format = 'text'\n" + MINIMAL,
            None,
            "global.log_format",
            '"json", "pretty"',
        )

    def test_shutdown_drain_range(self) -> None:
        """shutdown_drain_secs outside 0..3600 (or NaN) is rejected."""
        for value in ("-1", "3600.5", "nan", "inf", "1" + "0" * 400):
            self.one_issue(
                f"[global]\nshutdown_drain_secs = {value}\n" + MINIMAL,
                None,
                "global.shutdown_drain_secs",
                "out of range",
            )

    def test_shutdown_drain_type(self) -> None:
        """shutdown_drain_secs must be a number, and a boolean is not one."""
        for value in ("true", "'30'"):
            self.one_issue(
                f"[global]\nshutdown_drain_secs = {value}\n" + MINIMAL,
                None,
                "global.shutdown_drain_secs",
                "must be a number of seconds",
            )

    def test_shutdown_drain_bounds_accepted(self) -> None:
        """0 and 3600 are both valid drain times."""
        for value in ("0", "3600"):
            cfg = self.parse(f"[global]\nshutdown_drain_secs = {value}\n" + MINIMAL)
            self.assertEqual(cfg.shutdown_drain_secs, float(value))

    def test_listen_addresses_invalid(self) -> None:
        """A listen address that is not an IP literal is rejected by index."""
        self.one_issue(
            "[global]\nlisten_addresses = ['0.0.0.0', 'localhost']\n" + MINIMAL,
            None,
            "global.listen_addresses[1]",
            "is not an IP address",
        )

    def test_listen_addresses_bracketed(self) -> None:
        """A bracketed IPv6 listen address is rejected: brackets are for host:port."""
        self.one_issue(
            "[defaults]\nlisten_addresses = ['[::1]']\n" + MINIMAL,
            None,
            "defaults.listen_addresses[0]",
            "without brackets",
        )

    def test_listen_addresses_empty(self) -> None:
        """An empty listen_addresses list is rejected."""
        self.one_issue(
            "[global]\nlisten_addresses = []\n" + MINIMAL,
            None,
            "global.listen_addresses",
            "is empty",
        )

    def test_listen_addresses_type(self) -> None:
        """listen_addresses must be an array."""
        self.one_issue(
            "[global]\nlisten_addresses = '0.0.0.0'\n" + MINIMAL,
            None,
            "global.listen_addresses",
            "must be an array",
        )

    def test_listen_addresses_duplicate(self) -> None:
        """A listen address listed twice (even spelled differently) is rejected."""
        self.one_issue(
            "[global]\nlisten_addresses = ['::1', '0::1']\n" + MINIMAL,
            None,
            "global.listen_addresses[1]",
            "listed twice",
        )

    def test_listen_addresses_wildcard_and_specific(self) -> None:
        """0.0.0.0 plus a specific IPv4 address would collide when bound; rejected."""
        self.one_issue(
            "[global]\nlisten_addresses = ['127.0.0.1', '::', '0.0.0.0']\n" + MINIMAL,
            None,
            "global.listen_addresses[2]",
            "'0.0.0.0' already covers every IPv4 address",
        )

    def test_defaults_protocol(self) -> None:
        """[defaults] protocol must be tcp or udp."""
        self.one_issue(
            "[defaults]\nprotocol = 'sctp'\n" + MINIMAL,
            None,
            "defaults.protocol",
            '"tcp", "udp"',
        )

    def test_defaults_udp_max_flows_range(self) -> None:
        """udp_max_flows outside 1..65535 is rejected."""
        for value in ("0", "65536"):
            self.one_issue(
                f"[defaults]\nudp_max_flows = {value}\n" + MINIMAL,
                None,
                "defaults.udp_max_flows",
                "from 1 to 65535",
            )

    def test_defaults_udp_flow_idle_range(self) -> None:
        """udp_flow_idle_secs outside 30..300 is rejected."""
        for value in ("29", "301"):
            self.one_issue(
                f"[defaults]\nudp_flow_idle_secs = {value}\n" + MINIMAL,
                None,
                "defaults.udp_flow_idle_secs",
                "from 30 to 300",
            )

    def test_bool_is_not_an_int(self) -> None:
        """A TOML boolean where an integer is expected is rejected."""
        self.one_issue(
            "[defaults]\nudp_max_flows = true\n" + MINIMAL,
            None,
            "defaults.udp_max_flows",
            "must be an integer, not a boolean",
        )

    def test_float_is_not_an_int(self) -> None:
        """A float where an integer is expected is rejected."""
        self.one_issue(
            "[stats]\nlog_interval_secs = 1.5\n" + MINIMAL,
            None,
            "stats.log_interval_secs",
            "must be an integer, not a float",
        )

    def test_defaults_prefer_ipv6_type(self) -> None:
        """prefer_ipv6 must be a real boolean, not a string."""
        self.one_issue(
            "[defaults]\nprefer_ipv6 = 'yes'\n" + MINIMAL,
            None,
            "defaults.prefer_ipv6",
            "must be a boolean, not a string",
        )

    def test_stats_enabled_type(self) -> None:
        """[stats] enabled must be a boolean; 1 is not accepted."""
        self.one_issue(
            "[stats]\nenabled = 1\n" + MINIMAL,
            None,
            "stats.enabled",
            "must be a boolean, not an integer",
        )

    def test_stats_interval_range(self) -> None:
        """log_interval_secs outside 1..3600 is rejected."""
        for value in ("0", "3601"):
            self.one_issue(
                f"[stats]\nlog_interval_secs = {value}\n" + MINIMAL,
                None,
                "stats.log_interval_secs",
                "from 1 to 3600",
            )

    def test_stats_refresh_ms_range(self) -> None:
        """refresh_ms outside Portunus' 250..5000 is rejected; the bounds are accepted."""
        for value in ("249", "5001", "0"):
            self.one_issue(
                f"[stats]\nrefresh_ms = {value}\n" + MINIMAL,
                None,
                "stats.refresh_ms",
                "from 250 to 5000",
            )
        for value in (250, 5000):
            cfg = self.parse(f"[stats]\nrefresh_ms = {value}\n" + MINIMAL)
            self.assertEqual(cfg.stats_refresh_ms, value)

    def test_stats_socket_path_checked(self) -> None:
        """socket_path must be printable, non-empty text that fits a Unix socket address."""
        for raw, phrase in (
            ("1", "must be a string, not an integer"),
            ('""', "is empty"),
            ('"/run/a\\nb"', "control characters"),
            (f'"/{"x" * 107}"', "108 bytes long; a Unix socket path holds at most 107"),
        ):
            issue = self.one_issue(
                f"[stats]\nsocket_path = {raw}\n" + MINIMAL, None, "stats.socket_path", phrase
            )
            self.assertIn('socket_path = "/run/portunus/standalone.sock"', issue.message)
        cfg = self.parse(f'[stats]\nsocket_path = "/{"x" * 106}"\n' + MINIMAL)
        self.assertEqual(cfg.stats_socket_path, "/" + "x" * 106)


class RuleTests(ParseMixin, SynchronousTestCase):
    """[[rule]] validation."""

    def test_unknown_rule_key(self) -> None:
        """An unknown rule key is named, with a suggestion and the allowed keys."""
        issue = self.one_issue(rule_text(listen_prot="1"), "web", "rule.listen_prot", "unknown")
        self.assertIn("did you mean 'listen_port'?", issue.message)
        self.assertIn("listen_ports, target, targets", issue.message)

    def test_name_missing(self) -> None:
        """A rule without a name is identified by its 1-based position."""
        self.one_issue(
            MINIMAL + rule_text(name=None, listen_port="9"), "rule #2", "rule.name", "is missing"
        )

    def test_name_type(self) -> None:
        """A non-string name is rejected."""
        self.one_issue(
            '[[rule]]\nname = 5\nlisten_port = 1\ntarget = "h:1"\n',
            "rule #1",
            "rule.name",
            "must be a string",
        )

    def test_name_empty(self) -> None:
        """An empty or blank name is rejected."""
        self.one_issue(rule_text(name="  "), "rule #1", "rule.name", "is empty")

    def test_name_too_long(self) -> None:
        """A name longer than 128 characters is rejected."""
        self.parse(rule_text(name="x" * 128))
        self.one_issue(rule_text(name="x" * 129), "rule #1", "rule.name", "at most 128")

    def test_name_control_characters(self) -> None:
        """A name with control characters is rejected."""
        self.one_issue(
            rule_text(name="a\\tb"), "rule #1", "rule.name", "control or format characters"
        )

    def test_name_format_characters(self) -> None:
        """A name with a bidirectional override or a zero-width character is rejected."""
        for escape in ("\\u202e", "\\u2066", "\\u200b", "\\ufeff"):
            self.one_issue(
                rule_text(name=f"web{escape}1"), "rule #1", "rule.name", "format characters"
            )

    def test_duplicate_name(self) -> None:
        """The second rule with a name gets the issue, pointing at the first."""
        self.one_issue(
            rule_text("web") + rule_text("web", listen_port="9"),
            "web",
            "rule.name",
            "already used by rule #1",
        )

    def test_rule_id_collision(self) -> None:
        """Two names that hash to the same rule id are rejected."""
        self.patch(config, "rule_id_for_name", lambda name: 42)
        self.one_issue(
            rule_text("a") + rule_text("b", listen_port="9"),
            "b",
            "rule.name",
            "same rule id (42) as rule 'a'",
        )

    def test_protocol_value(self) -> None:
        """A rule protocol other than tcp/udp is rejected."""
        self.one_issue(rule_text(protocol='"icmp"'), "web", "rule.protocol", '"tcp", "udp"')

    def test_protocol_unsupported(self) -> None:
        """A UDP rule in a TCP-only build says to use tcp."""
        issue = self.one_issue(
            rule_text(protocol='"udp"'),
            "web",
            "rule.protocol",
            "udp forwarding is not supported by this build yet",
        )
        self.assertIn('protocol = "tcp"', issue.message)

    def test_protocol_unsupported_inherited(self) -> None:
        """A rule inheriting an unsupported protocol from [defaults] is reported too."""
        self.one_issue(
            "[defaults]\nprotocol = 'udp'\n" + MINIMAL,
            "web",
            "rule.protocol",
            "inherited from [defaults]",
        )

    def test_listen_missing(self) -> None:
        """A rule with neither listen_port nor listen_ports is rejected."""
        self.one_issue(rule_text(listen_port=""), "web", "rule.listen_port", "is missing")

    def test_listen_both(self) -> None:
        """A rule with both listen_port and listen_ports is rejected."""
        self.one_issue(rule_text(listen_ports='"1-2"'), "web", "rule.listen_ports", "not both")

    def test_listen_port_type(self) -> None:
        """listen_port must be an integer; a string or boolean is rejected."""
        for value in ('"8080"', "true"):
            self.one_issue(
                rule_text(listen_port=value), "web", "rule.listen_port", "must be an integer port"
            )

    def test_listen_port_range(self) -> None:
        """listen_port 0 or above 65535 is rejected."""
        for value in ("0", "65536"):
            self.one_issue(
                rule_text(listen_port=value), "web", "rule.listen_port", "ports are 1..65535"
            )

    def test_listen_ports_syntax(self) -> None:
        """A listen_ports string that is not "A" or "A-B" is rejected."""
        for value in ('"80:90"', '"a-b"', '"-5"', '""', '"1-2-3"', '"٨٠"', '"1' + "0" * 5000 + '"'):
            self.one_issue(
                rule_text(listen_port="", listen_ports=value),
                "web",
                "rule.listen_ports",
                "is not a port or a port range",
            )

    def test_listen_ports_type(self) -> None:
        """listen_ports given as a boolean or array is rejected."""
        self.one_issue(
            rule_text(listen_port="", listen_ports="[1, 2]"),
            "web",
            "rule.listen_ports",
            "not an array",
        )

    def test_listen_ports_inverted(self) -> None:
        """A range that ends before it starts suggests the fixed order."""
        self.one_issue(
            rule_text(listen_port="", listen_ports='"90-80"', target='"h:1-11"'),
            "web",
            "rule.listen_ports",
            'ends before it starts; write the lower port first, e.g. "80-90"',
        )

    def test_listen_ports_out_of_range(self) -> None:
        """A range endpoint of 0 or above 65535 is rejected."""
        self.one_issue(
            rule_text(listen_port="", listen_ports='"65530-65540"'),
            "web",
            "rule.listen_ports",
            "65540 in '65530-65540' is out of range",
        )

    def test_range_too_large(self) -> None:
        """A range of more than 1024 ports is rejected, in listen and target alike."""
        self.parse(rule_text(listen_port="", listen_ports='"1-1024"', target='"h:2001-3024"'))
        issues = self.issues(
            rule_text(listen_port="", listen_ports='"1-1025"', target='"h:2001-3025"')
        )
        self.assertEqual(
            [(i.field, "more than the 1024" in i.message) for i in issues],
            [("rule.listen_ports", True), ("rule.target", True)],
        )

    def test_range_size_mismatch(self) -> None:
        """Listen and target ranges of different sizes are rejected with both sizes."""
        issue = self.one_issue(
            rule_text(listen_port="", listen_ports='"8000-8009"', target='"h:9000-9004"'),
            "web",
            "rule.listen_ports",
            "listen has 10 ports but target has 5",
        )
        self.assertIn("make the two ranges the same size", issue.message)
        self.assertEqual(
            str(issue),
            f"{SOURCE}: rule 'web': listen_ports: listen has 10 ports but target has 5; "
            "make the two ranges the same size",
        )

    def test_single_listen_target_range(self) -> None:
        """A single listen port with a target range is rejected."""
        self.one_issue(
            rule_text(target='"h:9000-9004"'),
            "web",
            "rule.target",
            "listen has 1 port but target has 5",
        )

    def test_listen_range_single_target(self) -> None:
        """A listen range with a single target port asks for a range of the same size."""
        self.one_issue(
            rule_text(listen_port="", listen_ports='"8000-8009"', target='"h:9000"'),
            "web",
            "rule.target",
            'give the target a range of the same size, e.g. "host:9000-9009"',
        )

    def test_overlap_same_protocol(self) -> None:
        """Two TCP rules on overlapping ports and addresses are rejected on the second."""
        self.one_issue(
            rule_text("a", listen_port="", listen_ports='"8000-8100"', target='"h:1-101"')
            + rule_text("b"),
            "b",
            "rule.listen_port",
            "port 8080 is already used by rule 'a'",
        )

    def test_overlap_wildcard_and_specific(self) -> None:
        """0.0.0.0 on one rule collides with a specific IPv4 address on another."""
        issue = self.one_issue(
            rule_text("a", listen_addresses='["0.0.0.0"]')
            + rule_text(
                "b",
                listen_port="",
                listen_ports='"8080-8081"',
                target='"h:1-2"',
                listen_addresses='["::1", "192.0.2.1"]',
            ),
            "b",
            "rule.listen_ports",
            "port 8080 is already used by rule 'a'",
        )
        self.assertIn("192.0.2.1", issue.message)

    def test_overlap_ipv6_wildcard(self) -> None:
        """'::' on one rule collides with a specific IPv6 address on another."""
        self.one_issue(
            rule_text("a", listen_addresses='["::"]')
            + rule_text("b", listen_addresses='["2001:db8::1"]'),
            "b",
            "rule.listen_port",
            "already used by rule 'a'",
        )

    def test_target_missing(self) -> None:
        """A rule with neither target nor targets is rejected."""
        self.one_issue(rule_text(target=""), "web", "rule.target", "is missing")

    def test_target_both(self) -> None:
        """A rule with both target and targets is rejected."""
        self.one_issue(
            rule_text(targets='[{ host = "h", port = 1 }]'), "web", "rule.targets", "not both"
        )

    def test_target_type(self) -> None:
        """target must be a string."""
        self.one_issue(rule_text(target="80"), "web", "rule.target", "must be a string")

    def test_target_no_port(self) -> None:
        """A target without ":port" is rejected."""
        self.one_issue(rule_text(target='"h"'), "web", "rule.target", "has no port")

    def test_target_unbracketed_ipv6(self) -> None:
        """An unbracketed IPv6 target gets a bracketed suggestion."""
        self.one_issue(
            rule_text(target='"2001:db8::1:80"'),
            "web",
            "rule.target",
            'write it as "[2001:db8::1]:80"',
        )

    def test_target_brackets_not_ipv6(self) -> None:
        """Brackets around something that is not IPv6 are rejected."""
        self.one_issue(
            rule_text(target='"[example.com]:80"'), "web", "rule.target", "not an IPv6 address"
        )

    def test_target_brackets_unclosed(self) -> None:
        """A bracketed target without "]:port" is rejected."""
        self.one_issue(rule_text(target='"[::1]80"'), "web", "rule.target", '"[::1]:80"')

    def test_target_empty_host(self) -> None:
        """A target with an empty host is rejected."""
        self.one_issue(rule_text(target='":80"'), "web", "rule.target", "the host is empty")

    def test_target_bad_hostname(self) -> None:
        """Host names must follow RFC 1123; all-numeric names must be valid IPv4."""
        for host in ("bad_host", "-a.example", "a..b", "999.1.1.1", "x" * 64 + ".example"):
            self.one_issue(
                rule_text(target=f'"{host}:80"'),
                "web",
                "rule.target",
                "neither an IP address nor a valid host name",
            )

    def test_target_port_range_invalid(self) -> None:
        """A bad target port is reported on rule.target."""
        self.one_issue(
            rule_text(target='"h:0"'), "web", "rule.target", "target port 0 is out of range"
        )

    def test_targets_type(self) -> None:
        """targets must be an array of tables."""
        self.one_issue(
            rule_text(target="", targets='"h:80"'), "web", "rule.targets", "must be an array"
        )

    def test_targets_empty(self) -> None:
        """An empty targets array is rejected."""
        self.one_issue(rule_text(target="", targets="[]"), "web", "rule.targets", "is empty")

    def test_targets_too_many(self) -> None:
        """More than 8 targets are rejected."""
        entries = ", ".join(f'{{ host = "h{i}", port = 80 }}' for i in range(9))
        self.one_issue(
            rule_text(target="", targets=f"[{entries}]"),
            "web",
            "rule.targets",
            "at most 8 targets",
        )

    def test_targets_with_listen_range(self) -> None:
        """targets with a listen range (multi-target + range) is rejected."""
        self.one_issue(
            rule_text(
                listen_port="",
                listen_ports='"8000-8001"',
                target="",
                targets='[{ host = "h", port = 80 }]',
            ),
            "web",
            "rule.targets",
            "needs a single listen_port",
        )

    def test_targets_entry_not_table(self) -> None:
        """A targets entry that is not a table is reported by index."""
        self.one_issue(
            rule_text(target="", targets='["h:80"]'),
            "web",
            "rule.targets[0]",
            "must be a table",
        )

    def test_targets_unknown_key(self) -> None:
        """An unknown key in a targets entry is reported with the allowed keys."""
        issue = self.one_issue(
            rule_text(
                target="",
                targets='[{ host = "h", port = 80 }, { host = "h", port = 1, wieght = 2 }]',
            ),
            "web",
            "rule.targets[1].wieght",
            "unknown key 'wieght'",
        )
        self.assertIn("host, port, priority, proxy_protocol, weight", issue.message)

    def test_targets_host_missing(self) -> None:
        """A targets entry without host is rejected."""
        self.one_issue(
            rule_text(target="", targets="[{ port = 80 }]"),
            "web",
            "rule.targets[0].host",
            "is missing",
        )

    def test_targets_host_invalid(self) -> None:
        """A targets entry with an invalid host name is rejected."""
        self.one_issue(
            rule_text(target="", targets='[{ host = "a b", port = 80 }]'),
            "web",
            "rule.targets[0].host",
            "nor a valid host name",
        )

    def test_targets_port_missing(self) -> None:
        """A targets entry without port is rejected."""
        self.one_issue(
            rule_text(target="", targets='[{ host = "h" }]'),
            "web",
            "rule.targets[0].port",
            "is missing",
        )

    def test_targets_port_invalid(self) -> None:
        """A targets port that is a range string or out of range is rejected."""
        self.one_issue(
            rule_text(target="", targets='[{ host = "h", port = "80-81" }]'),
            "web",
            "rule.targets[0].port",
            "must be an integer",
        )
        self.one_issue(
            rule_text(target="", targets='[{ host = "h", port = 70000 }]'),
            "web",
            "rule.targets[0].port",
            "from 1 to 65535",
        )

    def test_targets_priority_range(self) -> None:
        """priority outside 0..65535 is rejected."""
        self.one_issue(
            rule_text(target="", targets='[{ host = "h", port = 80, priority = -1 }]'),
            "web",
            "rule.targets[0].priority",
            "from 0 to 65535",
        )

    def test_targets_proxy_protocol_value(self) -> None:
        """proxy_protocol other than v1/v2 is rejected."""
        self.one_issue(
            rule_text(target="", targets='[{ host = "h", port = 80, proxy_protocol = "v3" }]'),
            "web",
            "rule.targets[0].proxy_protocol",
            '"v1", "v2"',
        )

    def test_proxy_protocol_on_udp(self) -> None:
        """proxy_protocol on a UDP rule is rejected: PROXY protocol is TCP only."""
        self.one_issue(
            rule_text(
                protocol='"udp"',
                target="",
                targets='[{ host = "h", port = 80, proxy_protocol = "v2" }]',
            ),
            "web",
            "rule.targets[0].proxy_protocol",
            "PROXY protocol is TCP only",
            BOTH,
        )

    def test_rule_prefer_ipv6_type(self) -> None:
        """A rule's prefer_ipv6 must be a boolean."""
        self.one_issue(
            rule_text(prefer_ipv6='"true"'), "web", "rule.prefer_ipv6", "must be a boolean"
        )

    def test_rule_udp_overrides_range(self) -> None:
        """A rule's udp_max_flows and udp_flow_idle_secs are range-checked."""
        issues = self.issues(rule_text(udp_max_flows="0", udp_flow_idle_secs="10"))
        self.assertEqual(
            [(i.rule, i.field) for i in issues],
            [("web", "rule.udp_max_flows"), ("web", "rule.udp_flow_idle_secs")],
        )

    def test_rule_listen_addresses(self) -> None:
        """A rule's listen_addresses are validated like the global ones."""
        self.one_issue(
            rule_text(listen_addresses='["1.2.3.4", "1.2.3.4"]'),
            "web",
            "rule.listen_addresses[1]",
            "listed twice",
        )


def toml_string(text: str) -> str:
    """A TOML basic string for C{text}, escaping what TOML forbids raw."""
    out = []
    for char in text:
        if char in '"\\' or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["tcp", "udp", "v1", "v2", "h:80", "[::1]:1-3", "1-1024", "0.0.0.0", "::"]),
)


def render(value: object) -> str:
    """Render a strategy-generated value as an inline TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {render(v)}" for k, v in value.items()) + "}"


values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["host", "port", "priority", "proxy_protocol", "x"]),
            children,
            max_size=4,
        ),
    ),
    max_leaves=8,
)

valid_rules = st.fixed_dictionaries(
    {
        "name": st.text(min_size=1, max_size=12),
        "listen_port": st.integers(min_value=1, max_value=65535),
        "target": st.sampled_from(["h:80", "10.0.0.1:1", "[::1]:443", "a.example.:22"]),
    }
)


@st.composite
def rule_tables(draw: st.DrawFn) -> dict[str, object]:
    """A mostly valid rule with a few keys replaced by arbitrary values or dropped."""
    rule: dict[str, object] = dict(draw(valid_rules))
    for key in draw(st.lists(st.sampled_from(sorted(rule)), max_size=1)):
        del rule[key]
    overrides = draw(
        st.dictionaries(st.sampled_from([*config._RULE_KEYS, "bogus"]), values, max_size=2)
    )
    rule.update(overrides)
    return rule


def render_document(rules: list[dict[str, object]], table: dict[str, object]) -> str:
    lines = ["[global]"]
    lines += [f"{k} = {render(v)}" for k, v in table.items()]
    for rule in rules:
        lines.append("[[rule]]")
        lines += [f"{k} = {render(v)}" for k, v in rule.items()]
    return "\n".join(lines) + "\n"


class PropertyTests(SynchronousTestCase):
    """Whatever the input, the only failure is a ConfigError."""

    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_arbitrary_text(self, text: str) -> None:
        """Arbitrary text never raises anything but ConfigError."""
        try:
            parse_config(text, SOURCE, BOTH)
        except ConfigError as e:
            self.assertTrue(e.issues)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(rule_tables(), max_size=3),
        st.dictionaries(st.sampled_from([*config._GLOBAL_KEYS, "x"]), values, max_size=4),
    )
    def test_arbitrary_values(
        self, rules: list[dict[str, object]], table: dict[str, object]
    ) -> None:
        """Well-formed TOML with arbitrary keys and values never raises anything but ConfigError."""
        try:
            cfg = parse_config(render_document(rules, table), SOURCE, BOTH)
        except ConfigError as e:
            for issue in e.issues:
                self.assertEqual(issue.source, SOURCE)
                self.assertTrue(issue.message)
            self.assertEqual(len(str(e).splitlines()), len(e.issues))
        else:
            self.assertEqual(len(cfg.rules), len(rules))


class TargetIsListenerTests(ParseMixin, SynchronousTestCase):
    """A rule whose target is its own listener on this host is refused."""

    def test_loopback_same_port(self) -> None:
        """target 127.0.0.1 on the rule's own port, listening everywhere: refused."""
        self.one_issue(
            rule_text(target='"127.0.0.1:8080"'),
            "web",
            "rule.target",
            "validation.target_is_listener",
        )

    def test_inside_a_range(self) -> None:
        """A range whose targets overlap its own listen ports is refused."""
        self.one_issue(
            rule_text(listen_ports='"8080-8089"', listen_port="", target='"localhost:8085-8094"'),
            "web",
            "rule.target",
            "port 8085",
        )

    def test_own_address_of_the_host(self) -> None:
        """One of the host's own addresses is the listener too; another host is not."""
        text = rule_text(target="", targets='[{ host = "192.0.2.7", port = 8080 }]')
        error = self.assertRaises(
            ConfigError, parse_config, text, SOURCE, frozenset({Protocol.TCP}), {"192.0.2.7"}
        )
        [issue] = error.issues
        self.assertEqual(issue.field, "rule.targets[0]")
        self.parse(text)

    def test_listener_on_one_address_only(self) -> None:
        """A listener on 127.0.0.2 is not reached through 127.0.0.1."""
        self.parse(rule_text(target='"127.0.0.1:8080"', listen_addresses='["127.0.0.2"]'))
