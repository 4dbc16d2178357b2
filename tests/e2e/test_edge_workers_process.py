"""
An edge with --workers 2 as real processes on 127.0.0.1: twistd
portunus-server, twistd portunus-client --workers 2 and its two worker
processes.

Rules pushed through the API (bound on 127.0.0.1 only) are served by the
workers, TCP and UDP; a port in use is refused as with one process; the
stats the server gets are the workers' sums; a killed worker is restarted
and serves the rule again (both original workers are killed, so only
restarted ones are left to serve it); removal stops the rule in every
worker; SIGTERM drains everything and exits 0 with the workers gone.
Workers whose main process is killed exit by themselves.

A rule replaced on its own port is served by both workers from the same
sockets at once, without a refused connection, while its old version
drains.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
from typing import Any

import treq
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from portunus.client.agent import EdgeAgent
from portunus.dataplane.workers.forwarder import WorkerForwarder
from portunus.model import PortRange, Protocol, Rule, Target
from portunus.rulejson import rule_to_dict
from tests._net import (
    LOOPBACK,
    CollectingClient,
    HashingClient,
    OneShotClientFactory,
    collect,
    echo_factory,
    free_port,
    tagged_factory,
)
from tests.dataplane.test_udp_integration import Client as UdpClient
from tests.dataplane.test_udp_integration import Echo as UdpEcho
from tests.e2e.test_control_plane_process import _ProcessCase, reactor

#: The edge reports every this many seconds here (5 by default).
REPORT_SECS = 1
#: Polls before giving up (each POLL_SECS apart).
MAX_POLLS = 100
POLL_SECS = 0.2


class EdgeWorkersProcessTests(_ProcessCase):
    timeout = 180

    @inlineCallbacks
    def api(self, method: str, path: str, body: Any = None) -> Any:
        with open(os.path.join(self.data_dir, "operator.token")) as f:
            headers = {"Authorization": f"Bearer {f.read().strip()}"}
        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        response = yield treq.request(method, url, json=body, headers=headers, persistent=False)
        content = yield treq.content(response)
        return response.code, (json.loads(content) if content else None)

    def push(self, listen: int, target: int, protocol: str = "tcp") -> Any:
        return self.api(
            "POST",
            "/v1/rules",
            {
                "client": "edge-w",
                "listen": listen,
                "protocol": protocol,
                "targets": [{"host": LOOPBACK, "port": target}],
                "name": f"{protocol}-{listen}",
                "listen_addresses": [LOOPBACK],
                "ack_timeout_secs": 10,
            },
        )

    @inlineCallbacks
    def stats_until(self, rule_id: int, done: Any) -> Any:
        """Poll the API's stats of C{rule_id} until C{done(stats)}; bounded."""
        stats: dict[str, Any] = {}
        for _ in range(MAX_POLLS):
            code, stats = yield self.api("GET", f"/v1/rules/{rule_id}/stats")
            self.assertEqual(code, 200, stats)
            if done(stats):
                return stats
            yield deferLater(reactor, POLL_SECS, lambda: None)
        self.fail(f"stats never matched: {stats}")

    @inlineCallbacks
    def refused(self, port: int) -> Any:
        """Wait (bounded) until nothing accepts on C{port} any more."""
        for _ in range(MAX_POLLS):
            with socket.socket() as probe:
                if probe.connect_ex((LOOPBACK, port)) != 0:
                    return
            yield deferLater(reactor, POLL_SECS, lambda: None)
        self.fail(f"port {port} still accepts connections")

    @inlineCallbacks
    def echo(self, port: int, payload: bytes) -> Any:
        client = HashingClient(payload)
        reactor.connectTCP(LOOPBACK, port, OneShotClientFactory(client))
        _, digest = yield client.done
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest())

    @inlineCallbacks
    def test_two_workers_serve_restart_and_drain(self) -> Any:
        server = self.start_server()
        yield server.wait_for("server.started")
        bundle = yield self.enroll_bundle("edge-w")
        edge = self.spawn(
            "portunus-client",
            "--bundle",
            bundle,
            "--workers",
            "2",
            "--stats-report-interval-secs",
            str(REPORT_SECS),
            "--shutdown-drain-timeout-secs",
            "10",
        )
        started = yield edge.wait_for_count("client.worker_started", 2)
        self.assertEqual(sorted(e["index"] for e in started), [0, 1])
        yield edge.wait_for("control.connected")

        # TCP: served by the workers, answered as activated.
        target = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(target.stopListening)
        listen_port = free_port()
        code, body = yield self.push(listen_port, target.getHost().port)
        self.assertEqual((code, body["state"]), (201, "active"), body)
        rule_id = body["rule"]["id"]
        for i in range(10):
            yield self.echo(listen_port, b"%02d" % i)

        # A port in use is refused by the main process's bind, as with one process.
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind((LOOPBACK, 0))
        blocker.listen(1)
        code, body = yield self.push(blocker.getsockname()[1], target.getHost().port)
        self.assertEqual(code, 422, body)
        self.assertIn("port_in_use", json.dumps(body))

        # UDP: one SO_REUSEPORT socket per worker.
        udp_target = reactor.listenUDP(0, UdpEcho(b"echo:"), interface=LOOPBACK)
        self.addCleanup(udp_target.stopListening)
        udp_port = free_port(socket.SOCK_DGRAM)
        code, body = yield self.push(udp_port, udp_target.getHost().port, "udp")
        self.assertEqual((code, body["state"]), (201, "active"), body)
        udp_client = UdpClient()
        udp_listener = reactor.listenUDP(0, udp_client, interface=LOOPBACK)
        self.addCleanup(udp_listener.stopListening)
        udp_client.send(b"ping", udp_port)
        self.assertEqual((yield udp_client.wait_for(1)), [b"echo:ping"])

        # The server's stats are the workers' sums.
        yield self.stats_until(
            rule_id, lambda s: s.get("total_connections") == 10 and s.get("bytes_in") == 20
        )

        # Kill worker 0; once restarted, kill the other original: only
        # restarted workers are left to serve, and they do.
        pids = {e["index"]: e["pid"] for e in started}
        os.kill(pids[0], signal.SIGKILL)
        yield edge.wait_for("client.worker_exited", index=0)
        restarted = yield edge.wait_for_count("client.worker_started", 3)
        self.assertEqual(restarted[2]["index"], 0)
        os.kill(pids[1], signal.SIGKILL)
        yield edge.wait_for("client.worker_exited", index=1)
        yield self.echo(listen_port, b"after restart")
        # What the killed workers counted is still counted.
        yield self.stats_until(
            rule_id, lambda s: s.get("total_connections") == 11 and s.get("bytes_in") == 33
        )

        # Removal stops the rule in every worker.
        code, body = yield self.api("DELETE", f"/v1/rules/{rule_id}")
        self.assertEqual(code, 204, body)
        removed = yield edge.wait_for("rule.removed", rule=f"tcp-{listen_port}")
        self.assertEqual(removed["cut"], 0)
        yield self.refused(listen_port)

        # SIGTERM drains and exits 0; the workers are gone with it.
        yield edge.wait_for_count("client.worker_started", 4)
        workers = [e["pid"] for e in edge.events if e.get("event") == "client.worker_started"]
        edge.signal(signal.SIGTERM)
        self.assertEqual((yield edge.exited), 0, edge.stderr.decode()[-3000:])
        for pid in workers:
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertFalse(
            [e for e in edge.events if e.get("event") == "client.worker_killed"],
            "the workers exited by themselves",
        )

    @inlineCallbacks
    def test_workers_drain_and_exit_when_the_edge_dies(self) -> Any:
        """
        Killing the main process (no chance to stop its workers) closes
        their links: each logs client.worker_orphaned and exits.  The edge's
        stderr, which the workers share, closes only once they are gone.
        """
        bundle = os.path.join(self.data_dir, "..", "nowhere.bundle.json")
        with open(bundle, "w") as f:
            json.dump(
                {
                    "version": 1,
                    "client_name": "edge-x",
                    "server_endpoint": f"{LOOPBACK}:{free_port()}",
                    "server_cert_sha256": "ab" * 32,
                    "token": "never-sent",
                },
                f,
            )
        edge = self.spawn("portunus-client", "--bundle", bundle, "--workers", "2")
        yield edge.wait_for_count("client.worker_started", 2)
        assert edge.transport is not None
        edge.transport.signalProcess("KILL")
        yield edge.exited
        orphaned = [e for e in edge.events if e.get("event") == "client.worker_orphaned"]
        self.assertEqual(sorted(e["worker"] for e in orphaned), [0, 1])


class ReplaceWithWorkersTests(TestCase):
    """
    Replacing a rule on its own port with C{--workers 2}: the edge's agent
    and L{WorkerForwarder} in this process, with two real worker processes
    (C{python -m portunus.dataplane.workers.worker}) and no server, since the server
    has no way to change a rule under the same id but a restored backup.
    """

    timeout = 120

    def setUp(self) -> None:
        self.forwarder = WorkerForwarder(
            reactor, 2, event_prefix="client", drain_secs=10.0, log_level="warn"
        )
        self.forwarder.start()
        self.agent = EdgeAgent(self.forwarder, drain_timeout=10.0)
        self.agent.begin_session()
        self.addCleanup(self.forwarder.stop, 5.0)

    def target(self, tag: bytes) -> tuple[int, Factory]:
        factory = tagged_factory(tag)
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port), factory

    def push(self, listen: int, target: int, protocol: Protocol = Protocol.TCP) -> None:
        rule = Rule(
            id=1,
            name="replaced",
            protocol=protocol,
            listen=PortRange.single(listen),
            targets=(Target(LOOPBACK, PortRange.single(target)),),
            listen_addresses=(LOOPBACK,),
        )
        self.assertEqual(self.agent.push(rule_to_dict(rule)), ("activated", None))

    def removed(self) -> Deferred[dict[str, Any]]:
        """
        The main process's next rule.removed: every worker has drained the
        old version, so none accepts for it any more.
        """
        d: Deferred[dict[str, Any]] = Deferred()

        def observe(event: dict[str, Any]) -> None:
            if event.get("event") == "rule.removed":
                globalLogPublisher.removeObserver(observe)
                d.callback(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(lambda: None if d.called else globalLogPublisher.removeObserver(observe))
        return d

    @inlineCallbacks
    def test_tcp_rule_replaced_on_its_port(self) -> Any:
        """
        The replacement activates (not port_in_use); connections made as
        it happens are all answered, by one version or the other; one
        opened before completes through the old target; once the old
        version has drained, every connection reaches the new target.
        """
        listen = free_port()
        (old_target, old_factory), (new_target, _) = self.target(b"A"), self.target(b"B")
        self.push(listen, old_target)
        self.assertEqual((yield collect(reactor, listen, b"before")), b"A:got before")
        arrived: Deferred[None] = Deferred()
        old_factory.arrived.append(arrived)  # type: ignore[attr-defined]
        held = CollectingClient(b"held")
        reactor.connectTCP(LOOPBACK, listen, OneShotClientFactory(held), timeout=10)
        yield arrived
        drained = self.removed()

        self.push(listen, new_target)

        during = yield gatherResults([collect(reactor, listen, b"%d" % i) for i in range(20)])
        for i, reply in enumerate(during):
            self.assertIn(reply, (b"A:got %d" % i, b"B:got %d" % i))
        assert held.transport is not None
        held.transport.loseWriteConnection()
        self.assertEqual((yield held.done), b"A:got held")
        self.assertEqual((yield drained)["cut"], 0)
        for _ in range(10):
            self.assertEqual((yield collect(reactor, listen, b"after")), b"B:got after")

    @inlineCallbacks
    def test_udp_rule_replaced_on_its_port(self) -> Any:
        """
        Each worker keeps its own socket: the client's datagrams reach the
        new target, and its replies come from the same listen port.
        """
        listen = free_port(socket.SOCK_DGRAM)
        old_target = reactor.listenUDP(0, UdpEcho(b"A:"), interface=LOOPBACK)
        self.addCleanup(old_target.stopListening)
        new_target = reactor.listenUDP(0, UdpEcho(b"B:"), interface=LOOPBACK)
        self.addCleanup(new_target.stopListening)
        self.push(listen, old_target.getHost().port, Protocol.UDP)
        client = UdpClient()
        listening = reactor.listenUDP(0, client, interface=LOOPBACK)
        self.addCleanup(listening.stopListening)
        client.send(b"one", listen)
        self.assertEqual((yield client.wait_for(1)), [b"A:one"])
        drained = self.removed()

        self.push(listen, new_target.getHost().port, Protocol.UDP)

        yield drained
        client.send(b"two", listen)
        self.assertEqual((yield client.wait_for(2)), [b"A:one", b"B:two"])
        self.assertEqual(client.senders, {(LOOPBACK, listen)})
