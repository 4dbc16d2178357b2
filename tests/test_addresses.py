"""The one host:port grammar: splitting, ports, host names, formatting, overlap."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portunus.addresses import (
    AddressError,
    HostPort,
    addresses_overlap,
    bracket,
    format_host_port,
    host_problem,
    is_host_name,
    parse_port,
    split_host_port,
    unbracket,
)


class SplitTests(SynchronousTestCase):
    def test_shapes(self) -> None:
        """Host, host:port, [v6] and [v6]:port split; the port stays text."""
        for text, expected in [
            ("h", HostPort("h", None, False)),
            ("h:80", HostPort("h", "80", False)),
            ("h:8000-8010", HostPort("h", "8000-8010", False)),
            (":7443", HostPort("", "7443", False)),
            ("h:", HostPort("h", "", False)),
            ("[::1]", HostPort("::1", None, True)),
            ("[2001:db8::1]:443", HostPort("2001:db8::1", "443", True)),
        ]:
            with self.subTest(text=text):
                self.assertEqual(split_host_port(text), expected)

    def test_bare_ipv6(self) -> None:
        """Where a port is optional, a bare IPv6 address is a host without one."""
        self.assertEqual(
            split_host_port("2001:db8::53", bare_ipv6=True), HostPort("2001:db8::53", None, False)
        )
        self.assertRaises(AddressError, split_host_port, "2001:db8::53")

    def test_malformed(self) -> None:
        """Each malformed shape names its part and says what is wrong."""
        for text, part, message in [
            ("[::1:7443", "host", "'[::1:7443' has '[' without ']'"),
            ("[::1]7443", "port", "'[::1]7443' has text after ']' that is not :port"),
            ("[example.com]:80", "host", "'example.com' is in brackets but is not an IPv6"),
            ("[192.0.2.1]", "host", "brackets are only for IPv6 addresses"),
            (
                "2001:db8::1:80",
                "host",
                "'2001:db8::1:80' looks like an IPv6 address without brackets; "
                'write it as "[2001:db8::1]:80"',
            ),
            ("2001:db8::zz", "host", "write it as [address]:port"),
        ]:
            with self.subTest(text=text):
                e = self.assertRaises(AddressError, split_host_port, text)
                self.assertEqual(e.part, part)
                self.assertIn(message, str(e))


class PortTests(SynchronousTestCase):
    def test_ports(self) -> None:
        """A port is 1 to 65535 in ASCII digits, nothing else."""
        self.assertEqual(parse_port("1"), 1)
        self.assertEqual(parse_port("65535"), 65535)
        for text, message in [
            ("0", "the port 0 is out of range; use 1 to 65535"),
            ("65536", "out of range"),
            ("", "the port '' is not a number from 1 to 65535"),
            ("+80", "not a number"),
            ("\uff18\uff10", "not a number"),
            ("123456", "not a number"),
        ]:
            with self.subTest(text=text):
                e = self.assertRaises(AddressError, parse_port, text)
                self.assertEqual(e.part, "port")
                self.assertIn(message, str(e))


class HostTests(SynchronousTestCase):
    def test_host_names(self) -> None:
        """RFC 1123 names; underscores only when asked; all-numeric names never."""
        self.assertTrue(is_host_name("edge-1.example.com."))
        self.assertFalse(is_host_name("edge_1.example.com"))
        self.assertTrue(is_host_name("edge_1", allow_underscore=True))
        self.assertFalse(is_host_name("999.1.1.1"))
        self.assertFalse(is_host_name("-lead.example"))
        self.assertFalse(is_host_name("a" * 64))
        self.assertFalse(is_host_name(""))

    def test_host_problem(self) -> None:
        """IP literals and names pass; anything else says what a host may hold."""
        self.assertIsNone(host_problem("::1"))
        self.assertIsNone(host_problem("db.internal"))
        self.assertEqual(host_problem(""), "the host is empty")
        problem = host_problem("a b")
        assert problem is not None
        self.assertIn("'a b' is neither an IP address nor a valid host name", problem)
        self.assertNotIn("underscores", problem)
        self.assertIn("underscores", host_problem("a b", allow_underscore=True) or "")


class FormatTests(SynchronousTestCase):
    def test_format(self) -> None:
        """IPv6 hosts get brackets once; ports may be numbers, ranges or text."""
        self.assertEqual(format_host_port("10.0.0.5", 80), "10.0.0.5:80")
        self.assertEqual(format_host_port("::1", "8000-8010"), "[::1]:8000-8010")
        self.assertEqual(format_host_port("[::1]", 80), "[::1]:80")
        self.assertEqual(format_host_port("db.internal", 5432), "db.internal:5432")
        self.assertEqual(bracket("::1"), "[::1]")
        self.assertEqual(unbracket("[::1]"), "::1")
        self.assertEqual(unbracket("::1"), "::1")

    def test_round_trip(self) -> None:
        """What format_host_port writes, split_host_port reads back."""
        for host, port in [("10.0.0.5", "80"), ("2001:db8::1", "443"), ("h", "1-2")]:
            split = split_host_port(format_host_port(host, port))
            self.assertEqual((split.host, split.port), (host, port))


class OverlapTests(SynchronousTestCase):
    def test_overlap(self) -> None:
        """The wildcard takes its own family; "::" takes IPv4 too only when dual-stack."""
        for a, b, v6only, dual in [
            ("127.0.0.1", "127.0.0.1", True, True),
            ("127.0.0.1", "127.0.0.2", False, False),
            ("0.0.0.0", "127.0.0.1", True, True),
            ("::", "::1", True, True),
            ("::", "0:0::1", True, True),
            ("::1", "0:0::1", True, True),
            ("::", "127.0.0.1", False, True),
            ("::", "0.0.0.0", False, True),
            ("0.0.0.0", "::1", False, False),
            ("::1", "127.0.0.1", False, False),
            ("not-an-ip", "not-an-ip", True, True),
            ("not-an-ip", "0.0.0.0", False, False),
        ]:
            with self.subTest(a=a, b=b):
                self.assertEqual(addresses_overlap(a, b), v6only)
                self.assertEqual(addresses_overlap(b, a), v6only)
                self.assertEqual(addresses_overlap(a, b, dual_stack=True), dual)
                self.assertEqual(addresses_overlap(b, a, dual_stack=True), dual)
