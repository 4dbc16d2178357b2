"""
Tests for L{portunus.server.settings}.
"""

from __future__ import annotations

import os

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.resolver import ResolverSettings
from portunus.errors import PortunusError
from portunus.server.settings import (
    ADVERTISED_ENDPOINT_ENV,
    OPERATOR_HTTP_LISTEN_ENV,
    SERVER_TOML_KEYS,
    AdvertisedEndpoint,
    ListenAddress,
    ServerConfigError,
    ServerSettings,
    load_server_settings,
    parse_advertised_endpoint,
    parse_listen_address,
    parse_server_settings,
)

DATA_DIR = "/var/lib/portunus"


def parse(text: str | None, environ: dict[str, str] | None = None) -> ServerSettings:
    return parse_server_settings(text, DATA_DIR, environ or {})


class _Base(SynchronousTestCase):
    def refused(self, text: str | None, environ: dict[str, str] | None = None) -> list[str]:
        """The issue lines of a refused config."""
        error = self.assertRaises(ServerConfigError, parse, text, environ)
        self.assertIsInstance(error, PortunusError)
        self.assertEqual(error.code, "config_invalid")
        self.assertEqual(error.message, "\n".join(str(i) for i in error.issues))
        return error.message.splitlines()

    def refused_one(self, text: str | None, environ: dict[str, str] | None = None) -> str:
        lines = self.refused(text, environ)
        self.assertEqual(len(lines), 1, lines)
        return lines[0]


class DefaultsTests(_Base):
    """No file, or an empty one, means the Portunus defaults."""

    def test_defaults(self) -> None:
        """Every key has its documented default."""
        settings = parse(None)
        self.assertEqual(settings.data_dir, DATA_DIR)
        self.assertEqual(settings.control_listen, ListenAddress("0.0.0.0", 7443))
        self.assertEqual(settings.operator_http_listen, ListenAddress("127.0.0.1", 7080))
        self.assertEqual(settings.metrics_listen, ListenAddress("127.0.0.1", 7081))
        self.assertEqual(settings.tls_cert_path, "/var/lib/portunus/server.crt")
        self.assertEqual(settings.tls_key_path, "/var/lib/portunus/server.key")
        self.assertIsNone(settings.advertised_endpoint)
        self.assertEqual(settings.range_rule_max_ports, 1024)
        self.assertEqual(settings.udp_flow_idle_secs, 60)
        self.assertEqual(settings.udp_max_flows_per_rule, 1024)
        self.assertIsNone(settings.operator_token)
        self.assertEqual(settings.shutdown_drain_timeout_secs, 30.0)
        self.assertEqual(settings.ack_timeout_secs, 2.0)
        self.assertEqual(settings.resolver, ResolverSettings())

    def test_empty_file(self) -> None:
        """An empty file is the same as no file."""
        self.assertEqual(parse(""), parse(None))

    def test_constructor_defaults_match(self) -> None:
        """The class defaults are the loader's defaults."""
        self.assertEqual(ServerSettings(data_dir=DATA_DIR), parse(None))


class GoodValueTests(_Base):
    """Each key accepts its good values."""

    def test_all_keys(self) -> None:
        """A file setting every key is read into the settings."""
        settings = parse(
            """
            control_listen = "[::]:8443"
            operator_http_listen = "0.0.0.0:8080"
            metrics_listen = "[::1]:9100"
            tls_cert_path = "tls/cert.pem"
            tls_key_path = "/etc/portunus/key.pem"
            advertised_endpoint = "Edge.Example.com:443"
            range_rule_max_ports = 65535
            udp_flow_idle_secs = 300
            udp_max_flows_per_rule = 1
            operator_token = "s3cr3t-token"
            shutdown_drain_timeout_secs = 5
            ack_timeout_secs = 0.5
            [resolver]
            cache_entries = 10
            """
        )
        self.assertEqual(settings.control_listen, ListenAddress("::", 8443))
        self.assertEqual(settings.operator_http_listen, ListenAddress("0.0.0.0", 8080))
        self.assertEqual(settings.metrics_listen, ListenAddress("::1", 9100))
        self.assertEqual(settings.tls_cert_path, "/var/lib/portunus/tls/cert.pem")
        self.assertEqual(settings.tls_key_path, "/etc/portunus/key.pem")
        self.assertEqual(settings.advertised_endpoint, AdvertisedEndpoint("edge.example.com", 443))
        self.assertEqual(settings.range_rule_max_ports, 65535)
        self.assertEqual(settings.udp_flow_idle_secs, 300)
        self.assertEqual(settings.udp_max_flows_per_rule, 1)
        self.assertEqual(settings.operator_token, "s3cr3t-token")
        self.assertEqual(settings.shutdown_drain_timeout_secs, 5.0)
        self.assertIsInstance(settings.shutdown_drain_timeout_secs, float)
        self.assertEqual(settings.ack_timeout_secs, 0.5)
        self.assertEqual(settings.resolver.cache_entries, 10)

    def test_range_bounds(self) -> None:
        """The ends of every range are accepted."""
        low = parse(
            "range_rule_max_ports = 1\nudp_flow_idle_secs = 30\n"
            "udp_max_flows_per_rule = 65535\nack_timeout_secs = 60\n"
            "shutdown_drain_timeout_secs = 0\n"
        )
        self.assertEqual(
            (
                low.range_rule_max_ports,
                low.udp_flow_idle_secs,
                low.udp_max_flows_per_rule,
                low.ack_timeout_secs,
                low.shutdown_drain_timeout_secs,
            ),
            (1, 30, 65535, 60.0, 0.0),
        )
        self.assertEqual(parse("ack_timeout_secs = 0.1").ack_timeout_secs, 0.1)

    def test_token_max_length(self) -> None:
        """A 256-byte token is accepted."""
        token = "a" * 256
        self.assertEqual(parse(f'operator_token = "{token}"').operator_token, token)

    def test_bare_advertised_host(self) -> None:
        """A bare host (IPv4, IPv6 in brackets, DNS) takes the control port later."""
        for text, expected in (
            ("203.0.113.7", AdvertisedEndpoint("203.0.113.7")),
            ("[2001:db8::1]", AdvertisedEndpoint("2001:db8::1")),
            ("[2001:db8::1]:7443", AdvertisedEndpoint("2001:db8::1", 7443)),
            ("edge.example.com", AdvertisedEndpoint("edge.example.com")),
        ):
            settings = parse(f'advertised_endpoint = "{text}"')
            self.assertEqual(settings.advertised_endpoint, expected)
        self.assertEqual(AdvertisedEndpoint("2001:db8::1").with_port(7443), "[2001:db8::1]:7443")
        self.assertEqual(AdvertisedEndpoint("h", 1).with_port(7443), "h:1")
        self.assertEqual(str(AdvertisedEndpoint("2001:db8::1")), "[2001:db8::1]")

    def test_resolver_table(self) -> None:
        """The [resolver] table is read by the data plane's own parser."""
        settings = parse('[resolver]\nnameservers = ["192.0.2.53"]\ntcp_fallback = false')
        self.assertEqual(settings.resolver.nameservers, ("192.0.2.53",))
        self.assertFalse(settings.resolver.tcp_fallback)


class BadValueTests(_Base):
    """Each kind of bad value names the field and says what to do."""

    def test_wrong_types(self) -> None:
        """A value of the wrong TOML type is refused, naming the type."""
        cases = {
            "control_listen = 7443": (
                "server.toml: control_listen: must be a string, not an integer"
            ),
            "tls_cert_path = 1": "server.toml: tls_cert_path: must be a string",
            "advertised_endpoint = true": "server.toml: advertised_endpoint: must be a string",
            'range_rule_max_ports = "10"': (
                "server.toml: range_rule_max_ports: must be an integer, not a string"
            ),
            "udp_flow_idle_secs = 60.0": (
                "server.toml: udp_flow_idle_secs: must be an integer, not a float"
            ),
            "udp_max_flows_per_rule = true": (
                "server.toml: udp_max_flows_per_rule: must be an integer, not a boolean"
            ),
            "operator_token = 5": "server.toml: operator_token: must be a string",
            'ack_timeout_secs = "2"': "server.toml: ack_timeout_secs: must be a number of seconds",
            "shutdown_drain_timeout_secs = false": (
                "server.toml: shutdown_drain_timeout_secs: must be a number of seconds"
            ),
            "resolver = 1": "server.toml: resolver: must be a table",
        }
        for text, expected in cases.items():
            line = self.refused_one(text)
            self.assertTrue(line.startswith(expected), (text, line))

    def test_out_of_range(self) -> None:
        """Values outside their range are refused with the range."""
        cases = {
            "range_rule_max_ports = 0": "use a value from 1 to 65535",
            "udp_flow_idle_secs = 29": "use a value from 30 to 300",
            "udp_flow_idle_secs = 301": "use a value from 30 to 300",
            "udp_max_flows_per_rule = 0": "use a value from 1 to 65535",
            "udp_max_flows_per_rule = 65536": "use a value from 1 to 65535",
            "ack_timeout_secs = 0.05": "use a value from 0.1 to 60 seconds",
            "ack_timeout_secs = 61": "use a value from 0.1 to 60 seconds",
            "ack_timeout_secs = nan": "use a value from 0.1 to 60 seconds",
            "shutdown_drain_timeout_secs = -1": "use a value from 0 to 3600 seconds",
            "shutdown_drain_timeout_secs = inf": "use a value from 0 to 3600 seconds",
        }
        # Too big for a float: must not crash the comparison.
        cases["ack_timeout_secs = 1" + "0" * 400] = "use a value from 0.1 to 60 seconds"
        for text, expected in cases.items():
            line = self.refused_one(text)
            key = text.split(" ")[0]
            self.assertTrue(line.startswith(f"server.toml: {key}: "), line)
            self.assertIn("out of range", line)
            self.assertIn(expected, line)

    def test_malformed_listen(self) -> None:
        """Listen addresses must be IP:port, IPv6 bracketed, port 1..65535."""
        cases = {
            "7443": "has no port",
            "0.0.0.0": "has no port",
            ":7443": "has no address",
            "localhost:7443": "not an IP address",
            "::1:7443": "without brackets",
            "[::1:7443": "without ']'",
            "[::1]7443": "not :port",
            "[127.0.0.1]:7443": "only for IPv6",
            "0.0.0.0:0": "out of range",
            "0.0.0.0:65536": "out of range",
            "0.0.0.0:http": "not a number",
            "0.0.0.0:+80": "not a number",
            "": "is empty",
        }
        for value, expected in cases.items():
            line = self.refused_one(f'control_listen = "{value}"')
            self.assertTrue(line.startswith("server.toml: control_listen: "), line)
            self.assertIn(expected, line)
            if expected not in ("out of range", "not a number"):
                self.assertIn("host:port", line)

    def test_metrics_must_be_loopback(self) -> None:
        """C{metrics_listen} on a non-loopback address is refused."""
        for value in ("0.0.0.0:7081", "192.0.2.1:7081", "[::]:7081"):
            line = self.refused_one(f'metrics_listen = "{value}"')
            self.assertTrue(line.startswith("server.toml: metrics_listen: "), line)
            self.assertIn("not a loopback address", line)
        self.assertEqual(
            parse('metrics_listen = "127.0.0.2:9"').metrics_listen, ListenAddress("127.0.0.2", 9)
        )

    def test_listener_collision(self) -> None:
        """Two listeners on the same port of overlapping addresses are refused."""
        line = self.refused_one('operator_http_listen = "0.0.0.0:7443"')
        self.assertEqual(
            line,
            "server.toml: operator_http_listen: 0.0.0.0:7443 collides with control_listen "
            "(0.0.0.0:7443); give each listener its own port",
        )
        # The file's value is blamed even when it comes first.
        line = self.refused_one('control_listen = "127.0.0.1:7081"')
        self.assertTrue(line.startswith("server.toml: control_listen: 127.0.0.1:7081"), line)
        # "::" also takes IPv4 on Linux.
        self.refused_one('control_listen = "[::]:7080"')
        # Different addresses of one family do not collide.
        parse('control_listen = "127.0.0.2:7080"')

    def test_bad_advertised_endpoint(self) -> None:
        """No scheme, no path, no bare IPv6, a valid host and port."""
        cases = {
            "https://edge.example.com": "has a scheme",
            "edge.example.com/path": "no path",
            "user@edge.example.com": "no path",
            "2001:db8::1": "without brackets",
            "[edge.example.com]:7443": "not an IPv6 address",
            "[192.0.2.1]": "only for IPv6",
            "edge_example.com": "nor a valid host name",
            "999.1.1.1": "nor a valid host name",
            "edge.example.com:0": "out of range",
            "edge.example.com:": "not a number",
            "": "is empty",
        }
        for value, expected in cases.items():
            line = self.refused_one(f'advertised_endpoint = "{value}"')
            self.assertTrue(line.startswith("server.toml: advertised_endpoint: "), line)
            self.assertIn(expected, line)

    def test_tls_paths(self) -> None:
        """Empty, NUL-holding and identical key/cert paths are refused."""
        line = self.refused_one('tls_cert_path = ""')
        self.assertIn("tls_cert_path: is empty", line)
        line = self.refused_one('tls_key_path = "a\\u0000b"')
        self.assertIn("tls_key_path: contains a NUL", line)
        line = self.refused_one('tls_cert_path = "both.pem"\ntls_key_path = "./both.pem"')
        self.assertIn("tls_key_path: is the same file as tls_cert_path", line)

    def test_bad_token(self) -> None:
        """Empty, overlong and non-ASCII tokens are refused without echoing them."""
        for value, expected in (
            ("", "is 0 bytes long"),
            ("b" * 257, "is 257 bytes long"),
            ("ab cd", "printable ASCII"),
            ("p\\u00e4ss", "printable ASCII"),
        ):
            line = self.refused_one(f'operator_token = "{value}"')
            self.assertTrue(line.startswith("server.toml: operator_token: "), line)
            self.assertIn(expected, line)
            if value:
                self.assertNotIn(value, line)

    def test_resolver_issues(self) -> None:
        """Problems inside [resolver] are reported with their dotted field."""
        lines = self.refused("[resolver]\ncache_entries = 0\ncache_entrys = 1\n")
        self.assertEqual(
            sorted(line.split(": ")[1] for line in lines),
            ["resolver.cache_entries", "resolver.cache_entrys"],
        )


class UnknownKeyTests(_Base):
    """Strict keys: typos are caught, with a suggestion."""

    def test_suggestion(self) -> None:
        """A near miss suggests the right key and lists the allowed ones."""
        line = self.refused_one("udp_flow_idle_sec = 60")
        self.assertTrue(line.startswith("server.toml: udp_flow_idle_sec: unknown key"), line)
        self.assertIn("did you mean 'udp_flow_idle_secs'?", line)
        self.assertIn("allowed keys: " + ", ".join(SERVER_TOML_KEYS), line)

    def test_no_suggestion(self) -> None:
        """A key like nothing else gets no guess."""
        line = self.refused_one("zzz = 1")
        self.assertNotIn("did you mean", line)

    def test_portunus_keys_not_taken(self) -> None:
        """Portunus keys this server does not use say so instead."""
        for key in ("log_format", "token_store_path"):
            line = self.refused_one(f'{key} = "x"')
            self.assertTrue(line.startswith(f"server.toml: {key}: "), line)
            self.assertNotIn("unknown key", line)
            self.assertIn("remove the line", line)

    def test_public_origin(self) -> None:
        """operator_http_public_origin takes an origin and refuses a URL with a path."""
        settings = parse('operator_http_public_origin = "https://ops.example.com"')
        self.assertEqual(settings.operator_http_public_origin, "https://ops.example.com")
        for bad in ("ops.example.com", "https://ops.example.com/console", "ftp://x", "https://"):
            line = self.refused_one(f'operator_http_public_origin = "{bad}"')
            self.assertIn("must be an origin", line)

    def test_unprintable_key(self) -> None:
        """A key holding control characters stays on one line."""
        lines = self.refused('"a\\nb" = 1')
        self.assertEqual(len(lines), 1)
        self.assertIn("a\\nb", lines[0])


class MultipleErrorsTests(_Base):
    """Every problem is reported in one error."""

    def test_all_at_once(self) -> None:
        """Five mistakes give five lines, in file order, in one error."""
        error = self.assertRaises(
            ServerConfigError,
            parse,
            'control_listen = "x"\nmetrics_listen = "0.0.0.0:1"\nudp_flow_idle_secs = 1\n'
            'bogus = 1\noperator_token = ""\n',
            {OPERATOR_HTTP_LISTEN_ENV: "nope"},
        )
        fields = [(i.source, i.field) for i in error.issues]
        self.assertEqual(
            sorted(fields, key=str),
            sorted(
                [
                    ("server.toml", "bogus"),
                    ("server.toml", "control_listen"),
                    ("server.toml", "metrics_listen"),
                    ("server.toml", "udp_flow_idle_secs"),
                    ("server.toml", "operator_token"),
                    (OPERATOR_HTTP_LISTEN_ENV, None),
                ],
                key=str,
            ),
        )
        self.assertEqual(len(error.message.splitlines()), 6)
        self.assertEqual(error.error.exit_code, 2)
        self.assertEqual(error.fields["path"], "/var/lib/portunus/server.toml")
        self.assertEqual(len(error.to_json()["error"]["issues"]), 6)  # type: ignore[index]

    def test_syntax_error(self) -> None:
        """A TOML syntax error is one issue naming the file."""
        line = self.refused_one("control_listen = ")
        self.assertTrue(line.startswith("server.toml: TOML syntax error"), line)
        self.assertIn("/var/lib/portunus/server.toml", line)


class EnvironmentTests(_Base):
    """C{PORTUNUS_OPERATOR_HTTP_LISTEN} and C{PORTUNUS_ADVERTISED_ENDPOINT}."""

    def test_operator_listen_override(self) -> None:
        """The variable beats the file."""
        settings = parse(
            'operator_http_listen = "127.0.0.1:1"', {OPERATOR_HTTP_LISTEN_ENV: "0.0.0.0:8080"}
        )
        self.assertEqual(settings.operator_http_listen, ListenAddress("0.0.0.0", 8080))

    def test_operator_listen_empty_ignored(self) -> None:
        """An empty (or blank) variable is ignored."""
        for value in ("", "  "):
            settings = parse(None, {OPERATOR_HTTP_LISTEN_ENV: value})
            self.assertEqual(settings.operator_http_listen, ListenAddress("127.0.0.1", 7080))

    def test_operator_listen_malformed(self) -> None:
        """A malformed variable is an error naming the variable."""
        line = self.refused_one(None, {OPERATOR_HTTP_LISTEN_ENV: "7080"})
        self.assertTrue(line.startswith(f"{OPERATOR_HTTP_LISTEN_ENV}: '7080' has no port"), line)

    def test_operator_listen_collision_blames_variable(self) -> None:
        """A collision caused by the variable names the variable."""
        line = self.refused_one(None, {OPERATOR_HTTP_LISTEN_ENV: "127.0.0.1:7081"})
        self.assertTrue(line.startswith(f"{OPERATOR_HTTP_LISTEN_ENV}: 127.0.0.1:7081"), line)

    def test_advertised_override(self) -> None:
        """The variable beats the file, and a bare host is fine."""
        settings = parse(
            'advertised_endpoint = "a.example.com:1"', {ADVERTISED_ENDPOINT_ENV: "b.example.com"}
        )
        self.assertEqual(settings.advertised_endpoint, AdvertisedEndpoint("b.example.com"))

    def test_advertised_host_less_dropped(self) -> None:
        """C{""}, C{":"}, C{":7443"} and blanks are dropped: the file's value stays."""
        for value in ("", ":", ":7443", "   ", " :7443 "):
            settings = parse(
                'advertised_endpoint = "a.example.com:1"', {ADVERTISED_ENDPOINT_ENV: value}
            )
            self.assertEqual(settings.advertised_endpoint, AdvertisedEndpoint("a.example.com", 1))
            self.assertIsNone(parse(None, {ADVERTISED_ENDPOINT_ENV: value}).advertised_endpoint)

    def test_advertised_malformed(self) -> None:
        """A malformed variable is an error naming the variable."""
        line = self.refused_one(None, {ADVERTISED_ENDPOINT_ENV: "https://x.example.com"})
        self.assertTrue(line.startswith(f"{ADVERTISED_ENDPOINT_ENV}: "), line)
        self.assertIn("has a scheme", line)


class OverrideTests(_Base):
    """Flags beat everything, through L{ServerSettings.with_overrides}."""

    def test_flags_win(self) -> None:
        """Flag values replace env/file values."""
        settings = parse(None, {ADVERTISED_ENDPOINT_ENV: "env.example.com"})
        changed = settings.with_overrides(
            operator_http_listen="[::1]:9000", advertised_endpoint="flag.example.com:7443"
        )
        self.assertEqual(changed.operator_http_listen, ListenAddress("::1", 9000))
        self.assertEqual(changed.advertised_endpoint, AdvertisedEndpoint("flag.example.com", 7443))
        self.assertEqual(settings.with_overrides(), settings)

    def test_flags_checked(self) -> None:
        """Bad flag values are reported together, each naming its flag."""
        error = self.assertRaises(
            ServerConfigError,
            parse(None).with_overrides,
            operator_http_listen="0.0.0.0:7443",
            advertised_endpoint=":7443",
        )
        lines = error.message.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("--operator-http-listen: 0.0.0.0:7443 collides"))
        self.assertTrue(lines[1].startswith("--advertised-endpoint: ':7443' has no host"))

    def test_control_listen_flag(self) -> None:
        """--control-listen is parsed and checked like the other listen flags."""
        changed = parse(None).with_overrides(control_listen="127.0.0.1:27443")
        self.assertEqual(changed.control_listen, ListenAddress("127.0.0.1", 27443))
        error = self.assertRaises(
            ServerConfigError, parse(None).with_overrides, control_listen="127.0.0.1:7080"
        )
        self.assertTrue(error.message.startswith("--control-listen: 127.0.0.1:7080 collides"))

    def test_two_listen_flags_colliding_reported_once(self) -> None:
        error = self.assertRaises(
            ServerConfigError,
            parse(None).with_overrides,
            control_listen="127.0.0.1:9000",
            operator_http_listen="127.0.0.1:9000",
        )
        self.assertEqual(len(error.message.splitlines()), 1)


class RedactionTests(SynchronousTestCase):
    """The operator token never shows in a repr."""

    def test_repr(self) -> None:
        """C{repr} says a token is set, not what it is."""
        settings = parse('operator_token = "hunter2-hunter2"')
        text = repr(settings)
        self.assertNotIn("hunter2", text)
        self.assertIn("operator_token='<redacted>'", text)
        self.assertIn("operator_token=None", repr(parse(None)))


class EndpointTests(SynchronousTestCase):
    """Listen addresses double as Twisted endpoint strings."""

    def test_descriptions(self) -> None:
        """IPv4 uses C{tcp}, IPv6 C{tcp6} with escaped colons."""
        settings = parse('metrics_listen = "[::1]:7081"')
        self.assertEqual(settings.endpoint_description("control"), "tcp:7443:interface=0.0.0.0")
        self.assertEqual(
            settings.endpoint_description("operator_http"), "tcp:7080:interface=127.0.0.1"
        )
        self.assertEqual(settings.endpoint_description("metrics"), "tcp6:7081:interface=\\:\\:1")

    def test_twisted_parses_them(self) -> None:
        """C{serverFromString} reads back the same interface and port."""
        for text in ("0.0.0.0:7443", "[::]:1", "[2001:db8::1]:65535", "127.0.0.1:80"):
            address = parse_listen_address(text)
            endpoint = serverFromString(MemoryReactor(), address.endpoint_description())
            self.assertEqual(endpoint._interface, address.host)  # type: ignore[attr-defined]
            self.assertEqual(endpoint._port, address.port)  # type: ignore[attr-defined]

    def test_str_round_trip(self) -> None:
        """C{str()} gives back the canonical C{host:port}."""
        for text in ("0.0.0.0:7443", "[::1]:7081", "[2001:db8::1]:1"):
            self.assertEqual(str(parse_listen_address(text)), text)
        self.assertEqual(str(parse_listen_address("[2001:DB8:0::1]:1")), "[2001:db8::1]:1")
        self.assertEqual(str(parse_advertised_endpoint("[2001:db8::1]:2")), "[2001:db8::1]:2")


class LoadTests(_Base):
    """L{load_server_settings} reads C{<data_dir>/server.toml}."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)

    def write(self, content: bytes) -> None:
        with open(os.path.join(self.data_dir, "server.toml"), "wb") as f:
            f.write(content)

    def test_missing_file(self) -> None:
        """No file: defaults, with TLS paths in the data dir."""
        settings = load_server_settings(self.data_dir, {})
        self.assertEqual(settings.tls_key_path, os.path.join(self.data_dir, "server.key"))

    def test_reads_file(self) -> None:
        """The file's values are used."""
        self.write(b"udp_flow_idle_secs = 120\n")
        self.assertEqual(load_server_settings(self.data_dir, {}).udp_flow_idle_secs, 120)

    def test_env_applied(self) -> None:
        """The environment is applied on top of the file."""
        settings = load_server_settings(self.data_dir, {OPERATOR_HTTP_LISTEN_ENV: "[::1]:1"})
        self.assertEqual(settings.operator_http_listen, ListenAddress("::1", 1))

    def test_not_utf8(self) -> None:
        """Undecodable bytes are one issue with the offset."""
        self.write(b"control_listen = '\xff'\n")
        error = self.assertRaises(ServerConfigError, load_server_settings, self.data_dir, {})
        self.assertIn("not valid UTF-8 (bad byte at offset 18)", error.message)

    def test_unreadable(self) -> None:
        """A directory named server.toml cannot be read: one issue with the path."""
        os.makedirs(os.path.join(self.data_dir, "server.toml"))
        error = self.assertRaises(ServerConfigError, load_server_settings, self.data_dir, {})
        self.assertTrue(error.message.startswith("server.toml: cannot read "), error.message)
        self.assertIn(self.data_dir, error.message)
