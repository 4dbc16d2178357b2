"""Open connections per kernel rule, from conntrack's listing."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.kernel import Flow, KernelRule, active_counts, parse_flows
from portunus.model import PortRange, Protocol, Target
from tests.dataplane.kernel._rules import plain

#: `conntrack -L --dst-nat` output: TCP open and in TIME_WAIT, UDP, IPv6,
#: ICMP and a line that does not parse.
LISTING = (Path(__file__).parent.parent / "fixtures" / "conntrack-list.txt").read_text()


class ParseTests(SynchronousTestCase):
    def test_flows(self) -> None:
        """Original destination and reply source of each TCP/UDP flow; others skipped."""
        flows = parse_flows(LISTING)
        self.assertEqual(
            flows[0], Flow("tcp", "ESTABLISHED", "198.18.0.2", 8001, "198.18.1.1", 9001)
        )
        self.assertEqual(flows[2], Flow("udp", None, "198.18.0.2", 5000, "198.18.1.1", 5001))
        self.assertEqual(flows[3].reply_src, "2001:2:0:1::1")
        self.assertEqual(len(flows), 4)
        self.assertEqual([f.open for f in flows], [True, False, True, True])


class ActiveCountTests(SynchronousTestCase):
    def test_counts_per_rule(self) -> None:
        """Open flows are matched by protocol, ports, listen address and target."""
        ranged = KernelRule(
            plain(
                "198.18.1.1",
                name="range",
                listen=PortRange(8000, 8002),
                targets=(Target("198.18.1.1", PortRange(9000, 9002)),),
            )
        )
        udp = KernelRule(
            plain(
                "198.18.1.1",
                name="udp",
                protocol=Protocol.UDP,
                listen=PortRange.single(5000),
                targets=(Target("198.18.1.1", PortRange.single(5001)),),
            )
        )
        six = KernelRule(
            plain(
                "2001:2:0:1::1",
                name="six",
                listen=PortRange.single(8100),
                targets=(Target("2001:2:0:1::1", PortRange.single(9001)),),
            )
        )
        elsewhere = KernelRule(
            plain(
                "198.18.1.1",
                name="other address",
                listen=PortRange.single(8001),
                listen_addresses=("198.18.0.9",),
                targets=(Target("198.18.1.1", PortRange.single(9001)),),
            )
        )
        counts = active_counts(parse_flows(LISTING), [ranged, udp, six, elsewhere])
        self.assertEqual(counts, {ranged.id: 1, udp.id: 1, six.id: 1, elsewhere.id: 0})

    def test_no_flows(self) -> None:
        """Every rule is reported, with 0 when nothing is open."""
        rule = KernelRule(plain())
        self.assertEqual(active_counts([], [rule]), {rule.id: 0})
