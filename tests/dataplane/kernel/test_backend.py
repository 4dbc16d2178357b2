"""The kernel forwarder against an in-memory nft: changes, reconciliation, counters."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.kernel import (
    Availability,
    Flow,
    KernelCounters,
    KernelForwarder,
    NftError,
    Ruleset,
)
from portunus.dataplane.stats import RuleStats
from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, RateLimit
from tests.dataplane.kernel._fakenft import FakeNft
from tests.dataplane.kernel._rules import plain


class FakeConntrack:
    """A conntrack reader answering with set flows, or failing."""

    def __init__(self) -> None:
        self.flows: list[Flow] = []
        self.error: Exception | None = None
        self.versions: list[set[int]] = []

    def read(self, versions: Iterable[int]) -> Deferred[list[Flow]]:
        self.versions.append(set(versions))
        return fail(self.error) if self.error is not None else succeed(list(self.flows))


READY = Availability(cap_net_admin=True, ipv4_forwarding=True, ipv6_forwarding=True, nft="nft")
COUNTERS = ("in", "out", "conns", "rejects")


def objects_of(nft: FakeNft, rule_id: int) -> set[str]:
    table = nft.table()
    names = set(table.chains) | set(table.counters) | set(table.quotas)
    return {n for n in names if n == f"r{rule_id}" or n.startswith(f"r{rule_id}_")}


def mentions(nft: FakeNft, chain: str, rule_id: int) -> bool:
    """Does any entry of C{chain} name rule C{rule_id} (in its jump or its comment)?"""
    return any(str(rule_id) in str(r) for r in nft.table().rules[chain])


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.nft = FakeNft()
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def kernel(self, availability: Availability = READY, instance: str = "me") -> KernelForwarder:
        return KernelForwarder(self.nft, availability, instance=instance, pid=42)

    def started(self, **kw: Any) -> KernelForwarder:
        kernel = self.kernel(**kw)
        self.successResultOf(kernel.start())
        return kernel

    def logged(self, name: str) -> list[LogEvent]:
        return [e for e in self.events if e.get("event") == name]

    def refused(self, d: Any, code: str, reason: str) -> PortunusError:
        error = self.failureResultOf(d, PortunusError).value
        self.assertEqual((error.code, error.fields.get("reason")), (code, reason))
        return error


class StartTests(_Base):
    def test_start_creates_the_marked_table(self) -> None:
        """At start our table appears with the instance's marker and base chains."""
        kernel = self.kernel()
        result = self.successResultOf(kernel.start())
        self.assertTrue(result.recreated)
        self.assertIsNone(result.replaced_marker)
        table = self.nft.table()
        self.assertEqual(
            table.counters["portunus_owner"]["comment"], "portunus-owner instance=me pid=42"
        )
        self.assertEqual(set(table.chains), {"prerouting", "postrouting", "forward"})
        self.assertEqual(len(self.logged("kernel.table_created")), 1)

    def test_stale_table_of_a_killed_instance_is_replaced(self) -> None:
        """A table left by an instance that died is removed whole, its rules with it."""
        old = self.started(instance="old")
        old_rule = plain(name="old")
        self.successResultOf(old.install(old_rule))
        # kill -9: nothing removes the table; a new instance starts.
        new = self.kernel(instance="new")
        result = self.successResultOf(new.start())
        self.assertEqual(result.replaced_marker, "portunus-owner instance=old pid=42")
        self.assertEqual(objects_of(self.nft, old_rule.id), set())
        self.assertEqual(
            self.nft.table().counters["portunus_owner"]["comment"],
            "portunus-owner instance=new pid=42",
        )
        self.assertFalse(
            any(self.nft.rules_of(c) for c in ("prerouting", "postrouting", "forward"))
        )
        (event,) = self.logged("kernel.stale_table_removed")
        self.assertEqual(event["previous"], "portunus-owner instance=old pid=42")
        # Replacing is one batch: the table is never seen missing.
        self.assertEqual(
            self.nft.batches[-1][0], {"delete": {"table": {"family": "inet", "name": "portunus"}}}
        )

    def test_table_of_the_same_name_not_ours_is_left_alone(self) -> None:
        """A 'portunus' table without our marker is someone else's: refused, untouched."""
        self.successResultOf(
            self.nft.run(
                [
                    {"add": {"table": {"family": "inet", "name": "portunus"}}},
                    {"add": {"counter": {"family": "inet", "table": "portunus", "name": "theirs"}}},
                ]
            )
        )
        before = copy.deepcopy(self.nft.tables)
        self.refused(self.kernel().start(), "kernel_mode_unavailable", "table_not_owned")
        self.assertEqual(self.nft.tables, before)

    def test_other_tables_are_untouched(self) -> None:
        """Start, changes and close leave every other table exactly as it was."""
        self.successResultOf(
            self.nft.run(
                [
                    {"add": {"table": {"family": "ip", "name": "filter"}}},
                    {"add": {"chain": {"family": "ip", "table": "filter", "name": "input"}}},
                    {"add": {"table": {"family": "inet", "name": "portunus2"}}},
                ]
            )
        )
        theirs = {k: copy.deepcopy(v) for k, v in self.nft.tables.items()}
        kernel = self.started()
        rule = plain()
        self.successResultOf(kernel.install(rule))
        self.successResultOf(kernel.reconcile())
        self.successResultOf(kernel.remove(rule.id))
        self.successResultOf(kernel.close())
        self.assertEqual(self.nft.tables, theirs)

    def test_missing_capability_refused_before_nft_runs(self) -> None:
        """Without CAP_NET_ADMIN start refuses at once, naming the reason."""
        kernel = self.kernel(Availability(False, True, True, "nft"))
        with self.assertRaises(PortunusError) as raised:
            kernel.start()
        self.assertEqual(raised.exception.fields["reason"], "no_cap_net_admin")
        self.assertEqual(self.nft.batches, [])

    def test_nft_failure_at_start(self) -> None:
        """nft refusing at start fails with nft_failed and its message."""
        self.nft.refuse_next = "Error: Could not process rule: Operation not supported"
        error = self.refused(self.kernel().start(), "kernel_mode_unavailable", "nft_failed")
        self.assertIn("Operation not supported", error.message)

    def test_close_deletes_the_table(self) -> None:
        """close() (SIGTERM) removes the table with every rule; twice is harmless."""
        kernel = self.started()
        self.successResultOf(kernel.install(plain()))
        self.successResultOf(kernel.close())
        self.assertEqual(self.nft.tables, {})
        self.assertEqual(kernel.rules, ())
        self.successResultOf(kernel.close())
        self.assertEqual(len(self.logged("kernel.table_removed")), 1)

    def test_close_when_the_table_is_gone(self) -> None:
        """Closing after someone deleted the table succeeds: the goal is reached."""
        kernel = self.started()
        self.successResultOf(self.nft.run(Ruleset().delete()))
        self.successResultOf(kernel.close())
        self.assertEqual(len(self.logged("kernel.table_removed")), 1)

    def test_changes_need_start(self) -> None:
        """Installing before start() is a programming error."""
        self.assertRaises(RuntimeError, self.kernel().install, plain())


class RuleTests(_Base):
    def setUp(self) -> None:
        super().setUp()
        self.forwarder = self.started()

    def test_install(self) -> None:
        """A rule gets its chain and counters and one entry in each base chain."""
        rule = plain()
        self.successResultOf(self.forwarder.install(rule))
        self.assertEqual(
            objects_of(self.nft, rule.id), {f"r{rule.id}"} | {f"r{rule.id}_{s}" for s in COUNTERS}
        )
        for chain in ("prerouting", "postrouting", "forward"):
            self.assertEqual(len(self.nft.rules_of(chain)), 1)
        self.assertEqual(self.forwarder.rules, (rule,))
        self.assertIn(rule.id, self.forwarder)

    def test_install_twice(self) -> None:
        """The same rule id twice: rule_exists, and nothing is run."""
        self.successResultOf(self.forwarder.install(plain()))
        runs = len(self.nft.batches)
        with self.assertRaises(PortunusError) as raised:
            self.forwarder.install(plain())
        self.assertEqual(raised.exception.code, "rule_exists")
        self.assertEqual(len(self.nft.batches), runs)

    def test_ineligible_refused(self) -> None:
        """A rule that needs the relay: kernel_mode_unsupported with the reason, nothing run."""
        runs = len(self.nft.batches)
        with self.assertRaises(PortunusError) as raised:
            self.forwarder.install(plain("127.0.0.1"))
        self.assertEqual(
            (raised.exception.code, raised.exception.fields["reason"]),
            ("kernel_mode_unsupported", "loopback_target"),
        )
        self.assertEqual(len(self.nft.batches), runs)

    def test_forwarding_off_for_the_targets_family(self) -> None:
        """IPv6 forwarding off refuses IPv6 rules only."""
        kernel = self.started(availability=Availability(True, True, False, "nft"), instance="b")
        self.successResultOf(kernel.install(plain()))
        with self.assertRaises(PortunusError) as raised:
            kernel.install(plain("2001:2:0:1::1", name="six"))
        self.assertEqual(raised.exception.fields, {"reason": "ipv6_forwarding_off", "rule": "six"})

    def test_refused_batch_changes_nothing(self) -> None:
        """nft refusing an install: the Deferred fails; the kernel and our view are unchanged."""
        self.successResultOf(self.forwarder.install(plain(name="a")))
        before = copy.deepcopy(self.nft.tables)
        self.nft.refuse_next = "Error: No such file or directory"
        self.refused(
            self.forwarder.install(plain(name="b", listen=PortRange.single(8001))),
            "kernel_mode_unavailable",
            "nft_failed",
        )
        self.assertEqual(self.nft.tables, before)
        self.assertEqual([r.name for r in self.forwarder.rules], ["a"])

    def test_replace_keeps_counters_and_rewrites_limits(self) -> None:
        """A new version of a rule keeps its counters; its chain holds the new limits."""
        rule = plain()
        self.successResultOf(self.forwarder.install(rule))
        self.nft.count(f"r{rule.id}_in", 3, 300)
        limited = plain(rate_limit=RateLimit(concurrent_connections=9))
        self.successResultOf(self.forwarder.replace(limited))
        self.assertEqual(self.nft.table().counters[f"r{rule.id}_in"]["bytes"], 300)
        self.assertIn("'val': 9", str(self.nft.rules_of(f"r{rule.id}")))
        self.assertEqual(self.forwarder.rules, (limited,))

    def test_replace_changing_the_quota(self) -> None:
        """Dropping a rule's quota deletes the quota object."""
        rule = plain()
        self.successResultOf(self.forwarder.install(rule, quota_bytes=1000))
        self.assertIn(f"r{rule.id}_quota", self.nft.table().quotas)
        self.successResultOf(self.forwarder.replace(rule))
        self.assertEqual(self.nft.table().quotas, {})

    def test_replace_unknown(self) -> None:
        """Replacing a rule that is not installed: rule_not_found."""
        self.assertRaises(PortunusError, self.forwarder.replace, plain())

    def test_remove(self) -> None:
        """Removal deletes the rule's chain and objects and its base entries; others stay."""
        keep, gone = plain(name="keep"), plain(name="gone", listen=PortRange.single(8001))
        self.successResultOf(self.forwarder.install(keep, quota_bytes=10))
        self.successResultOf(self.forwarder.install(gone, quota_bytes=10))
        self.successResultOf(self.forwarder.remove(gone.id))
        self.assertEqual(objects_of(self.nft, gone.id), set())
        self.assertNotEqual(objects_of(self.nft, keep.id), set())
        for chain in ("prerouting", "postrouting", "forward"):
            self.assertFalse(mentions(self.nft, chain, gone.id))
            self.assertTrue(mentions(self.nft, chain, keep.id))
            self.assertEqual(len(self.nft.rules_of(chain)), 1)
        self.assertEqual(self.forwarder.rules, (keep,))
        with self.assertRaises(PortunusError) as raised:
            self.forwarder.remove(gone.id)
        self.assertEqual(raised.exception.code, "rule_not_found")

    def test_changes_run_one_at_a_time_in_order(self) -> None:
        """Changes asked for together reach nft one by one, in the order asked."""
        a, b = plain(name="a"), plain(name="b", listen=PortRange.single(8001))
        self.nft.hold = True
        first = self.forwarder.install(a)
        second = self.forwarder.install(b)
        third = self.forwarder.remove(a.id)
        self.assertEqual(len(self.nft.held), 1)  # the others wait their turn
        while self.nft.held:
            self.nft.release()
        for d in (first, second, third):
            self.successResultOf(d)
        self.nft.hold = False
        self.assertEqual(self.forwarder.rules, (b,))
        self.assertEqual(objects_of(self.nft, a.id), set())

    def test_remove_queued_behind_its_install(self) -> None:
        """A removal asked for while the install runs undoes it once it lands."""
        a = plain(name="a")
        self.nft.hold = True
        install = self.forwarder.install(a)
        remove = self.forwarder.remove(a.id)
        while self.nft.held:
            self.nft.release()
        self.successResultOf(install)
        self.successResultOf(remove)
        self.assertEqual(self.forwarder.rules, ())
        self.assertEqual(objects_of(self.nft, a.id), set())

    def test_remove_queued_behind_a_failed_install(self) -> None:
        """A removal queued behind an install that fails has nothing left to do."""
        a = plain(name="a")
        self.nft.hold = True
        install = self.forwarder.install(a)
        remove = self.forwarder.remove(a.id)
        self.nft.refuse_next = "Error: boom"
        self.nft.release()
        self.failureResultOf(install, PortunusError)
        self.successResultOf(remove)
        self.assertEqual(self.nft.held, [])
        self.assertEqual(self.forwarder.rules, ())
        self.nft.hold = False
        self.successResultOf(self.forwarder.install(a))  # its id is free again


class ReconcileTests(_Base):
    def setUp(self) -> None:
        super().setUp()
        self.forwarder = self.started()
        self.rule = plain(rate_limit=RateLimit(concurrent_connections=3))
        self.successResultOf(self.forwarder.install(self.rule))

    def test_nothing_to_do(self) -> None:
        """An intact table: nothing removed or restored, the rule's chain not rewritten."""
        result = self.successResultOf(self.forwarder.reconcile())
        self.assertEqual((result.removed, result.restored, result.recreated), ((), (), False))
        self.assertNotIn(
            {
                "flush": {
                    "chain": {"family": "inet", "table": "portunus", "name": f"r{self.rule.id}"}
                }
            },
            self.nft.batches[-1],
        )

    def test_stale_objects_removed(self) -> None:
        """Chains and objects of rules this forwarder does not hold are deleted."""
        stale = 123456789
        ref = {"family": "inet", "table": "portunus"}
        self.successResultOf(
            self.nft.run(
                [
                    {"add": {"chain": {**ref, "name": f"r{stale}"}}},
                    {"add": {"counter": {**ref, "name": f"r{stale}_in"}}},
                    {"add": {"quota": {**ref, "name": f"r{stale}_quota", "bytes": 5}}},
                    {
                        "add": {
                            "rule": {
                                **ref,
                                "chain": f"r{stale}",
                                "expr": [{"counter": f"r{stale}_in"}],
                            }
                        }
                    },
                    {
                        "add": {
                            "rule": {
                                **ref,
                                "chain": "forward",
                                "expr": [{"jump": {"target": f"r{stale}"}}],
                            }
                        }
                    },
                ]
            )
        )
        result = self.successResultOf(self.forwarder.reconcile())
        self.assertEqual(result.removed, (stale,))
        self.assertEqual(objects_of(self.nft, stale), set())
        self.assertEqual(len(self.nft.rules_of("forward")), 1)
        self.assertEqual(len(self.logged("kernel.table_reconciled")), 1)

    def test_missing_rule_restored(self) -> None:
        """A rule whose chain went missing gets it back."""
        ref = {"family": "inet", "table": "portunus"}
        chain = {**ref, "name": f"r{self.rule.id}"}
        self.successResultOf(
            self.nft.run(
                [
                    {"flush": {"chain": {**ref, "name": "forward"}}},
                    {"flush": {"chain": chain}},
                    {"delete": {"chain": chain}},
                ]
            )
        )
        result = self.successResultOf(self.forwarder.reconcile())
        self.assertEqual(result.restored, (self.rule.id,))
        self.assertIn("'val': 3", str(self.nft.rules_of(f"r{self.rule.id}")))
        self.assertEqual(len(self.nft.rules_of("forward")), 1)

    def test_missing_table_recreated(self) -> None:
        """A table deleted behind our back is created again, with every rule."""
        self.successResultOf(
            self.nft.run([{"delete": {"table": {"family": "inet", "name": "portunus"}}}])
        )
        result = self.successResultOf(self.forwarder.reconcile())
        self.assertEqual((result.recreated, result.restored), (True, (self.rule.id,)))
        self.assertNotEqual(objects_of(self.nft, self.rule.id), set())

    def test_lost_marker(self) -> None:
        """A table of our name that lost its marker is no longer ours: refused."""
        self.successResultOf(
            self.nft.run(
                [
                    {
                        "delete": {
                            "counter": {
                                "family": "inet",
                                "table": "portunus",
                                "name": "portunus_owner",
                            }
                        }
                    }
                ]
            )
        )
        self.refused(self.forwarder.reconcile(), "kernel_mode_unavailable", "table_not_owned")


class CounterTests(_Base):
    def test_read_counters(self) -> None:
        """Counters come back per rule: bytes and packets both ways, connections, rejects, quota."""
        forwarder = self.started()
        tcp, udp = plain(name="t"), plain(name="u", protocol=Protocol.UDP)
        self.successResultOf(forwarder.install(tcp))
        self.successResultOf(forwarder.install(udp, quota_bytes=10**6))
        self.nft.count(f"r{tcp.id}_in", 10, 1000)
        self.nft.count(f"r{tcp.id}_out", 8, 5000)
        self.nft.count(f"r{tcp.id}_conns", 2, 120)
        self.nft.count(f"r{tcp.id}_rejects", 1, 60)
        self.nft.table().quotas[f"r{udp.id}_quota"]["used"] = 777
        counters = self.successResultOf(forwarder.read_counters())
        self.assertEqual(
            counters[tcp.id],
            KernelCounters(
                bytes_in=1000,
                packets_in=10,
                bytes_out=5000,
                packets_out=8,
                connections=2,
                rejects=1,
            ),
        )
        self.assertEqual(counters[udp.id], KernelCounters(quota_used=777))
        self.assertEqual(forwarder.counters, counters)

    def test_other_tables_quotas_ignored(self) -> None:
        """nft 1.0.6 lists every table's quotas; only ours are read."""
        forwarder = self.started()
        rule = plain()
        self.successResultOf(forwarder.install(rule, quota_bytes=10))
        ref = {"family": "inet", "table": "other"}
        self.successResultOf(
            self.nft.run(
                [
                    {"add": {"table": {"family": "inet", "name": "other"}}},
                    {"add": {"quota": {**ref, "name": f"r{rule.id}_quota", "bytes": 5}}},
                ]
            )
        )
        self.nft.tables[("inet", "other")].quotas[f"r{rule.id}_quota"]["used"] = 99
        self.assertEqual(self.successResultOf(forwarder.read_counters())[rule.id].quota_used, 0)

    def test_before_start(self) -> None:
        """Nothing is read before start."""
        self.assertEqual(self.successResultOf(self.kernel().read_counters()), {})

    def test_open_connections_from_conntrack(self) -> None:
        """With a conntrack reader, each rule's open connections come with its counters."""
        reader = FakeConntrack()
        forwarder = KernelForwarder(self.nft, READY, instance="c", conntrack=reader)
        self.successResultOf(forwarder.start())
        rule = plain()
        self.successResultOf(forwarder.install(rule))
        reader.flows = [Flow("tcp", "ESTABLISHED", "198.18.0.2", 8000, "198.18.1.1", 9000)] * 2
        self.assertEqual(self.successResultOf(forwarder.read_counters())[rule.id].active, 2)
        self.assertEqual(reader.versions, [{4}])

    def test_conntrack_failure_leaves_counters(self) -> None:
        """A failing conntrack leaves active unknown and is logged once per outage."""
        reader = FakeConntrack()
        forwarder = KernelForwarder(self.nft, READY, instance="c", conntrack=reader)
        self.successResultOf(forwarder.start())
        rule = plain()
        self.successResultOf(forwarder.install(rule))
        reader.error = NftError("conntrack is not installed (not found on PATH)")
        for _ in range(2):
            counters = self.successResultOf(forwarder.read_counters())
            self.assertIsNone(counters[rule.id].active)
        (event,) = self.logged("kernel.conntrack_failed")
        self.assertIn("not installed", event["error"])
        reader.error = None
        self.assertEqual(self.successResultOf(forwarder.read_counters())[rule.id].active, 0)

    def test_apply_to_rule_stats(self) -> None:
        """The relay's stats get the kernel's figures; UDP packets are datagrams."""
        counters = KernelCounters(
            bytes_in=1, packets_in=2, bytes_out=3, packets_out=4, connections=5, rejects=6
        )
        tcp = counters.apply(RuleStats(), Protocol.TCP)
        self.assertEqual(
            (
                tcp.bytes_in,
                tcp.bytes_out,
                tcp.total_connections,
                tcp.rate_limit_rejects,
                tcp.datagrams_in,
            ),
            (1, 3, 5, 6, 0),
        )
        udp = counters.apply(RuleStats(), Protocol.UDP)
        self.assertEqual((udp.datagrams_in, udp.datagrams_out), (2, 4))
        self.assertEqual(tcp.active_connections, 0)  # unknown stays as the relay left it
        opened = KernelCounters(active=3)
        self.assertEqual(opened.apply(RuleStats(), Protocol.TCP).active_connections, 3)
        self.assertEqual(opened.apply(RuleStats(), Protocol.UDP).active_flows, 3)
