"""
The multi-process data plane, main-process side: WorkerForwarder
binds here, hands sockets and rules to every worker, fans removals out,
sums reports, merges target health, restarts dead workers with every rule
and stops them all.  Workers are fakes on a Clock (no processes).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portunus.client.agent import ACTIVATED, FAILED, EdgeAgent
from portunus.dataplane.workers import forwarder as forwarder_module
from portunus.dataplane.workers.forwarder import WorkerForwarder
from portunus.dataplane.workers.pool import KILL_GRACE_SECS, RESTART_MAX_SECS, RESTART_MIN_SECS
from portunus.dataplane.workers.process import WorkerProcess
from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.rulejson import rule_to_dict
from tests._net import LOOPBACK, free_port, inode, port_is_free
from tests.dataplane.workers._fakes import (
    FakeLauncher,
    ended,
    link_of,
    logged,
    process_of,
    reply,
)


def make_rule(
    rule_id: int,
    port: int,
    protocol: Protocol = Protocol.TCP,
    targets: int = 1,
    sni: str | None = None,
    name: str | None = None,
) -> Rule:
    return Rule(
        id=rule_id,
        name=name or f"rule-{rule_id}",
        protocol=protocol,
        listen=PortRange.single(port),
        targets=tuple(
            Target(f"10.0.0.{5 + i}", PortRange.single(9000), priority=i) for i in range(targets)
        ),
        listen_addresses=(LOOPBACK,),
        sni_pattern=sni,
    )


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def stats_report(**counters: Any) -> dict[str, Any]:
    ports = counters.pop("ports", {})
    targets = counters.pop("targets", None)
    return {"stats": {**counters, "ports": ports}, "targets": targets}


def target_state(host: str, total: int, active: int = 0) -> dict[str, Any]:
    """One target's entry in a worker's report: healthy, with these counters."""
    return {
        "target": host,
        "health": "healthy",
        "consecutive_failures": 0,
        "last_success_at": 10.0,
        "last_failure_at": None,
        "bytes_in": total,
        "bytes_out": 0,
        "active_connections": active,
        "total_connections": total,
    }


class WorkerForwarderTestCase(SynchronousTestCase):
    count = 2

    def setUp(self) -> None:
        self.clock = Clock()
        self.launcher = FakeLauncher()
        self.forwarder = WorkerForwarder(
            self.clock, self.count, event_prefix="client", launch=self.launcher
        )
        self.forwarder.start()
        #: (worker index, key) -> inodes of the sockets handed over.
        self.handed: dict[tuple[int, int], list[int]] = {}
        self.addCleanup(self._close_everything)

    def _close_everything(self) -> None:
        for worker in list(self.launcher.launched):
            worker.link.connectionLost(Failure(ConnectionDone()))
        for rule in self.forwarder.rules:
            self.forwarder.remove(rule.id, 0)

    def worker(self, index: int) -> WorkerProcess:
        return self.forwarder.workers[index]

    def install(self, rule: Rule) -> int:
        """Bind and activate C{rule}; every worker acknowledges; return its key."""
        self.forwarder.activate(self.forwarder.bind(rule))
        key = None
        for worker in self.forwarder.workers.values():
            [add] = [m for m in link_of(worker).messages() if m["op"] == "add"]
            key = add["key"]
            fds = link_of(worker).fds[len(link_of(worker).fds) - add.get("fds", 0) :]
            self.handed[worker.index, key] = [inode(fd) for fd in fds]
            reply(worker, {"op": "added", "key": key})
        assert key is not None
        return int(key)

    def report(self, worker: WorkerProcess, rules: dict[int, dict[str, Any]]) -> None:
        reply(worker, {"op": "report", "rules": {str(k): v for k, v in rules.items()}})


class HandOverTests(WorkerForwarderTestCase):
    def test_start_launches_every_worker(self) -> None:
        """start() launches one worker per index, each with its link connected."""
        self.assertEqual(sorted(self.forwarder.workers), [0, 1])
        self.assertTrue(all(w.linked for w in self.launcher.launched))

    def test_tcp_listener_is_shared_by_every_worker(self) -> None:
        """
        A TCP rule is bound once here; every worker is handed the same
        socket (its own duplicate) with the rule as JSON.
        """
        rule = make_rule(1, free_port())
        self.forwarder.activate(self.forwarder.bind(rule))
        handed = []
        for worker in self.launcher.launched:
            transport = link_of(worker)
            [add] = transport.messages()
            self.assertEqual(add["op"], "add")
            self.assertEqual(add["rule"], rule_to_dict(rule))
            self.assertEqual(add["sockets"], [{"address": LOOPBACK, "port": rule.listen.start}])
            self.assertEqual(add["fds"], 1)
            [fd] = transport.fds
            handed.append(fd)
        self.assertNotEqual(handed[0], handed[1])
        self.assertEqual(inode(handed[0]), inode(handed[1]))
        self.assertEqual(self.forwarder.rules, (rule,))

    def test_udp_port_is_bound_once_per_worker(self) -> None:
        """A UDP rule gets one SO_REUSEPORT socket per worker, all on its port."""
        rule = make_rule(1, free_port(socket.SOCK_DGRAM), Protocol.UDP)
        self.forwarder.activate(self.forwarder.bind(rule))
        fds = [link_of(w).fds[0] for w in self.launcher.launched]
        self.assertNotEqual(inode(fds[0]), inode(fds[1]))
        for fd in fds:
            with socket.socket(fileno=os.dup(fd)) as sock:
                self.assertEqual(sock.getsockname()[1], rule.listen.start)
                self.assertEqual(sock.type, socket.SOCK_DGRAM)
                self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))

    def test_bind_error_hands_nothing_over(self) -> None:
        """A port in use fails the bind here, as in one process; no worker hears of it."""
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind((LOOPBACK, 0))
        blocker.listen(1)
        rule = make_rule(1, blocker.getsockname()[1])
        error = self.assertRaises(PortunusError, self.forwarder.bind, rule)
        self.assertEqual(error.code, "port_in_use")
        for worker in self.launcher.launched:
            self.assertEqual(link_of(worker).value(), b"")
        self.assertEqual(self.forwarder.rules, ())

    def test_installed_rule_id_is_refused(self) -> None:
        rule = make_rule(1, free_port())
        self.install(rule)
        error = self.assertRaises(PortunusError, self.forwarder.bind, rule)
        self.assertEqual(error.code, "rule_exists")

    def test_acknowledgement_closes_the_handed_over_duplicates(self) -> None:
        """
        The descriptors sent are duplicates kept open until the worker says
        it has them (Twisted sends a queued descriptor by number, later).
        """
        self.forwarder.activate(self.forwarder.bind(make_rule(1, free_port())))
        worker = self.worker(0)
        [add] = link_of(worker).messages()
        [fd] = link_of(worker).fds
        self.assertTrue(is_open(fd))
        reply(worker, {"op": "added", "key": add["key"]})
        self.assertFalse(is_open(fd))

    def test_a_lost_link_closes_the_duplicates_it_held(self) -> None:
        self.forwarder.activate(self.forwarder.bind(make_rule(1, free_port())))
        worker = self.worker(1)
        [fd] = link_of(worker).fds
        worker.link.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(is_open(fd))

    def test_failed_adoption_is_logged(self) -> None:
        """A worker that cannot serve a handed-over rule is logged by name."""
        rule = make_rule(1, free_port())
        self.forwarder.activate(self.forwarder.bind(rule))
        worker = self.worker(0)
        [add] = link_of(worker).messages()
        [fd] = link_of(worker).fds
        events = logged(self)
        reply(worker, {"op": "add_failed", "key": add["key"], "code": "bind_failed"})
        [event] = [e for e in events if e.get("event") == "client.worker_rule_failed"]
        self.assertEqual((event["rule"], event["index"]), (rule.name, 0))
        self.assertFalse(is_open(fd))


class RemoveTests(WorkerForwarderTestCase):
    def test_remove_fires_once_every_worker_drained(self) -> None:
        """
        Removal reaches every worker at once; its Deferred fires with the
        total cut when the last one has drained, and the port is free again.
        """
        rule = make_rule(1, free_port())
        key = self.install(rule)
        d = self.forwarder.remove(1, 5.0)
        for worker in self.launcher.launched:
            [message] = link_of(worker).messages()
            self.assertEqual(message, {"op": "remove", "key": key, "drain": 5.0})
        self.assertEqual(self.forwarder.rules, ())
        reply(self.worker(0), {"op": "removed", "key": key, "cut": 1})
        self.assertNoResult(d)
        reply(self.worker(1), {"op": "removed", "key": key, "cut": 2})
        self.assertEqual(self.successResultOf(d), 3)
        self.assertTrue(port_is_free(rule.listen.start))

    def test_a_worker_that_goes_away_counts_as_drained(self) -> None:
        key = self.install(make_rule(1, free_port()))
        d = self.forwarder.remove(1, 5.0)
        reply(self.worker(0), {"op": "removed", "key": key, "cut": 1})
        self.worker(1).link.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), 1)

    def test_unknown_rule(self) -> None:
        error = self.assertRaises(PortunusError, self.forwarder.remove, 42, 1.0)
        self.assertEqual(error.code, "rule_not_found")


class StatsTests(WorkerForwarderTestCase):
    def test_counters_are_summed_over_workers_and_ports(self) -> None:
        """Rule and per-port counters add up; a rule nobody reported on reads zero."""
        port = free_port()
        key = self.install(make_rule(1, port))
        self.install(make_rule(2, free_port()))
        per_port = {str(port): {"bytes_in": 5, "total_connections": 1}}
        self.report(self.worker(0), {key: stats_report(bytes_in=5, ports=per_port)})
        per_port = {str(port): {"bytes_in": 7, "total_connections": 2}}
        self.report(
            self.worker(1),
            {key: stats_report(bytes_in=7, active_connections=1, ports=per_port)},
        )
        stats = self.forwarder.stats()
        self.assertEqual(set(stats), {1, 2})
        self.assertEqual((stats[1].bytes_in, stats[1].active_connections), (12, 1))
        self.assertEqual(stats[1].ports[port].total_connections, 3)
        self.assertEqual(stats[2].bytes_in, 0)

    def test_reports_about_a_replaced_rule_are_ignored(self) -> None:
        """A report that crosses a replacement never counts for the new rule."""
        port = free_port()
        old = self.install(make_rule(1, port))
        self.forwarder.remove(1, 0)
        for worker in self.launcher.launched:
            reply(worker, {"op": "removed", "key": old, "cut": 0})
        new = self.install(make_rule(1, port, name="replaced"))
        self.assertNotEqual(old, new)
        self.report(self.worker(0), {old: stats_report(bytes_in=99)})
        self.assertEqual(self.forwarder.stats()[1].bytes_in, 0)

    def test_target_states_are_merged(self) -> None:
        """
        Per-target counters add up; the health is that of the worker that
        saw the target last.
        """
        key = self.install(make_rule(1, free_port(), targets=2))

        def target(host: str, health: str, seen: float, total: int) -> dict[str, Any]:
            return {
                "target": host,
                "health": health,
                "consecutive_failures": 3 if health == "failed" else 0,
                "last_success_at": None if health == "failed" else seen,
                "last_failure_at": seen if health == "failed" else None,
                "bytes_in": total,
                "bytes_out": 0,
                "active_connections": 0,
                "total_connections": total,
            }

        zero = {"bytes_in": 0}
        self.report(
            self.worker(0),
            {
                key: {
                    "stats": zero,
                    "targets": [target("a", "failed", 100, 1), target("b", "healthy", 50, 2)],
                }
            },
        )
        self.report(
            self.worker(1),
            {
                key: {
                    "stats": zero,
                    "targets": [target("a", "healthy", 90, 4), target("b", "failed", 60, 8)],
                }
            },
        )
        a, b = self.forwarder.target_states(1) or []
        self.assertEqual((a["health"], a["total_connections"]), ("failed", 5))
        self.assertEqual((a["last_success_at"], a["last_failure_at"]), (90, 100))
        self.assertEqual((b["health"], b["consecutive_failures"]), ("failed", 3))
        self.assertEqual(b["bytes_in"], 10)

    def test_no_target_states_for_single_target_rules(self) -> None:
        key = self.install(make_rule(1, free_port()))
        self.report(self.worker(0), {key: {"stats": {}, "targets": None}})
        self.assertIsNone(self.forwarder.target_states(1))
        self.assertIsNone(self.forwarder.target_states(2))


class LogLevelTests(WorkerForwarderTestCase):
    def test_every_worker_is_told_and_restarted_ones_start_with_it(self) -> None:
        """set_log_level sends each worker the level; a restarted worker is spawned with it."""
        self.forwarder.set_log_level("debug")
        for worker in self.forwarder.workers.values():
            self.assertIn({"op": "log_level", "level": "debug"}, link_of(worker).messages())
        args = self.forwarder._worker_args
        self.assertEqual(args[args.index("--log-level") + 1], "debug")


class RestartTests(WorkerForwarderTestCase):
    def test_dead_worker_counts_stay_and_it_returns_with_every_rule(self) -> None:
        """
        A worker that exits keeps its counters in the sums (not what it had
        open), is restarted after the backoff and is handed every current
        rule again, each with the sockets it serves.
        """
        tcp = make_rule(1, free_port())
        udp = make_rule(2, free_port(socket.SOCK_DGRAM), Protocol.UDP)
        tcp_key, udp_key = self.install(tcp), self.install(udp)
        dead = self.worker(1)
        self.report(dead, {tcp_key: stats_report(bytes_in=10, active_connections=2)})
        self.report(self.worker(0), {tcp_key: stats_report(bytes_in=1)})

        dead.link.connectionLost(Failure(ConnectionDone()))
        dead.processEnded(ended(None, 9))
        self.assertNotIn(1, self.forwarder.workers)
        stats = self.forwarder.stats()[1]
        self.assertEqual((stats.bytes_in, stats.active_connections), (11, 0))

        self.clock.advance(RESTART_MIN_SECS)
        again = self.worker(1)
        self.assertIsNot(again, dead)
        adds = link_of(again).messages()
        self.assertEqual([(m["key"], m["rule"]["id"]) for m in adds], [(tcp_key, 1), (udp_key, 2)])
        tcp_fd, udp_fd = link_of(again).fds
        self.assertEqual([inode(tcp_fd)], self.handed[0, tcp_key])
        self.assertEqual([inode(udp_fd)], self.handed[1, udp_key])
        self.assertNotEqual(self.handed[0, udp_key], self.handed[1, udp_key])
        self.report(again, {tcp_key: stats_report(bytes_in=3)})
        self.assertEqual(self.forwarder.stats()[1].bytes_in, 14)

    def test_restarts_back_off_while_a_worker_keeps_dying(self) -> None:
        first = self.worker(0)
        first.processEnded(ended(1))
        self.clock.advance(RESTART_MIN_SECS)
        second = self.worker(0)
        self.assertIsNot(second, first)
        second.processEnded(ended(1))
        self.clock.advance(RESTART_MIN_SECS)
        self.assertNotIn(0, self.forwarder.workers)
        self.clock.advance(RESTART_MIN_SECS)
        self.assertIn(0, self.forwarder.workers)
        self.assertEqual(self.forwarder.restarts, 2)

    def test_a_worker_that_cannot_be_started_is_tried_again(self) -> None:
        """A failed spawn is logged and retried with the same backoff."""
        attempts: list[int] = []

        def failing(worker: WorkerProcess) -> None:
            attempts.append(worker.index)
            if len(attempts) == 1:
                raise OSError("no more processes")
            self.launcher(worker)

        forwarder = WorkerForwarder(self.clock, 1, event_prefix="client", launch=failing)
        forwarder.start()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(forwarder.workers, {})
        self.clock.advance(RESTART_MIN_SECS)
        self.assertEqual((attempts, list(forwarder.workers)), ([0, 0], [0]))

    def test_what_every_exited_worker_counted_adds_up(self) -> None:
        """Both workers exit, one after the other: the sums keep what each counted."""
        key = self.install(make_rule(1, free_port()))
        first, second = self.worker(0), self.worker(1)
        self.report(first, {key: stats_report(bytes_in=10)})
        self.report(second, {key: stats_report(bytes_in=5)})
        first.processEnded(ended(1))
        second.processEnded(ended(1))
        self.assertEqual(self.forwarder.stats()[1].bytes_in, 15)

    def test_an_exited_worker_keeps_its_target_counters(self) -> None:
        """A two-target rule's per-target counters keep what an exited worker counted."""
        key = self.install(make_rule(1, free_port(), targets=2))
        self.report(
            self.worker(0),
            {key: stats_report(targets=[target_state("a", 3, 1), target_state("b", 1)])},
        )
        self.report(
            self.worker(1),
            {key: stats_report(targets=[target_state("a", 2, 2), target_state("b", 4, 1)])},
        )
        self.worker(1).processEnded(ended(1))
        a, b = self.forwarder.target_states(1) or []
        self.assertEqual((a["total_connections"], a["active_connections"]), (5, 1))
        self.assertEqual((b["total_connections"], b["active_connections"]), (5, 0))

    def test_removing_a_rule_forgets_what_exited_workers_counted(self) -> None:
        key = self.install(make_rule(1, free_port(), targets=2))
        self.report(
            self.worker(1),
            {key: stats_report(bytes_in=7, targets=[target_state("a", 1), target_state("b", 2)])},
        )
        self.worker(1).processEnded(ended(1))
        self.assertEqual(self.forwarder.stats()[1].bytes_in, 7)
        self.forwarder.remove(1, 0)
        # Keys are never reused, so only the bookkeeping itself shows a leak.
        self.assertEqual(self.forwarder._retired, {})
        self.assertEqual(self.forwarder._retired_targets, {})

    def test_an_ended_worker_that_was_replaced_leaves_its_successor(self) -> None:
        """
        A worker whose launch failed after its process started is replaced;
        when that first process ends, the replacement stays the worker.
        """
        stale: list[WorkerProcess] = []

        def launch(worker: WorkerProcess) -> None:
            self.launcher(worker)
            if not stale:
                stale.append(worker)
                raise OSError("started, then failed")

        forwarder = WorkerForwarder(self.clock, 1, event_prefix="client", launch=launch)
        forwarder.start()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.clock.advance(RESTART_MIN_SECS)
        current = forwarder.workers[0]
        self.assertIsNot(current, stale[0])
        stale[0].processEnded(ended(1))
        self.assertIs(forwarder.workers.get(0), current)


class SniTests(WorkerForwarderTestCase):
    def test_sni_rules_on_one_port_share_its_listener(self) -> None:
        """
        The second SNI rule on a port binds nothing and joins the first's
        listener; a restarted worker gets the listener with the oldest rule
        still there; the port closes with its last rule.
        """
        port = free_port()
        first, second = make_rule(1, port, sni="a.example"), make_rule(2, port, sni="b.example")
        self.install(first)
        self.assertEqual(self.forwarder.bind(second).shared, ())
        self.forwarder.activate(self.forwarder.bind(second))
        worker = self.worker(0)
        [joined] = link_of(worker).messages()
        self.assertEqual(joined["sockets"], [])
        self.forwarder.remove(1, 0)

        worker.processEnded(ended(1))
        self.clock.advance(RESTART_MIN_SECS)
        [add] = [m for m in link_of(self.worker(0)).messages() if m["op"] == "add"]
        self.assertEqual((add["rule"]["id"], len(add["sockets"])), (2, 1))
        reply(self.worker(0), {"op": "added", "key": add["key"]})
        reply(self.worker(1), {"op": "added", "key": joined["key"]})
        self.assertFalse(port_is_free(port))
        self.forwarder.remove(2, 0)
        self.assertTrue(port_is_free(port))

    def test_conflicting_sni_rule_is_refused(self) -> None:
        port = free_port()
        self.install(make_rule(1, port, sni="a.example"))
        bound = self.forwarder.bind(make_rule(2, port, sni="a.example"))
        self.assertRaises(PortunusError, self.forwarder.activate, bound)
        self.assertEqual([r.id for r in self.forwarder.rules], [1])


class StopTests(WorkerForwarderTestCase):
    def test_stop_drains_every_rule_then_lets_workers_exit(self) -> None:
        key = self.install(make_rule(1, free_port()))
        d = self.forwarder.stop(10.0)
        for worker in self.launcher.launched:
            self.assertEqual([m["op"] for m in link_of(worker).messages()], ["remove"])
            reply(worker, {"op": "removed", "key": key, "cut": 0})
        for worker in self.launcher.launched:
            self.assertEqual([m["op"] for m in link_of(worker).messages()], ["exit"])
        self.assertNoResult(d)
        for worker in list(self.launcher.launched):
            worker.processEnded(ended(0))
        self.successResultOf(d)
        self.clock.advance(60)
        self.assertEqual(self.forwarder.workers, {})
        self.assertEqual(self.forwarder.restarts, 0)

    def test_stop_while_a_restart_is_pending_starts_nothing(self) -> None:
        self.worker(1).processEnded(ended(1))
        d = self.forwarder.stop(10.0)
        self.worker(0).processEnded(ended(0))
        self.successResultOf(d)
        self.clock.advance(RESTART_MAX_SECS)
        self.assertEqual(len(self.launcher.launched), 2)
        self.assertEqual(self.forwarder.workers, {})

    def test_workers_that_exit_before_the_deadline_are_not_killed(self) -> None:
        """Once every worker has exited, no kill stays scheduled."""
        d = self.forwarder.stop(10.0)
        for worker in list(self.launcher.launched):
            worker.processEnded(ended(0))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10.0 + KILL_GRACE_SECS)
        self.assertEqual([process_of(w).signals for w in self.launcher.launched], [[], []])

    def test_stragglers_are_killed_after_the_drain_deadline(self) -> None:
        self.install(make_rule(1, free_port()))
        d = self.forwarder.stop(10.0)
        self.clock.advance(10.0 + KILL_GRACE_SECS - 0.1)
        self.assertEqual([process_of(w).signals for w in self.launcher.launched], [[], []])
        self.clock.advance(0.1)
        self.assertEqual([process_of(w).signals for w in self.launcher.launched], [["KILL"]] * 2)
        for worker in list(self.launcher.launched):
            worker.link.connectionLost(Failure(ConnectionDone()))
            worker.processEnded(ended(None, 9))
        self.successResultOf(d)


class AgentOverWorkersTests(WorkerForwarderTestCase):
    def test_the_agent_drives_workers_as_it_drives_one_forwarder(self) -> None:
        """Pushes answer the real bind outcome; stats entries are the summed ones."""
        agent = EdgeAgent(self.forwarder, drain_timeout=1.0)
        agent.begin_session()
        rule = make_rule(1, free_port())
        self.assertEqual(agent.push(rule_to_dict(rule)), (ACTIVATED, None))
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind((LOOPBACK, 0))
        blocker.listen(1)
        taken = make_rule(2, blocker.getsockname()[1])
        self.assertEqual(agent.push(rule_to_dict(taken)), (FAILED, "port_in_use"))
        [add] = link_of(self.worker(0)).messages()
        for worker in self.launcher.launched:
            self.report(worker, {add["key"]: stats_report(bytes_in=4)})
        [entry] = agent.stats_entries()
        self.assertEqual((entry["rule_id"], entry["bytes_in"]), (1, 8))


class ReplaceTests(WorkerForwarderTestCase):
    """
    A rule replaced by a new version of itself on the same port: every
    worker is told to remove the old version, then handed the new one with
    the very sockets it was serving, although the workers still hold them
    (here: nobody has acknowledged the first hand-over yet).
    """

    def setUp(self) -> None:
        super().setUp()
        self.agent = EdgeAgent(self.forwarder, drain_timeout=1.0)
        self.agent.begin_session()

    def replace(self, old: Rule, new: Rule) -> dict[int, tuple[list[dict[str, Any]], list[int]]]:
        """
        Push C{old} then C{new}; per worker, the messages the second push
        sent and the inodes of the sockets handed over, first push's then
        the second's.
        """
        self.assertEqual(self.agent.push(rule_to_dict(old)), (ACTIVATED, None))
        for worker in self.launcher.launched:
            link_of(worker).messages()
        self.assertEqual(self.agent.push(rule_to_dict(new)), (ACTIVATED, None))
        return {
            w.index: (
                link_of(w).messages(),
                [inode(fd) for fd in link_of(w).fds if is_open(fd)],
            )
            for w in self.launcher.launched
        }

    def test_tcp_workers_get_the_same_listener(self) -> None:
        port = free_port()
        seen = self.replace(make_rule(1, port), make_rule(1, port, targets=2))
        for messages, inodes in seen.values():
            self.assertEqual([m["op"] for m in messages], ["remove", "add"])
            self.assertEqual(messages[1]["rule"]["targets"][1]["host"], "10.0.0.6")
            old, new = inodes
            self.assertEqual(new, old)
        # Nothing kept beyond the rule's life: once it is gone, so is the port.
        for index, (messages, _) in seen.items():
            for message in messages:
                reply(self.worker(index), {"op": "added", "key": message["key"]})
        self.agent.remove(1)
        self.assertTrue(port_is_free(port))

    def test_udp_workers_each_keep_their_own_socket(self) -> None:
        """Worker i is handed its own socket again, so the kernel's spread stays."""
        port = free_port(socket.SOCK_DGRAM)
        seen = self.replace(
            make_rule(1, port, Protocol.UDP), make_rule(1, port, Protocol.UDP, targets=2)
        )
        (_, (_, (old0, new0))), (_, (_, (old1, new1))) = sorted(seen.items())
        self.assertEqual((new0, new1), (old0, old1))
        self.assertNotEqual(old0, old1)

    def test_the_only_sni_rule_of_a_port_hands_its_listener_on(self) -> None:
        port = free_port()
        seen = self.replace(
            make_rule(1, port, sni="a.example"), make_rule(1, port, sni="b.example")
        )
        for messages, (old_inode, new_inode) in seen.values():
            self.assertEqual(messages[1]["rule"]["sni_pattern"], "b.example")
            self.assertEqual(new_inode, old_inode)

    def test_one_of_several_sni_rules_joins_the_port_again(self) -> None:
        """
        The port's listener stays with the other rule; the new version is
        handed no socket, and what it inherited is released.
        """
        port = free_port()
        self.install(make_rule(2, port, sni="b.example"))
        old, new = (
            make_rule(1, port, sni="a.example"),
            make_rule(1, port, targets=2, sni="a.example"),
        )
        seen = self.replace(old, new)
        for index, (messages, _) in seen.items():
            self.assertEqual(messages[1]["sockets"], [])
            for message in messages:
                reply(self.worker(index), {"op": "added", "key": message["key"]})
        self.forwarder.remove(2, 0)
        self.forwarder.remove(1, 0)
        self.assertTrue(port_is_free(port))


class EventPrefixTests(SynchronousTestCase):
    def test_the_role_names_every_worker_event(self) -> None:
        """
        The role given as event_prefix names the events about the workers
        (exits, a broken link) and is passed on for the workers' own.
        """
        spawned: list[list[str]] = []

        def spawn(reactor: Any, worker: WorkerProcess, args: list[str]) -> None:
            spawned.append(args)
            FakeLauncher()(worker)

        self.patch(forwarder_module, "spawn_worker", spawn)
        events = logged(self)
        forwarder = WorkerForwarder(Clock(), 1, event_prefix="standalone")
        forwarder.start()
        [args] = spawned
        self.assertEqual(args[args.index("--event-prefix") + 1], "standalone")
        worker = forwarder.workers[0]
        worker.link.dataReceived(len(b"not json").to_bytes(4, "big") + b"not json")
        worker.processEnded(ended(None, 9))
        names = [e.get("event") for e in events if str(e.get("event")).endswith("worker_exited")]
        self.assertEqual(names, ["standalone.worker_exited"])
        self.assertIn("standalone.worker_link_broken", [e.get("event") for e in events])
