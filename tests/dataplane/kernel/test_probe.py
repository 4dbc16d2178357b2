"""The kernel-mode prerequisites: capability, forwarding, nft."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.kernel import UNAVAILABLE_REASONS, Availability, probe_host
from portunus.errors import PortunusError

ROOT = "Name:\tx\nCapEff:\t000001ffffffffff\n"
NOBODY = "Name:\tx\nCapEff:\t0000000000000000\n"
#: Every capability but CAP_NET_ADMIN (bit 12).
ALL_BUT_NET_ADMIN = f"CapEff:\t{0x1FFFFFFFFFF & ~(1 << 12):016x}\n"


class AvailabilityTests(SynchronousTestCase):
    def test_reads_the_capability_bit(self) -> None:
        """CAP_NET_ADMIN is bit 12 of CapEff; no CapEff line means none."""
        self.assertTrue(Availability.from_readings(ROOT, "1", "1", "nft").cap_net_admin)
        self.assertFalse(Availability.from_readings(NOBODY, "1", "1", "nft").cap_net_admin)
        without = Availability.from_readings(ALL_BUT_NET_ADMIN, "1", "1", "nft")
        self.assertFalse(without.cap_net_admin)
        self.assertFalse(Availability.from_readings("", "1", "1", "nft").cap_net_admin)

    def test_forwarding_flags(self) -> None:
        """'1\\n' is on; '0', empty or unreadable is off."""
        on = Availability.from_readings(ROOT, "1\n", "1\n", "nft")
        self.assertEqual((on.ipv4_forwarding, on.ipv6_forwarding), (True, True))
        off = Availability.from_readings(ROOT, "0\n", None, "nft")
        self.assertEqual((off.ipv4_forwarding, off.ipv6_forwarding), (False, False))

    def test_problems_in_order(self) -> None:
        """The capability first, then nft, then the target family's forwarding."""
        cases = [
            (Availability(False, True, True, "nft"), None, "no_cap_net_admin"),
            (Availability(True, True, True, None), None, "nft_missing"),
            (Availability(True, False, True, "nft"), 4, "ip_forward_off"),
            (Availability(True, True, False, "nft"), 6, "ipv6_forwarding_off"),
        ]
        for availability, version, reason in cases:
            problem = availability.problem(version)
            assert problem is not None
            self.assertEqual(problem[0], reason)
            self.assertIn(reason, UNAVAILABLE_REASONS)
        self.assertIsNone(Availability(True, False, False, "nft").problem(None))
        self.assertIsNone(Availability(True, True, False, "nft").problem(4))

    def test_refusal_names_reason_and_fix(self) -> None:
        """kernel_mode_unavailable carries the reason and says how to fix it."""
        with self.assertRaises(PortunusError) as raised:
            Availability(True, False, True, "nft").refuse_unless_available(4, rule="web")
        error = raised.exception
        self.assertEqual(error.code, "kernel_mode_unavailable")
        self.assertEqual(error.fields, {"reason": "ip_forward_off", "rule": "web"})
        self.assertIn("sysctl -w net.ipv4.ip_forward=1", error.message)

    def test_probe_host_reads_this_process(self) -> None:
        """The host probe sees this process's capability and namespace's sysctl."""
        found = probe_host()
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            self.assertEqual(found.ipv4_forwarding, f.read().strip() == "1")
        if os.geteuid() == 0:
            self.assertTrue(found.cap_net_admin)
