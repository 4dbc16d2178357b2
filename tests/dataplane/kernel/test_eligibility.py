"""Which rules the kernel may forward, and the stable reasons for the others."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.kernel import REASONS, check_eligible, refuse_unless_eligible
from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, ProxyProtocolVersion, RateLimit, Rule, Target
from tests.dataplane.kernel._rules import plain


class EligibilityTests(SynchronousTestCase):
    def reason(self, rule: Rule) -> str | None:
        why = check_eligible(rule)
        return None if why is None else why.reason

    def test_plain_rules_are_eligible(self) -> None:
        """One IP target, default listen addresses, TCP or UDP, IPv4 or IPv6: eligible."""
        self.assertIsNone(check_eligible(plain()))
        self.assertIsNone(check_eligible(plain(protocol=Protocol.UDP)))
        self.assertIsNone(check_eligible(plain("2001:2:0:1::1")))
        ranged = plain(
            listen=PortRange(8000, 8009),
            targets=(Target("198.18.1.1", PortRange(9000, 9009)),),
        )
        self.assertIsNone(check_eligible(ranged))

    def test_limits_nftables_can_hold_are_eligible(self) -> None:
        """Connection rate, concurrency and byte rates stay in the kernel."""
        limits = RateLimit(
            bandwidth_in_bps=10**6,
            bandwidth_out_bps=10**6,
            new_connections_per_sec=100,
            concurrent_connections=50,
        )
        self.assertIsNone(check_eligible(plain(rate_limit=limits)))

    def test_each_userspace_feature_has_its_reason(self) -> None:
        """Every feature that needs the relay is refused with its own code."""
        two = (
            Target("198.18.1.1", PortRange.single(9000)),
            Target("198.18.1.2", PortRange.single(9000)),
        )
        proxied = Target(
            "198.18.1.1", PortRange.single(9000), proxy_protocol=ProxyProtocolVersion.V2
        )
        cases = {
            "multiple_targets": plain(targets=two),
            "health_check": plain(health_check_interval_secs=5),
            "proxy_protocol": plain(targets=(proxied,)),
            "accept_proxy_protocol": plain(accept_proxy_protocol=True),
            "sni_routing": plain(sni_pattern="*.example.com"),
            "dns_target": plain("backend.example.com"),
            "loopback_target": plain("127.0.0.1"),
            "limit_out_of_range": plain(rate_limit=RateLimit(bandwidth_in_bps=5 * 2**30)),
        }
        for reason, rule in cases.items():
            self.assertEqual(self.reason(rule), reason, reason)
            self.assertIn(reason, REASONS)
        self.assertEqual(self.reason(plain(sni_fallback=True)), "sni_routing")
        self.assertEqual(self.reason(plain("::1")), "loopback_target")
        self.assertEqual(self.reason(plain("0.0.0.0")), "loopback_target")

    def test_listen_addresses(self) -> None:
        """
        The other family's wildcard is dropped; its specific addresses, a
        loopback address, or no address of the target's family are refused.
        """
        self.assertIsNone(check_eligible(plain(listen_addresses=("198.18.0.2",))))
        self.assertIsNone(check_eligible(plain(listen_addresses=("198.18.0.2", "::"))))
        cases = {
            ("127.0.0.1",): "loopback_listen",
            ("198.18.0.2", "2001:2::2"): "address_family_mismatch",
            ("::",): "address_family_mismatch",
            ("localhost",): "address_family_mismatch",
        }
        for addresses, reason in cases.items():
            self.assertEqual(self.reason(plain(listen_addresses=addresses)), reason, addresses)

    def test_message_names_the_rule(self) -> None:
        """The refusal's message says which rule, and what is wrong with it."""
        why = check_eligible(plain("backend.example.com", name="api"))
        assert why is not None
        self.assertIn("'api'", why.message)
        self.assertIn("backend.example.com:9000", why.message)

    def test_refusal_carries_code_and_reason(self) -> None:
        """Under mode kernel the rule is refused with kernel_mode_unsupported and the reason."""
        with self.assertRaises(PortunusError) as raised:
            refuse_unless_eligible(plain(accept_proxy_protocol=True, name="api"))
        self.assertEqual(raised.exception.code, "kernel_mode_unsupported")
        self.assertEqual(
            raised.exception.fields, {"rule": "api", "reason": "accept_proxy_protocol"}
        )
        refuse_unless_eligible(plain())  # no exception
