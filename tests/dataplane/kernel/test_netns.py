"""
Kernel mode for real: nftables in an edge namespace between a client and a
target namespace (tests/_netns.py), traffic through DNAT and source NAT.

Needs root, iproute2, nftables and conntrack.  Outside CI a missing piece skips these
tests with the reason; under CI=true it fails them, since CI installs
everything they need (.ci/run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from portunus.dataplane.kernel import ConntrackReader, KernelForwarder, NftRunner
from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, Rule, Target
from tests._netns import (
    EDGE_V4,
    EDGE_V6,
    TARGET_V4,
    TARGET_V6,
    Topology,
    kernel_availability,
    missing,
)
from tests.dataplane.kernel._rules import plain

PEER = str(Path(__file__).with_name("_peer.py"))
#: IPv4 + UDP headers: what nftables counts on top of each datagram's payload.
UDP4_OVERHEAD = 28


class NamespaceTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        why = missing("nft", "conntrack")
        if why is not None:
            if os.environ.get("CI") == "true":
                self.fail(f"kernel-mode namespace tests must run in CI: {why}")
            raise SkipTest(why)
        self.topology = Topology()
        self.topology.create()
        self.addCleanup(self.topology.destroy)
        self.servers: list[subprocess.Popen[bytes]] = []
        self.addCleanup(self._stop_servers)

    def _stop_servers(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait()

    def kernel(self, instance: str = "test") -> KernelForwarder:
        edge = self.topology.edge
        return KernelForwarder(
            NftRunner(reactor, self.topology.exec(edge, ["nft"])),
            kernel_availability(edge),
            instance=instance,
            conntrack=ConntrackReader(reactor, self.topology.exec(edge, ["conntrack"])),
        )

    def nft(self, *args: str) -> str:
        return self.topology.run(self.topology.exec(self.topology.edge, ["nft", *args]))

    def serve(self, proto: str, address: str, first: int, last: int | None = None) -> None:
        argv = [sys.executable, PEER, "serve", proto, address, str(first), str(last or first), "60"]
        server = subprocess.Popen(
            self.topology.exec(self.topology.target, argv), stdout=subprocess.PIPE
        )
        self.servers.append(server)
        assert server.stdout is not None
        self.assertEqual(server.stdout.readline(), b"ready\n")

    async def send(self, proto: str, host: str, port: int, size: int, count: int = 1) -> Any:
        argv = [PEER, "send", proto, host, str(port), str(size), str(count)]
        argv = self.topology.exec(self.topology.client, [sys.executable, *argv])
        out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env=dict(os.environ))
        if code != 0:
            return {"error": err.decode(errors="replace").strip().splitlines()[-1:]}
        return json.loads(out)

    def run_async(self, check: Any) -> Deferred[None]:
        return ensureDeferred(check())

    async def started(self, rules: Sequence[Rule] = (), instance: str = "test") -> KernelForwarder:
        kernel = self.kernel(instance)
        await kernel.start()
        self.addCleanup(kernel.close)
        for rule in rules:
            await kernel.install(rule)
        return kernel

    # -- the tests --------------------------------------------------------------

    def test_tcp_through_dnat_and_snat(self) -> None:
        """TCP to the edge reaches the target from the edge's address; counters see it."""

        async def check() -> None:
            rule = plain(TARGET_V4, listen=PortRange.single(8000))
            kernel = await self.started([rule])
            self.serve("tcp", TARGET_V4, 9000)
            result = await self.send("tcp", EDGE_V4, 8000, 100_000)
            self.assertEqual(
                result, {"peer": "PEER 198.18.1.2 9000", "echoed": 100_000, "intact": True}
            )
            counters = (await kernel.read_counters())[rule.id]
            self.assertEqual(counters.connections, 1)
            self.assertGreaterEqual(counters.bytes_in, 100_000)
            self.assertGreaterEqual(counters.bytes_out, 100_000 + len("PEER 198.18.1.2 9000\n"))
            self.assertLess(counters.bytes_in, 100_000 + 100 * counters.packets_in)

        return self.run_async(check)

    def test_udp_counters_exact(self) -> None:
        """UDP datagrams: one flow, still open; packets and bytes exact, headers included."""

        async def check() -> None:
            rule = plain(TARGET_V4, protocol=Protocol.UDP)
            kernel = await self.started([rule])
            self.serve("udp", TARGET_V4, 9000)
            result = await self.send("udp", EDGE_V4, 8000, 1000, count=5)
            self.assertEqual(
                result, {"peer": "PEER 198.18.1.2 9000", "echoed": 5000, "intact": True}
            )
            counters = (await kernel.read_counters())[rule.id]
            self.assertEqual(
                (
                    counters.packets_in,
                    counters.bytes_in,
                    counters.packets_out,
                    counters.connections,
                ),
                (5, 5 * (1000 + UDP4_OVERHEAD), 5, 1),
            )
            self.assertEqual(counters.active, 1)  # the flow lives on in conntrack
            self.assertEqual(counters.bytes_out, 5 * (1064 + UDP4_OVERHEAD))

        return self.run_async(check)

    def test_port_range_keeps_offsets(self) -> None:
        """Listen port 8000+i reaches target port 9000+i."""

        async def check() -> None:
            rule = plain(
                TARGET_V4,
                listen=PortRange(8000, 8002),
                targets=(Target(TARGET_V4, PortRange(9000, 9002)),),
            )
            await self.started([rule])
            self.serve("tcp", TARGET_V4, 9000, 9002)
            for offset in (0, 2):
                result = await self.send("tcp", EDGE_V4, 8000 + offset, 10)
                self.assertEqual(result["peer"], f"PEER 198.18.1.2 {9000 + offset}")

        return self.run_async(check)

    def test_ipv6(self) -> None:
        """An IPv6 rule: the target sees the edge's IPv6 address."""

        async def check() -> None:
            rule = plain(TARGET_V6, listen=PortRange.single(8000))
            await self.started([rule])
            self.serve("tcp", TARGET_V6, 9000)
            result = await self.send("tcp", EDGE_V6, 8000, 5000)
            self.assertEqual(
                result, {"peer": "PEER 2001:2:0:1::2 9000", "echoed": 5000, "intact": True}
            )

        return self.run_async(check)

    def test_udp_flow_cap(self) -> None:
        """Past udp_max_flows a new flow's datagrams are dropped and counted as rejects."""

        async def check() -> None:
            rule = plain(TARGET_V4, protocol=Protocol.UDP, udp_max_flows=1)
            kernel = await self.started([rule])
            self.serve("udp", TARGET_V4, 9000)
            first = await self.send("udp", EDGE_V4, 8000, 100)
            second = await self.send("udp", EDGE_V4, 8000, 100)  # another source port
            self.assertEqual((first["echoed"], second["echoed"]), (100, 0))
            counters = (await kernel.read_counters())[rule.id]
            self.assertEqual((counters.connections, counters.rejects), (1, 1))

        return self.run_async(check)

    def test_removal_stops_new_connections(self) -> None:
        """After remove() the port no longer forwards; the other rule still does."""

        async def check() -> None:
            keep = plain(TARGET_V4, name="keep", listen=PortRange.single(8001))
            gone = plain(TARGET_V4, name="gone")
            kernel = await self.started([keep, gone])
            self.serve("tcp", TARGET_V4, 9000)
            await kernel.remove(gone.id)
            self.assertIn("error", await self.send("tcp", EDGE_V4, 8000, 10))
            self.assertEqual((await self.send("tcp", EDGE_V4, 8001, 10))["echoed"], 10)

        return self.run_async(check)

    def test_stale_table_of_a_killed_instance(self) -> None:
        """A new instance removes the table a killed one left, and its rules stop forwarding."""

        async def check() -> None:
            old = self.kernel("old")
            await old.start()
            await old.install(plain(TARGET_V4))
            self.serve("tcp", TARGET_V4, 9000)
            self.assertEqual((await self.send("tcp", EDGE_V4, 8000, 10))["echoed"], 10)
            # kill -9: old never closes.  A new instance starts:
            new = await self.started(instance="new")
            self.assertIn("error", await self.send("tcp", EDGE_V4, 8000, 10))
            listing = json.loads(self.nft("-j", "list", "counters", "table", "inet", "portunus"))
            names = {
                o["counter"]["name"]: o["counter"] for o in listing["nftables"] if "counter" in o
            }
            self.assertEqual(set(names), {"portunus_owner"})
            self.assertIn("instance=new", names["portunus_owner"]["comment"])
            self.assertEqual(new.rules, ())

        return self.run_async(check)

    def test_other_tables_untouched_and_close_removes_ours(self) -> None:
        """Another table survives start, changes and close unchanged; close deletes ours."""

        async def check() -> None:
            self.nft("add", "table", "inet", "someone_else")
            self.nft(
                "add",
                "chain",
                "inet",
                "someone_else",
                "input",
                "{ type filter hook input priority 0; }",
            )
            self.nft("add", "rule", "inet", "someone_else", "input", "tcp dport 22 counter accept")
            before = self.nft("list", "table", "inet", "someone_else")
            kernel = self.kernel()
            await kernel.start()
            rule = plain(TARGET_V4)
            await kernel.install(rule)
            await kernel.reconcile()
            await kernel.remove(rule.id)
            await kernel.close()
            self.assertEqual(self.nft("list", "table", "inet", "someone_else"), before)
            self.assertNotIn("portunus", self.nft("list", "tables"))

        return self.run_async(check)

    def test_foreign_table_of_our_name(self) -> None:
        """A table named portunus that is not ours is refused and left alone."""

        async def check() -> None:
            self.nft("add", "table", "inet", "portunus")
            with self.assertRaises(PortunusError) as raised:
                await self.kernel().start()
            self.assertEqual(raised.exception.fields["reason"], "table_not_owned")
            self.assertIn("table inet portunus", self.nft("list", "tables"))

        return self.run_async(check)

    def test_forwarding_off(self) -> None:
        """With ip_forward off in the edge, a rule is refused naming the sysctl."""

        async def check() -> None:
            self.topology.sysctl(self.topology.edge, net__ipv4__ip_forward=0)
            kernel = await self.started()
            with self.assertRaises(PortunusError) as raised:
                kernel.install(plain(TARGET_V4))
            self.assertEqual(raised.exception.fields["reason"], "ip_forward_off")

        return self.run_async(check)
