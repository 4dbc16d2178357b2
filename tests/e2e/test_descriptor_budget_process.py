"""
The per-rule connection cap and the descriptor reserve in a real
standalone process started with a low open-file limit (256), one rule
flooded with connections on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests._net import LOOPBACK, HeldClients, collect, echo_factory, free_port
from tests.e2e._process import TwistdProcess, twistd_with_nofile

reactor: Any = _reactor

#: The open-file limit the process starts with (soft and hard).
NOFILE = 256


def config_text(flooded: int, other: int, target: int, extra: str = "") -> str:
    return f"""
[global]
log_level = "info"
log_format = "json"
shutdown_drain_secs = 0
listen_addresses = ["{LOOPBACK}"]
{extra}
[stats]
log_interval_secs = 1

[[rule]]
name = "flooded"
listen_port = {flooded}
target = "{LOOPBACK}:{target}"

[[rule]]
name = "other"
listen_port = {other}
target = "{LOOPBACK}:{target}"
"""


class DescriptorBudgetProcessTests(TestCase):
    timeout = 60

    def start(self, extra: str = "") -> tuple[TwistdProcess, int, int]:
        target = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(target.stopListening)
        flooded, other = free_port(), free_port()
        path = FilePath(self.mktemp())
        path.setContent(config_text(flooded, other, target.getHost().port, extra).encode())
        process = TwistdProcess()
        args = [
            *twistd_with_nofile(NOFILE, NOFILE),
            "--nodaemon",
            "--pidfile=",
            "portunus-standalone",
            "--config",
            path.path,
        ]
        reactor.spawnProcess(process, sys.executable, args, env=dict(os.environ))

        def reap() -> Deferred[int]:
            if not process.exited.called:
                process.signal(signal.SIGTERM)
            return process.exited

        self.addCleanup(reap)
        return process, flooded, other

    def stats_of(self, process: TwistdProcess, rule: str, **counters: int) -> Deferred[Any]:
        return process.wait_for("standalone.stats", rule=rule, **counters)

    @inlineCallbacks
    def test_flooded_rule_is_capped_and_the_other_keeps_working(self) -> Any:
        """
        With 256 descriptors the derived cap is 24 connections per rule
        ((256 - 64 reserved) / 8): 40 connections to one rule relay 24 and
        refuse 16 (counted as conn_cap_rejects), and the other rule still
        relays.
        """
        process, flooded, other = self.start()
        budget = yield process.wait_for("standalone.descriptor_budget")
        self.assertEqual((budget["limit"], budget["reserve"], budget["per_rule"]), (256, 64, 24))
        yield process.wait_for("standalone.started")
        clients = HeldClients(reactor, LOOPBACK, flooded, 40)
        self.addCleanup(clients.close)
        yield clients.settled
        self.assertEqual((clients.answered, clients.closed), (24, 16))
        answer = yield collect(reactor, other, b"still served")
        self.assertEqual(answer, b"still served")
        yield process.wait_for("rule.conn_cap_reached", rule="flooded", cap=24)
        yield self.stats_of(process, "flooded", conn_cap_rejects=16, active_connections=24)

    @inlineCallbacks
    def test_reserve_refuses_connections_before_descriptors_run_out(self) -> Any:
        """
        With the cap lifted and 128 of 256 descriptors reserved, a flood of
        100 connections is refused once the reserve is reached (counted as
        fd_reserve_rejects) instead of exhausting the process, which serves
        again once the flood closes.
        """
        process, flooded, other = self.start("max_conns_per_rule = 1000\nreserve_fds = 128")
        budget = yield process.wait_for("standalone.descriptor_budget")
        self.assertEqual((budget["reserve"], budget["per_rule"]), (128, 1000))
        yield process.wait_for("standalone.started")
        clients = HeldClients(reactor, LOOPBACK, flooded, 100)
        yield clients.settled
        # Each relayed connection holds two of the 128 usable descriptors.
        self.assertGreater(clients.answered, 20)
        self.assertLessEqual(clients.answered, 64)
        self.assertEqual(clients.answered + clients.closed, 100)
        yield process.wait_for("dataplane.fd_reserve_reached", rule="flooded")
        yield self.stats_of(
            process,
            "flooded",
            fd_reserve_rejects=clients.closed,
            active_connections=clients.answered,
        )
        clients.close()
        yield self.stats_of(process, "flooded", active_connections=0)
        answer = yield collect(reactor, other, b"served again")
        self.assertEqual(answer, b"served again")
