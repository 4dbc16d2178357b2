"""The rule JSON codec round-trips every field and omits defaults."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from portunus.model import (
    Balance,
    PortRange,
    Protocol,
    ProxyProtocolVersion,
    RateLimit,
    Rule,
    Target,
)
from portunus.rulejson import RuleDecodeError, rule_from_dict, rule_to_dict


class RuleJsonTests(SynchronousTestCase):
    def test_minimal_rule_is_small_and_round_trips(self) -> None:
        rule = Rule(
            id=7,
            name="web",
            protocol=Protocol.TCP,
            listen=PortRange.single(18080),
            targets=[Target("10.0.0.5", PortRange.single(8080))],
        )
        data = rule_to_dict(rule)
        self.assertEqual(
            data,
            {
                "id": 7,
                "name": "web",
                "protocol": "tcp",
                "listen": "18080",
                "targets": [{"host": "10.0.0.5", "ports": "8080"}],
            },
        )
        self.assertEqual(rule_from_dict(json.loads(json.dumps(data))), rule)

    def test_every_field_round_trips(self) -> None:
        rule = Rule(
            id=2**62,
            name="all",
            protocol=Protocol.TCP,
            listen=PortRange(443, 443),
            targets=[
                Target("a.example", PortRange.single(8443), 0, ProxyProtocolVersion.V2, 3),
                Target("::1", PortRange.single(9443), 1, ProxyProtocolVersion.V1),
            ],
            listen_addresses=("127.0.0.1",),
            prefer_ipv6=True,
            udp_max_flows=10,
            udp_flow_idle_secs=30,
            balance=Balance.WEIGHTED,
            health_check_interval_secs=5,
            sni_pattern="*.example.com",
            accept_proxy_protocol=True,
            trusted_sources=("10.0.0.0/8",),
            rate_limit=RateLimit(bandwidth_in_bps=1000, concurrent_connections=4),
        )
        self.assertEqual(rule_from_dict(json.loads(json.dumps(rule_to_dict(rule)))), rule)

    def test_range_rule_round_trips(self) -> None:
        rule = Rule(
            id=1,
            name="range",
            protocol=Protocol.UDP,
            listen=PortRange(5000, 5009),
            targets=[Target("h", PortRange(6000, 6009))],
        )
        self.assertEqual(rule_to_dict(rule)["listen"], "5000-5009")
        self.assertEqual(rule_from_dict(rule_to_dict(rule)), rule)

    def test_unknown_keys_are_ignored(self) -> None:
        data = {
            "id": 1,
            "name": "x",
            "protocol": "tcp",
            "listen": "80",
            "targets": [{"host": "h", "ports": "81", "future": 1}],
            "future_field": True,
        }
        self.assertEqual(rule_from_dict(data).name, "x")

    def test_broken_dicts_raise_decode_error(self) -> None:
        good = rule_to_dict(
            Rule(
                id=1,
                name="x",
                protocol=Protocol.TCP,
                listen=PortRange.single(80),
                targets=[Target("h", PortRange.single(81))],
            )
        )
        for key, value in [
            ("protocol", "sctp"),
            ("listen", "0"),
            ("listen", "90-80"),
            ("listen", ["80"]),
            ("targets", []),
            ("targets", [{"host": "h"}]),
            ("id", "seven"),
        ]:
            broken = dict(good, **{key: value})
            with self.subTest(key=key, value=value):
                self.assertRaises(RuleDecodeError, rule_from_dict, broken)
        missing = dict(good)
        del missing["name"]
        self.assertRaises(RuleDecodeError, rule_from_dict, missing)
