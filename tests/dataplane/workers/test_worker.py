"""
A worker process, rule side: WorkerRules adopts handed-over
sockets into its Forwarder, removes, reports by the main process's keys
and drains on stop; its log observer tags events and leaves out the ones
the main process logs.  A memory reactor, no processes.
"""

from __future__ import annotations

import io
import os
import socket
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane import Forwarder
from portunus.dataplane.listeners import bind_stream_sockets
from portunus.dataplane.workers.worker import WorkerRules, apply_log_level, worker_observer
from portunus.logging import JSONLinesObserver
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.rulejson import rule_to_dict
from tests._net import LOOPBACK, free_port


def make_rule(rule_id: int, port: int, targets: int = 1) -> Rule:
    return Rule(
        id=rule_id,
        name=f"rule-{rule_id}",
        protocol=Protocol.TCP,
        listen=PortRange.single(port),
        targets=tuple(Target(f"10.0.0.{5 + i}", PortRange.single(9000)) for i in range(targets)),
        listen_addresses=(LOOPBACK,),
    )


class WorkerRulesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.forwarder = Forwarder(self.reactor)
        self.sent: list[dict[str, Any]] = []
        self.rules = WorkerRules(self.forwarder, self.sent.append, "client")

    def hand_over(self, key: int, rule: Rule) -> list[int]:
        """What the main process sends: the rule and a duplicate of each bound socket."""
        bound = bind_stream_sockets(rule.listen_addresses, rule.listen)
        fds = [os.dup(b.sock.fileno()) for b in bound]
        for b in bound:
            b.sock.close()
        message = {
            "op": "add",
            "key": key,
            "rule": rule_to_dict(rule),
            "sockets": [{"address": b.address, "port": b.port} for b in bound],
        }
        self.rules.handle(message, list(fds))
        return fds

    def test_adopts_handed_over_sockets_and_says_so(self) -> None:
        """The rule is served from the descriptors it came with."""
        rule = make_rule(7, free_port())
        self.hand_over(3, rule)
        self.assertEqual(self.sent, [{"op": "added", "key": 3}])
        self.assertEqual(self.forwarder.rules, (rule,))
        [(_fd, family, _factory)] = self.reactor.adoptedPorts
        self.assertEqual(family, socket.AF_INET)

    def test_unusable_hand_over_is_refused_and_its_descriptors_closed(self) -> None:
        """Descriptors that do not match the message are closed; add_failed says why."""
        r, w = os.pipe()
        self.addCleanup(os.close, w)
        message = {"op": "add", "key": 4, "rule": rule_to_dict(make_rule(1, 1)), "sockets": []}
        self.rules.handle(message, [r])
        [answer] = self.sent
        self.assertEqual((answer["op"], answer["key"]), ("add_failed", 4))
        self.assertRaises(OSError, os.fstat, r)
        self.assertEqual(self.forwarder.rules, ())

    def test_unreadable_rule_is_refused(self) -> None:
        message = {"op": "add", "key": 5, "rule": {"id": "x"}, "sockets": []}
        self.rules.handle(message, [])
        self.assertEqual(self.sent[0]["op"], "add_failed")

    def test_remove_answers_with_the_connections_cut(self) -> None:
        self.hand_over(3, make_rule(7, free_port()))
        self.rules.handle({"op": "remove", "key": 3, "drain": 1.0}, [])
        self.reactor.advance(1.0)
        self.assertEqual(self.sent[-1], {"op": "removed", "key": 3, "cut": 0})
        self.assertEqual(self.forwarder.rules, ())

    def test_removing_an_unknown_key_answers_at_once(self) -> None:
        """A key the worker never got (it started after the add) is removed already."""
        self.rules.handle({"op": "remove", "key": 9, "drain": 1.0}, [])
        self.assertEqual(self.sent, [{"op": "removed", "key": 9, "cut": 0}])

    def test_report_is_keyed_by_the_main_process_keys(self) -> None:
        self.hand_over(3, make_rule(7, free_port()))
        self.hand_over(4, make_rule(8, free_port(), targets=2))
        report = self.rules.report()
        self.assertEqual(report["op"], "report")
        self.assertEqual(set(report["rules"]), {"3", "4"})
        self.assertIsNone(report["rules"]["3"]["targets"])
        self.assertEqual(len(report["rules"]["4"]["targets"]), 2)
        self.assertEqual(report["rules"]["3"]["stats"]["bytes_in"], 0)

    def test_stop_waits_for_rules_already_draining(self) -> None:
        """
        Stop drains every rule, including one whose removal is under way:
        it does not fire until that removal has.
        """
        self.hand_over(3, make_rule(7, free_port()))
        self.hand_over(4, make_rule(8, free_port()))
        # Rule 7 is removed from the forwarder, but its drain does not end
        # until the test says so (with no relays it would end at once).
        still_draining: Deferred[int] = Deferred()
        real_remove = self.forwarder.remove

        def remove(rule_id: int, drain: float = 30.0) -> Deferred[int]:
            d = real_remove(rule_id, drain)
            return still_draining if rule_id == 7 else d

        self.patch(self.forwarder, "remove", remove)
        removing = self.rules.remove(3, 1.0)
        stopped = self.rules.stop(1.0)
        self.reactor.advance(1.0)
        self.assertNoResult(removing)
        self.assertNoResult(stopped)
        still_draining.callback(0)
        self.assertEqual(self.successResultOf(removing), 0)
        self.successResultOf(stopped)
        self.assertEqual(self.forwarder.rules, ())
        self.assertEqual(self.rules.report()["rules"], {})


class WorkerObserverTests(SynchronousTestCase):
    def test_tags_events_and_leaves_out_the_main_process_ones(self) -> None:
        seen: list[LogEvent] = []
        observe = worker_observer(cast(ILogObserver, seen.append), 2)
        observe({"event": "rule.activated"})
        observe({"event": "rule.removed"})
        observe({"event": "rule.conn_error", "rule": "web"})
        self.assertEqual(seen, [{"event": "rule.conn_error", "rule": "web", "worker": 2}])


class LogLevelOrderTests(SynchronousTestCase):
    def test_the_main_process_sets_the_level(self) -> None:
        """A log_level order sets the worker observer's level; an unknown level is only logged."""
        observer = JSONLinesObserver(io.StringIO(), LogLevel.info)
        apply_log_level(cast(ILogObserver, observer), "debug", "standalone")
        self.assertIs(observer.level, LogLevel.debug)
        with capturedLogs() as events:
            apply_log_level(cast(ILogObserver, observer), "loud", "standalone")
        self.assertIs(observer.level, LogLevel.debug)
        self.assertEqual([e.get("event") for e in events], ["standalone.worker_bad_log_level"])
