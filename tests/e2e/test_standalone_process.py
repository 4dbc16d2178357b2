"""
twistd -n portunus-standalone as a real process on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests._net import (
    LOOPBACK,
    HashingClient,
    OneShotClientFactory,
    ReplyAfterEof,
    echo_factory,
    free_port,
    tagged_factory,
)
from tests.dataplane.test_sni import client_hello
from tests.e2e._process import TWISTD, spawn_standalone

reactor: Any = _reactor


def config_text(listen_port: int, target_port: int, extra: str = "") -> str:
    return f"""
[global]
log_level = "info"
log_format = "json"
shutdown_drain_secs = 20
listen_addresses = ["{LOOPBACK}"]
{extra}
[[rule]]
name = "web"
listen_port = {listen_port}
target = "{LOOPBACK}:{target_port}"
"""


class SlowReply(ReplyAfterEof):
    """Also signals (the factory's C{arrived}) when the first bytes arrive."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        arrived: Deferred[None] = self.factory.arrived  # type: ignore[attr-defined]
        if not arrived.called:
            arrived.callback(None)


class StandaloneProcessTestCase(TestCase):
    timeout = 60

    def write_config(self, text: str) -> str:
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        return path.path

    def target(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def start(self, config: str, *extra: str) -> Any:
        process = spawn_standalone(reactor, config, *extra)

        def reap() -> Deferred[int]:
            if not process.exited.called:
                process.signal(signal.SIGTERM)
            return process.exited

        self.addCleanup(reap)
        return process

    def check(self, config: str) -> Deferred[tuple[bytes, bytes, int]]:
        args = [
            *TWISTD[1:],
            "-n",
            "--pidfile=",
            "portunus-standalone",
            "--config",
            config,
            "--check",
        ]
        return getProcessOutputAndValue(sys.executable, args, env=None, path=".")


class CheckTests(StandaloneProcessTestCase):
    @inlineCallbacks
    def test_check_valid_config_prints_ok(self) -> Any:
        """--check on a valid config prints ok, exits 0 and binds nothing."""
        listen_port = free_port()
        config = self.write_config(config_text(listen_port, 9))
        out, err, code = yield self.check(config)
        self.assertEqual((out, code), (b"ok\n", 0), err)
        with socket.socket() as probe:
            probe.bind((LOOPBACK, listen_port))

    @inlineCallbacks
    def test_check_invalid_config_lists_every_error(self) -> Any:
        """--check on a broken config prints each problem and exits 2."""
        config = self.write_config(
            '[[rule]]\nname = "a"\nlisten_port = 70000\ntarget = "x:1"\n'
            '[[rule]]\nname = "b"\nlisten_ports = "10-19"\ntarget = "x:1-5"\nbogus = 1\n'
        )
        out, err, code = yield self.check(config)
        self.assertEqual((out, code), (b"", 2))
        text = err.decode()
        self.assertIn("problem(s) in the configuration", text)
        self.assertIn("rule 'a'", text)
        self.assertIn("listen_port", text)
        self.assertIn("bogus", text)
        self.assertIn("rule 'b'", text)


class TargetIsListenerCheckTests(StandaloneProcessTestCase):
    @inlineCallbacks
    def test_check_refuses_a_rule_that_targets_its_own_listener(self) -> Any:
        """
        --check refuses a rule whose target is its own listen port on this
        host (here through 127.0.0.1), naming the code, and exits 2.
        """
        listen_port = free_port()
        config = self.write_config(config_text(listen_port, listen_port))
        out, err, code = yield self.check(config)
        self.assertEqual((out, code), (b"", 2), err)
        self.assertIn(b"validation.target_is_listener", err)
        self.assertIn(b"rule 'web': target", err)


class RunTests(StandaloneProcessTestCase):
    @inlineCallbacks
    def test_forwards_then_exits_0_on_sigterm(self) -> Any:
        """The process forwards bytes, logs JSON events and exits 0 on SIGTERM."""
        listen_port = free_port()
        config = self.write_config(config_text(listen_port, self.target(echo_factory())))
        process = self.start(config)
        yield process.wait_for("standalone.started")
        activated = yield process.wait_for("rule.activated", rule="web")
        self.assertEqual(activated["listen"], str(listen_port))

        payload = b"x" * 1_000_000
        client = HashingClient(payload)
        reactor.connectTCP(LOOPBACK, listen_port, OneShotClientFactory(client))
        _received, digest = yield client.done
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest())

        process.signal(signal.SIGTERM)
        code = yield process.exited
        self.assertEqual(code, 0, process.stderr.decode())
        names = [e.get("event") for e in process.events]
        self.assertIn("standalone.stopped", names)

    @inlineCallbacks
    def test_bind_failure_exits_1_listing_the_rule(self) -> Any:
        """A rule whose port is taken makes startup exit 1 naming rule and code."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind((LOOPBACK, 0))
        holder.listen(1)
        config = self.write_config(config_text(holder.getsockname()[1], 9))
        process = self.start(config)
        code = yield process.exited
        self.assertEqual(code, 1)
        text = process.stderr.decode()
        self.assertIn("error: 1 rule(s) failed to bind:", text)
        self.assertIn("- web: port_in_use", text)

    @inlineCallbacks
    def test_sigterm_drains_in_flight_connections(self) -> Any:
        """After SIGTERM new connections are refused, a live one still completes."""
        factory = Factory.forProtocol(SlowReply)
        factory.arrived = Deferred()  # type: ignore[attr-defined]
        listen_port = free_port()
        config = self.write_config(config_text(listen_port, self.target(factory)))
        process = self.start(config)
        yield process.wait_for("standalone.started")

        client = HashingClient(b"")
        client.connectionMade = lambda: client.transport.write(b"hello")  # type: ignore[method-assign,union-attr]
        reactor.connectTCP(LOOPBACK, listen_port, OneShotClientFactory(client))
        yield factory.arrived  # type: ignore[attr-defined]

        process.signal(signal.SIGTERM)
        yield process.wait_for("shutdown.signal")
        client.transport.loseWriteConnection()  # type: ignore[union-attr]
        _, digest = yield client.done
        self.assertEqual(digest, hashlib.sha256(b"got hello").hexdigest(), process.stderr.decode())
        code = yield process.exited
        self.assertEqual(code, 0)

    @inlineCallbacks
    def test_sighup_is_logged_and_ignored(self) -> Any:
        """SIGHUP logs standalone.sighup_ignored and the forwarder keeps running."""
        listen_port = free_port()
        config = self.write_config(config_text(listen_port, self.target(echo_factory())))
        process = self.start(config)
        yield process.wait_for("standalone.started")
        process.signal(signal.SIGHUP)
        yield process.wait_for("standalone.sighup_ignored")
        client = HashingClient(b"still up")
        reactor.connectTCP(LOOPBACK, listen_port, OneShotClientFactory(client))
        _, digest = yield client.done
        self.assertEqual(digest, hashlib.sha256(b"still up").hexdigest())

    @inlineCallbacks
    def test_periodic_stats_event_per_rule(self) -> Any:
        """standalone.stats reports each rule's counters at the configured interval."""
        listen_port = free_port()
        config = self.write_config(
            config_text(
                listen_port, self.target(echo_factory()), "[stats]\nlog_interval_secs = 1\n"
            )
        )
        process = self.start(config)
        yield process.wait_for("standalone.started")
        client = HashingClient(b"12345")
        reactor.connectTCP(LOOPBACK, listen_port, OneShotClientFactory(client))
        yield client.done
        event = yield process.wait_for("standalone.stats", rule="web", bytes_in=5)
        self.assertEqual(event["bytes_out"], 5)
        self.assertEqual(event["total_connections"], 1)


class WorkersTests(StandaloneProcessTestCase):
    @inlineCallbacks
    def test_two_workers_forward_sum_stats_restart_and_drain(self) -> Any:
        """--workers 2: both serve every rule (activated and removed are
        logged once, by the main process), stats are summed, a killed worker
        is restarted and SIGTERM drains both and exits 0."""
        listen_port = free_port()
        config = self.write_config(
            config_text(
                listen_port, self.target(echo_factory()), "[stats]\nlog_interval_secs = 1\n"
            )
        )
        process = self.start(config, "--workers", "2")
        started = yield process.wait_for_count("standalone.worker_started", 2)
        self.assertEqual(sorted(e["index"] for e in started), [0, 1])
        [activated] = yield process.wait_for_count("rule.activated", 1)
        self.assertEqual((activated["rule"], activated["workers"]), ("web", 2))

        for i in range(10):
            client = HashingClient(b"%02d" % i)
            reactor.connectTCP(LOOPBACK, listen_port, OneShotClientFactory(client))
            _, digest = yield client.done
            self.assertEqual(digest, hashlib.sha256(b"%02d" % i).hexdigest())
        yield process.wait_for("standalone.stats", rule="web", bytes_in=20, total_connections=10)

        os.kill(started[0]["pid"], signal.SIGKILL)
        yield process.wait_for("standalone.worker_exited", index=started[0]["index"])
        yield process.wait_for_count("standalone.worker_started", 3)
        client = HashingClient(b"after restart")
        reactor.connectTCP(LOOPBACK, listen_port, OneShotClientFactory(client))
        _, digest = yield client.done
        self.assertEqual(digest, hashlib.sha256(b"after restart").hexdigest())

        process.signal(signal.SIGTERM)
        code = yield process.exited
        self.assertEqual(code, 0, process.stderr.decode())
        removed = [e for e in process.events if e.get("event") == "rule.removed"]
        self.assertEqual([e["rule"] for e in removed], ["web"])


class SniWorkersTests(StandaloneProcessTestCase):
    def tagged(self, tag: bytes) -> int:
        return self.target(tagged_factory(tag))

    @inlineCallbacks
    def test_two_workers_serve_sni_rules_sharing_a_port(self) -> Any:
        """
        --workers 2 with two SNI rules on one port starts (the port is bound
        once, for both), and each worker routes each name to its target.
        """
        listen_port = free_port()
        a, b = self.tagged(b"A"), self.tagged(b"B")
        config = self.write_config(
            f"""
[global]
log_level = "info"
log_format = "json"
shutdown_drain_secs = 5
listen_addresses = ["{LOOPBACK}"]

[[rule]]
name = "a"
listen_port = {listen_port}
target = "{LOOPBACK}:{a}"
sni_pattern = "a.example"

[[rule]]
name = "b"
listen_port = {listen_port}
target = "{LOOPBACK}:{b}"
sni_pattern = "b.example"
"""
        )
        process = self.start(config, "--workers", "2")
        yield process.wait_for_count("standalone.worker_started", 2)
        activated = yield process.wait_for_count("rule.activated", 2)
        self.assertEqual(sorted(e["rule"] for e in activated), ["a", "b"])
        # Connections spread over both workers: enough of them reach each.
        for i in range(10):
            name = b"a.example" if i % 2 == 0 else b"b.example"
            hello = client_hello(name)
            client = HashingClient(hello)
            reactor.connectTCP(LOOPBACK, listen_port, OneShotClientFactory(client))
            _, digest = yield client.done
            tag = b"A" if i % 2 == 0 else b"B"
            expected = hashlib.sha256(tag + b":got " + hello).hexdigest()
            self.assertEqual(digest, expected, process.stderr.decode()[-3000:])

        process.signal(signal.SIGTERM)
        code = yield process.exited
        self.assertEqual(code, 0, process.stderr.decode()[-3000:])
