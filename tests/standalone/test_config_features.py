"""
Standalone config keys for the data-plane features: balancing, health
checks, SNI routing, PROXY accept, rate limits and the [resolver] table.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portunus.model import Balance, Protocol, RateLimit
from tests.standalone.test_config import ParseMixin, rule_text

BOTH = frozenset({Protocol.TCP, Protocol.UDP})
TWO_TARGETS = '[{ host = "10.0.0.1", port = 80, weight = 3 }, { host = "10.0.0.2", port = 80 }]'


class FeatureKeyTests(ParseMixin, SynchronousTestCase):
    def test_balance_weights_and_health_checks(self) -> None:
        """balance, per-target weight and health_check_interval_secs reach the Rule."""
        config = self.parse(
            rule_text(
                target="",
                targets=TWO_TARGETS,
                balance='"weighted"',
                health_check_interval_secs="10",
            )
        )
        (rule,) = config.rules
        self.assertEqual(rule.balance, Balance.WEIGHTED)
        self.assertEqual([t.weight for t in rule.targets], [3, 1])
        self.assertEqual(rule.health_check_interval_secs, 10)

    def test_bad_balance_and_weight(self) -> None:
        """An unknown balance and a weight out of range are both reported."""
        issues = self.issues(
            rule_text(
                target="",
                targets='[{ host = "10.0.0.1", port = 80, weight = 0 }]',
                balance='"random"',
            )
        )
        self.assertEqual(
            sorted(i.field or "" for i in issues), ["rule.balance", "rule.targets[0].weight"]
        )

    def test_sni_rules_share_a_port(self) -> None:
        """Distinct SNI patterns and one fallback may share a listen port."""
        config = self.parse(
            rule_text("a", sni_pattern='"A.Example.com"')
            + rule_text("w", sni_pattern='"*.example.com"')
            + rule_text("f", sni_fallback="true")
        )
        self.assertEqual(
            [(r.sni_pattern, r.sni_fallback) for r in config.rules],
            [("a.example.com", False), ("*.example.com", False), (None, True)],
        )

    def test_sni_conflicts(self) -> None:
        """Duplicate patterns, two fallbacks and a plain rule on an SNI port are refused."""
        issues = self.issues(
            rule_text("a", sni_pattern='"a.example.com"')
            + rule_text("b", sni_pattern='"a.example.com"')
            + rule_text("f1", sni_fallback="true")
            + rule_text("f2", sni_fallback="true")
            + rule_text("plain")
        )
        text = "\n".join(map(str, issues))
        self.assertIn("conflict.sni_route_duplicate", text)
        self.assertIn("conflict.sni_fallback_duplicate", text)
        self.assertIn("conflict.legacy_to_sni_unsupported", text)

    def test_sni_pattern_grammar_and_scope(self) -> None:
        """A malformed pattern, and SNI on a range or UDP rule, name the rule and field."""
        malformed = self.one_issue(
            rule_text(sni_pattern='"*.com"'), "web", "rule.sni_pattern", "sni_pattern_malformed"
        )
        self.assertIn("*.com", malformed.message)
        self.one_issue(
            rule_text(listen_port="", listen_ports='"8000-8001"', target='"h:9000-9001"',
                      sni_pattern='"a.example.com"'),
            "web",
            "rule.sni_pattern",
            "sni_on_unsupported_rule",
        )  # fmt: skip
        self.one_issue(
            rule_text(protocol='"udp"', sni_pattern='"a.example.com"'),
            "web",
            "rule.sni_pattern",
            "sni_on_unsupported_rule",
            BOTH,
        )

    def test_sni_pattern_and_fallback(self) -> None:
        """One rule cannot be both an SNI route and the port's fallback."""
        self.one_issue(
            rule_text(sni_pattern='"a.example.com"', sni_fallback="true"),
            "web",
            "rule.sni_fallback",
            "a fallback rule has no sni_pattern",
        )

    def test_proxy_accept_needs_trusted_sources(self) -> None:
        """accept_proxy_protocol without trusted_sources says how to add them."""
        self.one_issue(
            rule_text(accept_proxy_protocol="true"),
            "web",
            "rule.trusted_sources",
            "is required with accept_proxy_protocol",
        )

    def test_trusted_sources_alone_or_malformed(self) -> None:
        """trusted_sources without accepting, or with a bad CIDR, is refused."""
        self.one_issue(
            rule_text(trusted_sources='["10.0.0.0/8"]'),
            "web",
            "rule.trusted_sources",
            "only applies with accept_proxy_protocol",
        )
        self.one_issue(
            rule_text(accept_proxy_protocol="true", trusted_sources='["10.0.0.1/8"]'),
            "web",
            "rule.trusted_sources",
            "10.0.0.1/8",
        )

    def test_proxy_accept_values(self) -> None:
        """A valid PROXY accept rule keeps its CIDRs."""
        (rule,) = self.parse(
            rule_text(accept_proxy_protocol="true", trusted_sources='["10.0.0.0/8", "::1"]')
        ).rules
        self.assertTrue(rule.accept_proxy_protocol)
        self.assertEqual(rule.trusted_sources, ("10.0.0.0/8", "::1"))

    def test_rate_limit_table(self) -> None:
        """[rule.rate_limit] becomes a RateLimit value."""
        text = rule_text() + "[rule.rate_limit]\nbandwidth_in_bps = 1_000_000\n"
        text += "concurrent_connections = 100\n"
        (rule,) = self.parse(text).rules
        self.assertEqual(
            rule.rate_limit, RateLimit(bandwidth_in_bps=1_000_000, concurrent_connections=100)
        )

    def test_rate_limit_errors(self) -> None:
        """Unknown keys, zero rates and out-of-range bursts name the exact field."""
        self.one_issue(
            rule_text() + "[rule.rate_limit]\nbandwidth_bps = 1\n",
            "web",
            "rule.rate_limit.bandwidth_bps",
            "unknown key",
        )
        self.one_issue(
            rule_text() + "[rule.rate_limit]\nbandwidth_in_bps = 0\n",
            "web",
            "rule.rate_limit.bandwidth_in_bps",
            "out of range",
        )
        burst = self.one_issue(
            rule_text() + "[rule.rate_limit]\nnew_connections_per_sec = 10\n"
            "new_connections_burst = 1000\n",
            "web",
            "rule.rate_limit.new_connections_burst",
            "rate_limit_burst_range",
        )
        self.assertIn("600", burst.message)
        self.one_issue(rule_text() + "[rule.rate_limit]\n", "web", "rule.rate_limit", "is empty")

    def test_resolver_table(self) -> None:
        """[resolver] keys are parsed; unknown ones are refused with the field."""
        config = self.parse(
            '[resolver]\nnameservers = ["127.0.0.1:5353"]\nip_lookup_strategy = "ipv6_only"\n'
            + rule_text()
        )
        self.assertEqual(config.resolver.nameservers, ("127.0.0.1:5353",))
        self.assertEqual(config.resolver.ip_lookup_strategy, "ipv6_only")
        issues = self.issues("[resolver]\ncache = 5\n" + rule_text())
        self.assertEqual([i.field for i in issues], ["resolver.cache"])
