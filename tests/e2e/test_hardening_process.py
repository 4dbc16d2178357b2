"""
Hardening of the processes themselves (docs/security.md, "Signals, secrets
and files"), each checked on real twistd processes on 127.0.0.1:

- SIGHUP stops neither the server nor the edge: it reopens twistd's
  C{--logfile}, so a file logrotate renamed stops growing and a new one
  gets the next lines.

- C{server.toml} that sets C{operator_token} is refused (exit 78) while
  group or others can read it.
- The onboarding setup token never reaches a log stream: it is in the
  data dir's onboarding.token (0600), which C{portunus-server
  onboarding-token} prints while the server runs, and which goes once
  onboarding is done.
- A server and an edge started from one directory, as the docs lead
  (C{twistd -n portunus-server}, C{twistd -n portunus-client}, no
  C{--pidfile}), both run: each has its own pidfile.
- At info, the logs of a server and an edge hold none of Twisted's own
  lines (factories, AMP connections, ports, retry delays, twistd's banner,
  HTTP access lines): only named Portunus events.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks

from tests._net import LOOPBACK, free_port, free_port_range
from tests.e2e._process import TwistdProcess, file_event, read_events
from tests.e2e.test_control_plane_process import SERVER_CLI, _ProcessCase, reactor

#: Event names Twisted's own lines had or get: none may reach an info log.
FRAMEWORK_PREFIXES = ("twisted.", "twistd.", "log_legacy", "stderr")


class ServerTomlModeTests(_ProcessCase):
    def write_token_toml(self, mode: int) -> str:
        path = os.path.join(self.data_dir, "server.toml")
        with open(path, "a") as f:
            f.write('operator_token = "a-token-kept-in-server-toml"\n')
        os.chmod(path, mode)
        return path

    @inlineCallbacks
    def test_group_readable_server_toml_with_operator_token_exits_78(self) -> Any:
        """
        A server.toml holding operator_token that group or others may read
        stops startup with exit 78, the stable code and the fix; once it is
        0600 the server starts.
        """
        path = self.write_token_toml(0o640)
        refused = self.start_server()
        self.assertEqual((yield refused.exited), 78, refused.stderr.decode())
        err = refused.stderr.decode()
        self.assertIn("error: startup.server_toml_permissions: ", err)
        self.assertIn(f"chmod 600 {path}", err)
        self.assertNotIn("a-token-kept-in-server-toml", err)

        os.chmod(path, 0o600)
        server = self.start_server()
        started = yield server.wait_for("server.started")
        self.assertEqual(started["bearer_source"], "from server.toml")


class FrameworkLinesTests(_ProcessCase):
    def framework_lines(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            e
            for e in events
            if e["event"].startswith(FRAMEWORK_PREFIXES)
            or (e["logger"].startswith("twisted.") and e["event"] != "process.signal_received")
        ]

    @inlineCallbacks
    def test_info_logs_have_no_twisted_lines(self) -> Any:
        """
        A server and an edge at --log-level info, through startup,
        enrollment, API calls, a rule bound on the edge, the server going
        away (the edge retries) and SIGTERM: every stderr line is a JSON
        event, none of them one of Twisted's own lines; the edge's retry
        delay is logged rounded to milliseconds.
        """
        server = self.start_server()
        yield server.wait_for("server.started")
        bundle = yield self.enroll_bundle("edge-quiet")
        edge = self.spawn("portunus-client", "--bundle", bundle)
        yield edge.wait_for("control.connected")
        # Below the ephemeral range: no outgoing connection holds it meanwhile.
        listen = free_port_range(1)
        _, err, code = yield self.cli(
            SERVER_CLI, "push-rule", "edge-quiet", str(listen), f"{LOOPBACK}:{free_port()}"
        )
        self.assertEqual(code, 0, err.decode())
        yield edge.wait_for("rule.activated")

        server.signal(signal.SIGTERM)
        self.assertEqual((yield server.exited), 0)
        retry = yield edge.wait_for("control.retry_scheduled")
        self.assertEqual(retry["delay_secs"], round(retry["delay_secs"], 3))
        edge.signal(signal.SIGTERM)
        self.assertEqual((yield edge.exited), 0)

        for process in (server, edge):
            lines = process.stderr.decode().splitlines()
            self.assertEqual(len(lines), len(process.events), process.stderr.decode())
            self.assertEqual(self.framework_lines(process.events), [])
        stopping = [e for e in server.events if e["event"] == "process.signal_received"]
        self.assertEqual([e["signal"] for e in stopping], ["SIGTERM"])


class SetupTokenTests(_ProcessCase):
    @inlineCallbacks
    def test_setup_token_is_in_a_file_never_in_the_log(self) -> Any:
        """
        A fresh server (--log-level debug, so every line is there) logs
        where the setup token is, never the token: not in any stderr line.
        onboarding.token is 0600; onboarding-token prints it while the
        server runs; it onboards, and the file is removed.
        """
        server = self.start_server("--log-level", "debug")
        opened = yield server.wait_for("operator.onboarding_open")
        path = os.path.join(self.data_dir, "onboarding.token")
        self.assertEqual(opened["path"], path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

        out, err, code = yield self.cli(SERVER_CLI, "onboarding-token", "--data-dir", self.data_dir)
        self.assertEqual(code, 0, err.decode())
        token = out.decode().strip().partition("setup_token=")[2]
        with open(path) as f:
            self.assertEqual(f.read().strip(), token)
        self.assertRegex(token, r"^[A-Za-z0-9_-]{43}$")

        response = yield treq.post(
            f"http://{LOOPBACK}:{self.http_port}/v1/auth/onboarding",
            json={
                "user_id": "alice",
                "password": "correct horse battery",
                "password_confirm": "correct horse battery",
                "setup_token": token,
            },
            persistent=False,
        )
        self.assertEqual(response.code, 201, (yield treq.content(response)))
        yield server.wait_for("operator.user_added", user_id="alice")
        self.assertFalse(os.path.exists(path))

        server.signal(signal.SIGTERM)
        self.assertEqual((yield server.exited), 0)
        self.assertNotIn(token.encode(), server.stderr + server.stdout)
        self.assertTrue(server.events)
        self.assertEqual(len(server.stderr.decode().splitlines()), len(server.events))
        self.assertFalse([e for e in server.events if e["event"] == "stderr"])
        self.assertIn("operator.onboarding_setup_token_rotated", json.dumps(server.events))


class SighupTests(_ProcessCase):
    def log_path(self, name: str) -> str:
        return os.path.abspath(os.path.join(self.data_dir, "..", name))

    @inlineCallbacks
    def rotate(self, process: TwistdProcess, path: str, ready: str) -> Any:
        """
        Once C{ready} is logged: rename the log file as logrotate does, send
        SIGHUP, and check the next lines land in a new file while the old
        one gets none of them; the process still runs and stops with 0.
        """
        yield file_event(reactor, path, ready, process)
        os.rename(path, path + ".1")
        process.signal(signal.SIGHUP)
        hup = yield file_event(reactor, path, "process.sighup", process)
        self.assertEqual(hup["path"], path)
        self.assertFalse(process.exited.called)
        process.signal(signal.SIGTERM)
        self.assertEqual((yield process.exited), 0, process.stderr.decode())
        new = [e["event"] for e in read_events(path)]
        old = [e["event"] for e in read_events(path + ".1")]
        self.assertIn(ready, old)
        self.assertIn("process.signal_received", new)
        self.assertFalse({"process.sighup", "process.signal_received"} & set(old))
        return old, new

    @inlineCallbacks
    def test_server_reopens_its_log_file_on_sighup(self) -> Any:
        """
        twistd --logfile for the server: SIGHUP reopens the file, the server
        runs on and logs server.stopped to the new file; the setup token is
        in neither file, and nothing went to stderr.
        """
        path = self.log_path("server.log")
        server = self.start_server(twistd=["--logfile", path])
        _, new = yield self.rotate(server, path, "server.started")
        self.assertIn("server.stopped", new)
        with open(os.path.join(self.data_dir, "onboarding.token"), "rb") as f:
            token = f.read().strip()
        for name in (path, path + ".1"):
            with open(name, "rb") as f:
                self.assertNotIn(token, f.read())
        self.assertEqual(server.stderr, b"")

    @inlineCallbacks
    def test_edge_reopens_its_log_file_on_sighup(self) -> Any:
        """
        twistd --logfile for an edge (its server away, so it keeps
        retrying): SIGHUP reopens the file and the edge runs on.
        """
        bundle = os.path.join(self.data_dir, "..", "away.bundle.json")
        with open(bundle, "w") as f:
            json.dump(
                {
                    "version": 1,
                    "client_name": "edge-hup",
                    "client_id": "01M8000000000000000000000H",
                    "server_endpoint": f"{LOOPBACK}:{free_port()}",
                    "server_cert_sha256": "ab" * 32,
                    "token": "token-of-an-edge-whose-server-is-away",
                },
                f,
            )
        path = self.log_path("edge.log")
        edge = self.spawn("portunus-client", "--bundle", bundle, twistd=["--logfile", path])
        _, new = yield self.rotate(edge, path, "control.retry_scheduled")
        self.assertIn("client.stopped", new)


class OneDirectoryTests(_ProcessCase):
    @inlineCallbacks
    def test_server_and_edge_run_from_one_directory(self) -> Any:
        """
        Both start with twistd's default pidfile handling from one working
        directory; each writes its own pidfile there (its pid inside) and
        removes it on a clean stop.
        """
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        server = self.start_server(cwd=cwd)
        yield server.wait_for("server.started")
        bundle = yield self.enroll_bundle("edge-next-door")
        edge = self.spawn("portunus-client", "--bundle", bundle, cwd=cwd)
        yield edge.wait_for("control.connected")
        self.assertFalse(edge.exited.called or server.exited.called)

        pids = {}
        for name in ("portunus-server.pid", "portunus-client.pid"):
            with open(os.path.join(cwd, name)) as f:
                pids[name] = int(f.read())
        assert server.transport is not None and edge.transport is not None
        self.assertEqual(
            pids,
            {
                "portunus-server.pid": server.transport.pid,
                "portunus-client.pid": edge.transport.pid,
            },
        )
        self.assertFalse(os.path.exists(os.path.join(cwd, "twistd.pid")))

        for process in (edge, server):
            process.signal(signal.SIGTERM)
            self.assertEqual((yield process.exited), 0, process.stderr.decode()[-2000:])
        self.assertEqual(os.listdir(cwd), [])
