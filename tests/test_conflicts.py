"""
The rule-conflict model, and one table of cases run through both surfaces
that use it: the server's push check (API validation, then the store's
overlap query and L{refuse_overlaps}) and the standalone config parser.
"""

from __future__ import annotations

import json
import re
from functools import partial

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.conflicts import Claim, Conflict, find_conflict
from portunus.errors import ERRORS, PortunusError
from portunus.model import Protocol, Rule
from portunus.rulespec import RuleRequest, parse_rule_body
from portunus.server.controlplane import refuse_overlaps
from portunus.server.store import Store, open_store, run_synchronously
from portunus.standalone.config import ConfigError, parse_config

TCP_AND_UDP = frozenset({Protocol.TCP, Protocol.UDP})


@attrs.frozen
class Side:
    """One rule of a case, written for each surface."""

    listen: str = "8443"
    protocol: str = "tcp"
    #: None: the default, both wildcards.
    addresses: tuple[str, ...] | None = None
    sni: str | None = None
    fallback: bool = False
    proxy: bool = False

    def _target_ports(self) -> str:
        start, _, end = self.listen.partition("-")
        offset = 1000
        return f"{int(start) + offset}" + (f"-{int(end) + offset}" if end else "")

    def api_body(self, name: str) -> dict[str, object]:
        body: dict[str, object] = {
            "client": "edge-01",
            "name": name,
            "protocol": self.protocol,
            "listen": self.listen,
            "targets": [{"host": "10.0.0.5", "port": self._target_ports()}],
        }
        if self.addresses is not None:
            body["listen_addresses"] = list(self.addresses)
        if self.sni is not None:
            body["sni_pattern"] = self.sni
        if self.fallback:
            body["sni_fallback"] = True
        if self.proxy:
            body["accept_proxy_protocol"] = True
            body["trusted_sources"] = ["10.0.0.0/8"]
        return body

    def toml(self, name: str) -> str:
        key = "listen_ports" if "-" in self.listen else "listen_port"
        port = f'"{self.listen}"' if "-" in self.listen else self.listen
        lines = [
            "[[rule]]",
            f'name = "{name}"',
            f'protocol = "{self.protocol}"',
            f"{key} = {port}",
            f'target = "10.0.0.5:{self._target_ports()}"',
        ]
        if self.addresses is not None:
            lines.append(f"listen_addresses = {json.dumps(list(self.addresses))}")
        if self.sni is not None:
            lines.append(f'sni_pattern = "{self.sni}"')
        if self.fallback:
            lines.append("sni_fallback = true")
        if self.proxy:
            lines.append('accept_proxy_protocol = true\ntrusted_sources = ["10.0.0.0/8"]')
        return "\n".join(lines) + "\n"

    def rule(self, name: str) -> Rule:
        request = parse_rule_body(self.api_body(name))
        assert isinstance(request, RuleRequest), request
        return request.rule


V4 = ("0.0.0.0",)
V6 = ("::",)

#: (what, first rule, second rule, code or None, the second rule's field at fault).
CASES: list[tuple[str, Side, Side, str | None, str]] = [
    ("same port", Side(), Side(), "port_in_use", "listen"),
    ("range over a port", Side("8443"), Side("8440-8450"), "port_in_use", "listen"),
    ("overlapping ranges", Side("8000-8010"), Side("8010-8020"), "port_in_use", "listen"),
    ("adjacent ranges", Side("8000-8010"), Side("8011-8020"), None, ""),
    ("tcp and udp", Side(), Side(protocol="udp"), None, ""),
    ("udp twice", Side(protocol="udp"), Side(protocol="udp"), "port_in_use", "listen"),
    ("same address", Side(addresses=("127.0.0.1",)), Side(addresses=("127.0.0.1",)),
     "port_in_use", "listen"),
    ("disjoint IPv4", Side(addresses=("127.0.0.1",)), Side(addresses=("127.0.0.2", "::1")),
     None, ""),
    ("0.0.0.0 takes IPv4", Side(addresses=V4), Side(addresses=("127.0.0.1",)),
     "port_in_use", "listen"),
    (":: takes IPv6", Side(addresses=V6), Side(addresses=("::1",)), "port_in_use", "listen"),
    ("0.0.0.0 leaves IPv6", Side(addresses=V4), Side(addresses=("::1",)), None, ""),
    (":: is IPv6 only", Side(addresses=V6), Side(addresses=("127.0.0.1",)), None, ""),
    ("wildcards of both families", Side(addresses=V4), Side(addresses=V6), None, ""),
    ("distinct SNI names", Side(sni="a.example.com"), Side(sni="b.example.com"), None, ""),
    ("exact and wildcard", Side(sni="a.example.com"), Side(sni="*.example.com"), None, ""),
    ("routes and a fallback", Side(sni="a.example.com"), Side(fallback=True), None, ""),
    ("same SNI name", Side(sni="a.example.com"), Side(sni="A.Example.com"),
     "conflict.sni_route_duplicate", "sni_pattern"),
    ("same SNI wildcard", Side(sni="*.example.com"), Side(sni="*.example.com"),
     "conflict.sni_route_duplicate", "sni_pattern"),
    ("two fallbacks", Side(fallback=True), Side(fallback=True),
     "conflict.sni_fallback_duplicate", "sni_fallback"),
    ("SNI on a plain port", Side(), Side(sni="a.example.com"),
     "conflict.legacy_to_sni_unsupported", "sni_pattern"),
    ("fallback on a plain port", Side(), Side(fallback=True),
     "conflict.legacy_to_sni_unsupported", "sni_fallback"),
    ("plain on an SNI port", Side(sni="a.example.com"), Side(),
     "conflict.legacy_to_sni_unsupported", "listen"),
    ("plain range over an SNI port", Side(sni="a.example.com"), Side("8400-8500"),
     "conflict.legacy_to_sni_unsupported", "listen"),
    ("plain and SNI on disjoint addresses", Side(sni="a.example.com", addresses=("127.0.0.1",)),
     Side(addresses=("127.0.0.2",)), None, ""),
    ("one name on disjoint addresses", Side(sni="a.example.com", addresses=("127.0.0.1",)),
     Side(sni="a.example.com", addresses=("127.0.0.2",)), None, ""),
    ("one name on other ports", Side(sni="a.example.com"), Side("9443", sni="a.example.com"),
     None, ""),
    ("SNI listeners on overlapping addresses", Side(sni="a.example.com", addresses=V4),
     Side(sni="b.example.com", addresses=("127.0.0.1",)), "port_in_use", "listen_addresses"),
    ("SNI rules disagreeing on PROXY", Side(sni="a.example.com"),
     Side(sni="b.example.com", proxy=True),
     "conflict.sni_proxy_protocol_mismatch", "accept_proxy_protocol"),
]  # fmt: skip


class ModelTests(SynchronousTestCase):
    def test_cases(self) -> None:
        """The model's verdict on every case of the table."""
        for what, first, second, code, field in CASES:
            with self.subTest(what):
                conflict = find_conflict(Claim.of(second.rule("b")), Claim.of(first.rule("a")))
                self.assertEqual(
                    (conflict.code, conflict.field) if conflict else (None, ""), (code, field)
                )

    def test_codes_are_registered_conflicts(self) -> None:
        """Every verdict is a registered code answered with 409."""
        for code in {case[3] for case in CASES} - {None}:
            assert code is not None
            self.assertEqual(ERRORS[code].http_status, 409, code)

    def test_messages(self) -> None:
        """Each verdict says which rule is in the way and what to change."""

        def message(first: Side, second: Side) -> str:
            conflict = find_conflict(Claim.of(second.rule("b")), Claim.of(first.rule("a")))
            assert isinstance(conflict, Conflict)
            return conflict.message("rule 'a'")

        self.assertEqual(
            message(Side(addresses=V4), Side("8440-8450", addresses=("127.0.0.1",))),
            "port 8443 is already used by rule 'a', tcp on 127.0.0.1 (0.0.0.0 there); pick "
            "ports outside 8443 or give the rules different listen_addresses",
        )
        self.assertIn(
            "rule 'a' already routes 'a.example.com' on port 8443",
            message(Side(sni="a.example.com"), Side(sni="a.example.com")),
        )
        self.assertIn(
            "port 8443 already has a fallback, rule 'a'",
            message(Side(fallback=True), Side(fallback=True)),
        )
        self.assertIn(
            "used by rule 'a', which is not SNI-routed",
            message(Side(), Side(sni="a.example.com")),
        )
        self.assertIn("SNI-routed by rule 'a'", message(Side(sni="a.example.com"), Side()))
        self.assertIn(
            "rule 'a' routes SNI on port 8443 on other listen_addresses (0.0.0.0)",
            message(
                Side(sni="a.example.com", addresses=V4),
                Side(sni="b.example.com", addresses=("127.0.0.1",)),
            ),
        )
        self.assertIn(
            "rule 'a' on SNI port 8443 does not accept PROXY headers",
            message(Side(sni="a.example.com"), Side(sni="b.example.com", proxy=True)),
        )


class ServerPathTests(SynchronousTestCase):
    """The server's push check: a rule is refused when the store holds a conflicting one."""

    def store(self) -> tuple[Store, str]:
        clock = Clock()
        store = open_store(self.mktemp(), clock, runner=run_synchronously)
        self.addCleanup(lambda: self.successResultOf(store.close()))
        client = self.successResultOf(store.create_client("edge-01", None, 0.0))
        return store, client.client_id

    def test_cases(self) -> None:
        """The server refuses exactly the table's conflicts, with the same codes."""
        for what, first, second, code, _ in CASES:
            with self.subTest(what):
                store, client_id = self.store()
                a, b = first.rule("a"), second.rule("b")
                stored = self.successResultOf(
                    store.insert_rule(client_id, a, 1.0, check=partial(refuse_overlaps, a))
                )
                d = store.insert_rule(client_id, b, 2.0, check=partial(refuse_overlaps, b))
                if code is None:
                    self.successResultOf(d)
                    continue
                error = self.failureResultOf(d, PortunusError).value
                self.assertEqual(error.code, code)
                self.assertEqual(error.fields["rule_id"], stored.rule_id)
                self.assertIn(f"rule {stored.rule_id} (pending)", error.message)


class StandalonePathTests(SynchronousTestCase):
    """The standalone config refuses the same pairs, naming the later rule's key."""

    def test_cases(self) -> None:
        """Each conflict is one issue on the second rule, its message led by the code."""
        for what, first, second, code, field in CASES:
            with self.subTest(what):
                text = first.toml("a") + second.toml("b")
                if code is None:
                    self.assertEqual(len(parse_config(text, "f.toml", TCP_AND_UDP).rules), 2)
                    continue
                error = self.assertRaises(ConfigError, parse_config, text, "f.toml", TCP_AND_UDP)
                [issue] = error.issues
                key = "listen_ports" if "-" in second.listen else "listen_port"
                self.assertEqual(issue.rule, "b")
                self.assertEqual(issue.field, f"rule.{key if field == 'listen' else field}")
                self.assertTrue(issue.message.startswith(f"{code}: "), issue.message)
                self.assertIn("rule 'a'", issue.message)

    def test_one_issue_per_code(self) -> None:
        """A rule repeating an earlier conflict is told once per kind of conflict."""
        text = "".join(Side(sni="*.example.com").toml(n) for n in ("one", "two", "three"))
        error = self.assertRaises(ConfigError, parse_config, text, "f.toml")
        self.assertEqual(
            [(i.rule, re.sub(r":.*", "", i.message)) for i in error.issues],
            [("two", "conflict.sni_route_duplicate"), ("three", "conflict.sni_route_duplicate")],
        )
