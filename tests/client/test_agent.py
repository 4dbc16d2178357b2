"""
The edge agent applies pushed rules to a Forwarder on a memory reactor:
real bind outcomes, replacement, removal, reconciliation after a replay.
"""

from __future__ import annotations

import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from portunus.client.agent import ACTIVATED, FAILED, REMOVED, EdgeAgent
from portunus.dataplane import Forwarder
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.rulejson import rule_to_dict
from tests._net import LOOPBACK, free_port, free_port_range


def make_rule(rule_id: int, port: int, ports: int = 1, target: str = "10.0.0.5") -> Rule:
    return Rule(
        id=rule_id,
        name=f"rule-{rule_id}",
        protocol=Protocol.TCP,
        listen=PortRange(port, port + ports - 1),
        targets=(Target(target, PortRange(9000, 9000 + ports - 1)),),
        listen_addresses=(LOOPBACK,),
    )


class EdgeAgentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.forwarder = Forwarder(self.reactor)
        self.agent = EdgeAgent(self.forwarder, drain_timeout=1.0)
        self.agent.begin_session()

    def tearDown(self) -> None:
        self.agent.stop()
        self.reactor.advance(2)

    def test_push_binds_and_activates(self) -> None:
        """A pushed rule is bound and served; the answer is activated."""
        rule = make_rule(1, free_port())
        self.assertEqual(self.agent.push(rule_to_dict(rule)), (ACTIVATED, None))
        self.assertEqual(self.forwarder.rules, (rule,))
        self.assertEqual(len(self.reactor.adoptedPorts), 1)

    def test_push_same_rule_again_is_idempotent(self) -> None:
        """A replay of an installed, unchanged rule does not rebind."""
        rule = make_rule(1, free_port())
        self.agent.push(rule_to_dict(rule))
        self.assertEqual(self.agent.push(rule_to_dict(rule)), (ACTIVATED, None))
        self.assertEqual(len(self.reactor.adoptedPorts), 1)

    def test_changed_rule_replaces_the_old_one(self) -> None:
        """A push of a known id with a new spec replaces the installed rule."""
        port = free_port()
        self.agent.push(rule_to_dict(make_rule(1, port)))
        changed = make_rule(1, port, target="10.0.0.6")
        self.assertEqual(self.agent.push(rule_to_dict(changed)), (ACTIVATED, None))
        self.assertEqual(self.forwarder.rules, (changed,))

    def test_port_in_use_is_the_real_bind_outcome(self) -> None:
        """A port held by another socket answers failed with port_in_use."""
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind((LOOPBACK, 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        outcome = self.agent.push(rule_to_dict(make_rule(1, port)))
        self.assertEqual(outcome, (FAILED, "port_in_use"))
        self.assertEqual(self.forwarder.rules, ())
        self.assertEqual(self.agent.rules, {})

    def test_range_failure_names_the_port(self) -> None:
        """For a range rule the reason carries the port, as Portunus reports it."""
        start = free_port_range(3)
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind((LOOPBACK, start + 1))
        blocker.listen(1)
        outcome = self.agent.push(rule_to_dict(make_rule(1, start, ports=3)))
        self.assertEqual(outcome, (FAILED, f"port_in_use:{start + 1}"))

    def test_unreadable_rule_fails_without_binding(self) -> None:
        self.assertEqual(self.agent.push({"id": 1}), (FAILED, "rule_unreadable"))
        self.assertEqual(self.reactor.adoptedPorts, [])

    def test_remove_stops_the_rule(self) -> None:
        rule = make_rule(1, free_port())
        self.agent.push(rule_to_dict(rule))
        self.assertEqual(self.agent.remove(1), REMOVED)
        self.assertEqual(self.forwarder.rules, ())
        # Unknown ids are removed already: the answer is the same.
        self.assertEqual(self.agent.remove(99), REMOVED)

    def test_replay_done_removes_rules_the_server_no_longer_has(self) -> None:
        """After a reconnect, rules not replayed are dropped; replayed ones stay."""
        kept, dropped = make_rule(1, free_port()), make_rule(2, free_port())
        self.agent.push(rule_to_dict(kept))
        self.agent.push(rule_to_dict(dropped))
        self.agent.begin_session()
        self.agent.push(rule_to_dict(kept))
        self.assertEqual(self.agent.replay_done(), [2])
        self.assertEqual(self.forwarder.rules, (kept,))

    def test_stop_all_stops_forwarding(self) -> None:
        self.agent.push(rule_to_dict(make_rule(1, free_port())))
        self.agent.stop_all("token_revoked")
        self.assertEqual(self.forwarder.rules, ())

    def test_stats_entries_carry_rule_ids_and_ports_for_ranges(self) -> None:
        single, ranged = make_rule(1, free_port()), make_rule(2, free_port_range(2), ports=2)
        self.agent.push(rule_to_dict(single))
        self.agent.push(rule_to_dict(ranged))
        entries = {e["rule_id"]: e for e in self.agent.stats_entries()}
        self.assertEqual(set(entries), {1, 2})
        self.assertNotIn("ports", entries[1])
        self.assertEqual(sorted(entries[2]["ports"]), sorted(str(p) for p in ranged.listen))
        self.assertEqual(entries[1]["bytes_in"], 0)

    def test_stats_entries_carry_target_health_for_multi_target_rules(self) -> None:
        """
        A rule with several targets reports each one's health and counters,
        in config order, with the health the selector keeps; a single-target
        rule reports none (its rule counters are the target's).
        """
        single = make_rule(1, free_port())
        multi = Rule(
            id=2,
            name="multi",
            protocol=Protocol.TCP,
            listen=PortRange.single(free_port()),
            targets=(
                Target("10.0.0.5", PortRange.single(9000), priority=1),
                Target("10.0.0.6", PortRange.single(9001), priority=2),
            ),
            listen_addresses=(LOOPBACK,),
        )
        self.agent.push(rule_to_dict(single))
        self.agent.push(rule_to_dict(multi))
        self.reactor.advance(100)
        self.forwarder.runtime_for(2).selector.record_failure(multi.targets[1])
        entries = {e["rule_id"]: e for e in self.agent.stats_entries()}
        self.assertNotIn("per_target", entries[1])
        rows = entries[2]["per_target"]
        self.assertEqual([r["target"] for r in rows], ["10.0.0.5:9000", "10.0.0.6:9001"])
        self.assertEqual([r["priority"] for r in rows], [1, 2])
        self.assertEqual(rows[1]["consecutive_failures"], 1)
        self.assertEqual(rows[1]["last_failure_at"], 100)
        self.assertIsNone(rows[0]["last_failure_at"])

    def test_sni_conflict_at_activation_is_a_failed_push(self) -> None:
        """
        Two rules routing the same SNI name on one port: the second push is
        answered failed with the conflict's code, the first keeps serving.
        """
        port = free_port()

        def sni_rule(rule_id: int) -> Rule:
            return Rule(
                id=rule_id,
                name=f"sni-{rule_id}",
                protocol=Protocol.TCP,
                listen=PortRange.single(port),
                targets=(Target("10.0.0.5", PortRange.single(443)),),
                listen_addresses=(LOOPBACK,),
                sni_pattern="app.example.com",
            )

        self.assertEqual(self.agent.push(rule_to_dict(sni_rule(1))), (ACTIVATED, None))
        self.assertEqual(
            self.agent.push(rule_to_dict(sni_rule(2))), (FAILED, "conflict.sni_route_duplicate")
        )
        self.assertEqual([r.id for r in self.forwarder.rules], [1])
        self.assertEqual(len(self.reactor.adoptedPorts), 1)
