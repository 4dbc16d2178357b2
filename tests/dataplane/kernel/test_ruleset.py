"""The pure builder: a plain rule in, nftables JSON out."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.kernel import KernelRule, Ruleset
from portunus.model import PortRange, Protocol, RateLimit, Target
from tests.dataplane.kernel._fakenft import FakeNft
from tests.dataplane.kernel._rules import plain

LOCAL = {
    "match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}
}


def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def ct(key: str, direction: str | None = None) -> dict[str, Any]:
    return {"ct": {"key": key, "dir": direction} if direction else {"key": key}}


def dport(protocol: str = "tcp") -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": "dport"}}


NFPROTO4 = match({"meta": {"key": "nfproto"}}, "ipv4")


class KernelRuleTests(SynchronousTestCase):
    def test_single_port(self) -> None:
        """Arriving on the port at a local address: DNAT to the target's address and port."""
        self.assertEqual(
            KernelRule(plain()).prerouting(),
            [
                NFPROTO4,
                match(dport(), 8000),
                LOCAL,
                {"dnat": {"family": "ip", "addr": "198.18.1.1", "port": 9000}},
            ],
        )

    def test_range_to_the_same_ports_keeps_the_port(self) -> None:
        """A range forwarded to the same ports translates the address only."""
        rule = plain(
            listen=PortRange(8000, 8002), targets=(Target("198.18.1.1", PortRange(8000, 8002)),)
        )
        self.assertEqual(
            KernelRule(rule).prerouting()[-1], {"dnat": {"family": "ip", "addr": "198.18.1.1"}}
        )

    def test_shifted_range_maps_port_by_port(self) -> None:
        """Listen port A+i goes to target port B+i, as the relay does."""
        rule = plain(
            listen=PortRange(8000, 8002), targets=(Target("198.18.1.1", PortRange(9000, 9002)),)
        )
        kernel = KernelRule(rule)
        self.assertEqual(kernel.prerouting()[1], match(dport(), {"range": [8000, 8002]}))
        self.assertEqual(
            kernel.prerouting()[-1]["dnat"]["port"],
            {"map": {"key": dport(), "data": {"set": [[8000, 9000], [8001, 9001], [8002, 9002]]}}},
        )

    def test_listed_addresses_instead_of_local(self) -> None:
        """Listed listen addresses are matched as such, in prerouting and in the conntrack match."""
        kernel = KernelRule(plain(listen_addresses=("198.18.0.2", "198.18.0.3", "::")))
        daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
        self.assertEqual(
            kernel.prerouting()[2], match(daddr, {"set": ["198.18.0.2", "198.18.0.3"]})
        )
        self.assertIn(
            match(ct("ip daddr", "original"), {"set": ["198.18.0.2", "198.18.0.3"]}),
            kernel.connection(),
        )
        single = KernelRule(plain(listen_addresses=("198.18.0.2",)))
        self.assertEqual(single.prerouting()[2], match(daddr, "198.18.0.2"))

    def test_ipv6(self) -> None:
        """An IPv6 target: ipv6 packets, dnat ip6, ip6 conntrack addresses."""
        kernel = KernelRule(plain("2001:2:0:1::1", protocol=Protocol.UDP))
        self.assertEqual(kernel.prerouting()[0], match({"meta": {"key": "nfproto"}}, "ipv6"))
        self.assertEqual(kernel.prerouting()[1], match(dport("udp"), 8000))
        self.assertEqual(
            kernel.prerouting()[-1],
            {"dnat": {"family": "ip6", "addr": "2001:2:0:1::1", "port": 9000}},
        )
        self.assertIn(match(ct("ip6 saddr", "reply"), "2001:2:0:1::1"), kernel.connection())

    def test_connection_match(self) -> None:
        """The rule's connections: translated, on its listen ports, answered by its target."""
        rule = plain(
            listen=PortRange(8000, 8001), targets=(Target("198.18.1.1", PortRange(9000, 9001)),)
        )
        self.assertEqual(
            KernelRule(rule).connection(),
            [
                NFPROTO4,
                match({"meta": {"key": "l4proto"}}, "tcp"),
                match(ct("status"), "dnat", op="in"),
                match(ct("proto-dst", "original"), {"range": [8000, 8001]}),
                match(ct("ip saddr", "reply"), "198.18.1.1"),
                match(ct("proto-src", "reply"), {"range": [9000, 9001]}),
            ],
        )

    def test_chain_without_limits_only_counts(self) -> None:
        """No limits: count new connections, then bytes each way."""
        kernel = KernelRule(plain())
        rid = kernel.id
        new = match(ct("state"), "new", op="in")
        self.assertEqual(
            kernel.chain_rules(),
            [
                [new, {"counter": f"r{rid}_conns"}],
                [match(ct("direction"), "original"), {"counter": f"r{rid}_in"}],
                [match(ct("direction"), "reply"), {"counter": f"r{rid}_out"}],
            ],
        )

    def test_limits_in_order(self) -> None:
        """Connection rate, then concurrency (TCP resets), then byte rates, then the quota."""
        limits = RateLimit(
            new_connections_per_sec=10,
            new_connections_burst=20,
            concurrent_connections=5,
            bandwidth_in_bps=1000,
            bandwidth_out_bps=2000,
            bandwidth_out_burst=4000,
        )
        kernel = KernelRule(plain(rate_limit=limits), quota_bytes=10**9)
        rules = kernel.chain_rules()
        tcp = match({"meta": {"key": "l4proto"}}, "tcp")
        new = match(ct("state"), "new", op="in")
        rejects = {"counter": f"r{kernel.id}_rejects"}
        reset = {"reject": {"type": "tcp reset"}}
        bucket = {"rate": 10, "burst": 20, "per": "second", "inv": True}
        self.assertEqual(rules[0], [tcp, new, {"limit": bucket}, rejects, reset])
        self.assertEqual(
            rules[1], [tcp, new, {"ct count": {"val": 5, "inv": True}}, rejects, reset]
        )
        self.assertEqual(rules[2], [new, {"counter": f"r{kernel.id}_conns"}])
        in_limit = rules[3][1]["limit"]
        self.assertEqual(
            (in_limit["rate"], in_limit["burst"], in_limit["rate_unit"]), (1000, 1000, "bytes")
        )
        self.assertEqual(rules[4][0], match(ct("direction"), "reply"))
        self.assertEqual(
            (rules[4][1]["limit"]["rate"], rules[4][1]["limit"]["burst"]), (2000, 4000)
        )
        self.assertEqual(rules[5], [{"quota": f"r{kernel.id}_quota"}, {"drop": None}])
        self.assertEqual(len(rules), 8)

    def test_udp_flows_capped_and_dropped(self) -> None:
        """UDP: the flow cap is udp_max_flows (or a lower concurrency cap); excess is dropped."""
        kernel = KernelRule(plain(protocol=Protocol.UDP, udp_max_flows=300))
        self.assertEqual(kernel.concurrency_cap(), 300)
        first = kernel.chain_rules()[0]
        self.assertEqual(
            first[1:],
            [
                {"ct count": {"val": 300, "inv": True}},
                {"counter": f"r{kernel.id}_rejects"},
                {"drop": None},
            ],
        )
        lower = KernelRule(
            plain(protocol=Protocol.UDP, rate_limit=RateLimit(concurrent_connections=7))
        )
        self.assertEqual(lower.concurrency_cap(), 7)
        self.assertIsNone(KernelRule(plain()).concurrency_cap())

    def test_refuses_what_it_cannot_forward(self) -> None:
        """A rule that needs the relay, or an empty quota, is not a KernelRule."""
        self.assertRaises(ValueError, KernelRule, plain("backend.example.com"))
        self.assertRaises(ValueError, KernelRule, plain(), 0)

    def test_comment_is_clean_and_bounded(self) -> None:
        """Rule names go into comments without quotes or control characters, within 128 bytes."""
        kernel = KernelRule(plain(name='a "quoted"\\ name\t' + "é" * 80))
        comment = kernel.comment()
        self.assertTrue(comment.startswith(f"portunus rule {kernel.id} a _quoted__ name_"))
        self.assertLessEqual(len(comment.encode()), 128)
        comment.encode("utf-8")  # no half character


class RulesetTests(SynchronousTestCase):
    def test_table_name_checked(self) -> None:
        """Table names are identifiers nft accepts."""
        Ruleset("portunus_edge2")
        for bad in ("", "1x", "a b", "x" * 33, "a;b"):
            self.assertRaises(ValueError, Ruleset, bad)

    def test_create(self) -> None:
        """A table with its ownership counter and three accepting base chains."""
        commands = Ruleset("pt").create("portunus-owner instance=i pid=1", [])
        self.assertEqual(commands[0], {"add": {"table": {"family": "inet", "name": "pt"}}})
        self.assertEqual(
            commands[1],
            {
                "add": {
                    "counter": {
                        "family": "inet",
                        "table": "pt",
                        "name": "portunus_owner",
                        "comment": "portunus-owner instance=i pid=1",
                    }
                }
            },
        )
        chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in commands[2:5]}
        self.assertEqual(
            {n: (c["type"], c["hook"], c["prio"], c["policy"]) for n, c in chains.items()},
            {
                "prerouting": ("nat", "prerouting", -100, "accept"),
                "postrouting": ("nat", "postrouting", 100, "accept"),
                "forward": ("filter", "forward", 0, "accept"),
            },
        )

    def test_batches_are_accepted_by_nft(self) -> None:
        """Create, put, replace and drop batches only name objects that exist when named."""
        nft = FakeNft()
        ruleset = Ruleset()
        a = KernelRule(
            plain(name="a", rate_limit=RateLimit(concurrent_connections=3)), quota_bytes=100
        )
        b = KernelRule(plain(name="b", protocol=Protocol.UDP))
        self.successResultOf(nft.run(ruleset.create("m", [a])))
        self.successResultOf(nft.run(ruleset.put_rule(b, None) + ruleset.base_rules([a, b])))
        a2 = KernelRule(a.rule)  # the quota goes away
        self.successResultOf(nft.run(ruleset.put_rule(a2, a) + ruleset.base_rules([a2, b])))
        self.assertEqual(set(nft.table().quotas), set())
        self.successResultOf(
            nft.run(ruleset.base_rules([b]) + ruleset.drop_rule(a.id, quota=False))
        )
        table = nft.table()
        self.assertEqual(set(table.chains), {"prerouting", "postrouting", "forward", b.chain})
        self.assertEqual(
            set(table.counters),
            {"portunus_owner"} | {b.counter(s) for s in ("in", "out", "conns", "rejects")},
        )

    def test_base_rules_are_deterministic(self) -> None:
        """The base chains list rules by id, whatever order they were given in."""
        a, b = (
            KernelRule(plain(name="a")),
            KernelRule(plain(name="b", listen=PortRange.single(8001))),
        )
        self.assertEqual(Ruleset().base_rules([a, b]), Ruleset().base_rules([b, a]))
        chains = [c["add"]["rule"]["chain"] for c in Ruleset().base_rules([a]) if "add" in c]
        self.assertEqual(chains, ["prerouting", "postrouting", "forward"])
