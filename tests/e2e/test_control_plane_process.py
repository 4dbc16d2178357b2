"""
The control plane as real processes on 127.0.0.1: twistd portunus-server,
the portunus-server / portunus-client CLIs and twistd portunus-client.

Enroll, connect, push a rule with the CLI, 16 MiB through it with matching
sha256, list-clients shows it connected, a server restart is survived
(the edge reconnects, forwarding continues), revoke disconnects and the
token is refused from then on.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import treq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests._net import LOOPBACK, HashingClient, OneShotClientFactory, echo_factory, free_port
from tests.e2e._process import TWISTD, TwistdProcess, stop_all

reactor: Any = _reactor

SERVER_CLI = [sys.executable, "-c", "from portunus.cli.server import main; main()"]
CLIENT_CLI = [sys.executable, "-c", "from portunus.cli.client import main; main()"]


class _ProcessCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.control_port = free_port()
        self.http_port = free_port()
        # metrics_listen has no flag: server.toml keeps it off the default port.
        self.metrics_port = free_port()
        os.makedirs(self.data_dir, mode=0o700)
        with open(os.path.join(self.data_dir, "server.toml"), "w") as f:
            f.write(f'metrics_listen = "{LOOPBACK}:{self.metrics_port}"\n')
        self.processes: list[TwistdProcess] = []

    def tearDown(self) -> Any:
        return stop_all(reactor, self.processes)

    #: How twistd is run (a test may run it under other resource limits).
    launcher: Sequence[str] = TWISTD

    def spawn(
        self, plugin: str, *args: str, twistd: Sequence[str] = (), cwd: str | None = None
    ) -> TwistdProcess:
        """
        twistd -n C{plugin} C{args} (C{twistd}: twistd's own options, before
        the plugin).  With C{cwd} it runs there with twistd's pidfile
        default, as the docs show it; else with C{--pidfile=} (none).
        """
        process = TwistdProcess()
        pidfile = ["--pidfile="] if cwd is None else []
        argv = [*self.launcher, "--nodaemon", *pidfile, *twistd, plugin, *args]
        reactor.spawnProcess(process, sys.executable, argv, env=dict(os.environ), path=cwd)
        self.processes.append(process)
        return process

    def start_server(
        self, *extra: str, twistd: Sequence[str] = (), cwd: str | None = None
    ) -> TwistdProcess:
        return self.spawn(
            "portunus-server",
            "--data-dir",
            self.data_dir,
            "--control-listen",
            f"{LOOPBACK}:{self.control_port}",
            "--operator-http-listen",
            f"{LOOPBACK}:{self.http_port}",
            *extra,
            twistd=twistd,
            cwd=cwd,
        )

    def cli(self, command: list[str], *args: str) -> Any:
        env = dict(os.environ)
        with open(os.path.join(self.data_dir, "operator.token")) as f:
            env["PORTUNUS_OPERATOR_TOKEN"] = f.read().strip()
        env["PORTUNUS_HTTP_ENDPOINT"] = f"{LOOPBACK}:{self.http_port}"
        return getProcessOutputAndValue(sys.executable, [*command[1:], *args], env=env)

    @inlineCallbacks
    def enroll_bundle(self, name: str) -> Any:
        """Enroll C{name} with the CLIs (enroll-client, then enroll); the bundle's path."""
        out, err, code = yield self.cli(SERVER_CLI, "enroll-client", name)
        self.assertEqual(code, 0, err.decode())
        command = next(line for line in out.decode().splitlines() if "portunus://" in line)
        bundle = os.path.join(self.data_dir, "..", f"{name}.bundle.json")
        _, err, code = yield self.cli(CLIENT_CLI, "enroll", command.split("'")[1], "--out", bundle)
        self.assertEqual(code, 0, err.decode())
        return bundle

    @inlineCallbacks
    def send(self, port: int, payload: bytes) -> Any:
        client = HashingClient(payload)
        reactor.connectTCP(LOOPBACK, port, OneShotClientFactory(client))
        received, digest = yield client.done
        return received, digest


class ControlPlaneProcessTests(_ProcessCase):
    @inlineCallbacks
    def test_enroll_push_forward_restart_revoke(self) -> Any:
        server = self.start_server()
        yield server.wait_for("server.started")

        bundle_path = yield self.enroll_bundle("edge-01")
        self.assertEqual(os.stat(bundle_path).st_mode & 0o777, 0o600)

        client = self.spawn("portunus-client", "--bundle", bundle_path)
        yield client.wait_for("control.connected")
        metrics = yield treq.get(f"http://{LOOPBACK}:{self.metrics_port}/metrics", persistent=False)
        self.assertIn(b"\nportunus_clients_connected 1.0\n", (yield treq.content(metrics)))

        target = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(target.stopListening)
        listen_port = free_port()
        # The edge binds the rule on its default addresses; traffic in this
        # test only ever goes to 127.0.0.1.
        out, err, code = yield self.cli(
            SERVER_CLI,
            "push-rule",
            "edge-01",
            str(listen_port),
            f"{LOOPBACK}:{target.getHost().port}",
        )
        self.assertEqual(code, 0, err.decode())
        rule_id = int(out.decode().strip())
        yield client.wait_for("rule.activated")

        payload = os.urandom(16 * 1024 * 1024)
        received, digest = yield self.send(listen_port, payload)
        self.assertEqual((received, digest), (len(payload), hashlib.sha256(payload).hexdigest()))

        out, err, code = yield self.cli(SERVER_CLI, "list-clients", "--format", "json")
        self.assertEqual(code, 0, err.decode())
        [listed] = json.loads(out)
        self.assertEqual((listed["client_name"], listed["state"]), ("edge-01", "connected"))

        # Server restart: the edge keeps forwarding, reconnects, gets the replay.
        server.signal(signal.SIGTERM)
        self.assertEqual((yield server.exited), 0, server.stderr.decode())
        _, digest = yield self.send(listen_port, b"while the server is down")
        self.assertEqual(digest, hashlib.sha256(b"while the server is down").hexdigest())
        server = self.start_server()
        yield server.wait_for("client.replayed", count=1)
        _, digest = yield self.send(listen_port, b"after restart")
        self.assertEqual(digest, hashlib.sha256(b"after restart").hexdigest())
        out, err, code = yield self.cli(SERVER_CLI, "list-rules", "--format", "json")
        self.assertEqual(code, 0, err.decode())
        [rule] = json.loads(out)
        self.assertEqual((rule["rule"]["id"], rule["state"]), (rule_id, "active"))

        # Revoke: disconnected at once, the token refused from then on.
        out, err, code = yield self.cli(SERVER_CLI, "revoke", "edge-01")
        self.assertEqual(code, 0, err.decode())
        refused = yield client.wait_for("auth.failure")
        self.assertEqual(refused["reason"], "token_revoked")
        yield server.wait_for("client.disconnected", reason="token_revoked")

        # Both stop cleanly on SIGTERM.
        for process in (client, server):
            process.signal(signal.SIGTERM)
            self.assertEqual((yield process.exited), 0, process.stderr.decode()[-2000:])


class StartupRefusalTests(_ProcessCase):
    """Refusals a real process makes, with their exit codes and events."""

    @inlineCallbacks
    def test_second_server_on_the_same_data_dir_exits_75(self) -> Any:
        server = self.start_server()
        yield server.wait_for("server.started")
        self.control_port, self.http_port = free_port(), free_port()
        second = self.start_server()
        self.assertEqual((yield second.exited), 75)
        self.assertIn(b"startup.store_in_use", second.stderr)

    @inlineCallbacks
    def test_pinned_certificate_mismatch_exits_1_without_the_token(self) -> Any:
        server = self.start_server()
        yield server.wait_for("server.started")
        bundle = {
            "version": 1,
            "client_name": "edge-x",
            "client_id": "01M8000000000000000000000X",
            "server_endpoint": f"{LOOPBACK}:{self.control_port}",
            "server_cert_sha256": "ab" * 32,
            "token": "never-sent-token-value",
        }
        path = os.path.join(self.data_dir, "..", "wrong-pin.bundle.json")
        with open(path, "w") as f:
            json.dump(bundle, f)
        client = self.spawn("portunus-client", "--bundle", path)
        event = yield client.wait_for("control.tls_pinned_mismatch")
        self.assertEqual(event["expected"], "ab" * 32)
        self.assertEqual((yield client.exited), 1)
        # The server never got as far as a Hello.
        self.assertFalse([e for e in server.events if e.get("event") == "auth.failure"])
        self.assertFalse([e for e in server.events if e.get("event") == "client.hello"])

    @inlineCallbacks
    def test_busy_control_port_exits_1_naming_it(self) -> Any:
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind((LOOPBACK, 0))
        holder.listen(1)
        self.control_port = holder.getsockname()[1]
        server = self.start_server()
        self.assertEqual((yield server.exited), 1)
        self.assertIn(f"{LOOPBACK}:{self.control_port}".encode(), server.stderr)
        self.assertIn(b"bind_failed", server.stderr)
