"""
The standalone's stats socket from the outside: a real forwarder process,
C{portunus-standalone stats --once}, C{log-level}, and the terminal UI
driven in tmux.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests._net import LOOPBACK, collect, echo_factory, free_port
from tests.e2e._process import TwistdProcess, spawn_standalone
from tests.standalone._socket import short_tmp_dir

reactor: Any = _reactor

CLI = [sys.executable, "-c", "from portunus.cli.standalone import main; main()"]
PAYLOAD = b"p" * 100_000
#: Every wait on the screen or a process ends by this deadline.
DEADLINE_SECS = 20.0


def config_text(listen_port: int, target_port: int, socket_path: str) -> str:
    return f"""
[global]
log_level = "info"
listen_addresses = ["{LOOPBACK}"]
[stats]
socket_path = "{socket_path}"
refresh_ms = 250
[[rule]]
name = "echo"
listen_port = {listen_port}
target = "{LOOPBACK}:{target_port}"
"""


class StatsProcessTestCase(TestCase):
    timeout = 90

    @inlineCallbacks
    def start_forwarder(self, *extra: str) -> Any:
        """A standalone forwarding one TCP rule to an echo target; waits for its socket."""
        target = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(target.stopListening)
        self.listen_port = free_port()
        self.socket_path = os.path.join(short_tmp_dir(self, "e2e"), "standalone.sock")
        config = FilePath(self.mktemp())
        config.setContent(
            config_text(self.listen_port, target.getHost().port, self.socket_path).encode()
        )
        process: TwistdProcess = spawn_standalone(reactor, config.path, *extra)

        def reap() -> Deferred[int]:
            if not process.exited.called:
                process.signal(signal.SIGTERM)
            return process.exited

        self.addCleanup(reap)
        yield process.wait_for("standalone.stats_socket_listening", path=self.socket_path)
        yield process.wait_for("standalone.started")
        self.process = process

    def cli(self, *argv: str) -> Deferred[tuple[bytes, bytes, int]]:
        return getProcessOutputAndValue(
            CLI[0], [*CLI[1:], *argv, "--socket", self.socket_path], env=dict(os.environ)
        )


class OnceAndRequestTests(StatsProcessTestCase):
    @inlineCallbacks
    def test_once_reports_forwarded_bytes(self) -> Any:
        """--once against a running forwarder: its rule, and the bytes it carried."""
        yield self.start_forwarder()
        echoed = yield collect(reactor, self.listen_port, PAYLOAD)
        self.assertEqual(len(echoed), len(PAYLOAD))
        out, err, code = yield self.cli("stats", "--once")
        self.assertEqual(code, 0, err)
        both = json.loads(out)
        (rule,) = both["hello"]["rules"]
        self.assertEqual((rule["name"], rule["listen"]), ("echo", str(self.listen_port)))
        (counters,) = both["snapshot"]["r"]
        self.assertEqual(
            (counters["in"], counters["out"], counters["conns_total"]),
            (len(PAYLOAD), len(PAYLOAD), 1),
        )
        self.assertGreater(both["snapshot"]["process"]["fd_open"], 0)

    @inlineCallbacks
    def test_log_level_and_reload(self) -> Any:
        """log-level reaches the running process; reload answers that it cannot yet."""
        yield self.start_forwarder()
        out, err, code = yield self.cli("log-level", "debug")
        self.assertEqual((code, out), (0, b"log-level: ok level=debug previous=info\n"), err)
        yield self.process.wait_for("standalone.log_level_changed", current="debug")
        out, err, code = yield self.cli("reload")
        self.assertEqual((code, out), (1, b""))
        self.assertIn(b"reload_unsupported", err)

    @inlineCallbacks
    def test_log_level_reaches_workers(self) -> Any:
        """
        With --workers 2, log-level debug reaches the workers: a connection
        reset by its client is then logged, a debug event (proxy.splice_reset
        on the splice path, rule.conn_error in userspace), by the worker that
        served it.
        """
        yield self.start_forwarder("--workers", "2")
        yield self.process.wait_for_count("standalone.worker_started", 2)
        _, err, code = yield self.cli("log-level", "debug")
        self.assertEqual(code, 0, err)
        # The level travels to each worker over its link; a probe through the
        # socket comes back only after the main process has sent it.
        yield self.cli("stats", "--once")
        with socket.create_connection((LOOPBACK, self.listen_port), timeout=5) as sock:
            sock.sendall(b"x")
            # Close with a reset, not a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        results = yield DeferredList(
            [
                self.process.wait_for("proxy.splice_reset"),
                self.process.wait_for("rule.conn_error", rule="echo"),
            ],
            fireOnOneCallback=True,
            consumeErrors=True,
        )
        event, _ = results
        self.assertEqual(event["level"], "debug")
        self.assertIn("worker", event)

    @inlineCallbacks
    def test_socket_removed_on_shutdown(self) -> Any:
        """SIGTERM: the forwarder drains, exits 0 and removes its socket."""
        yield self.start_forwarder()
        # Served once: the reactor runs, with its signal handlers.
        _, err, code = yield self.cli("stats", "--once")
        self.assertEqual(code, 0, err)
        self.process.signal(signal.SIGTERM)
        code = yield self.process.exited
        self.assertEqual(code, 0, self.process.stderr.decode()[-3000:])
        self.assertFalse(os.path.exists(self.socket_path))


class TuiTests(StatsProcessTestCase):
    """The terminal UI in a real terminal (tmux), keys sent as a user types them."""

    def setUp(self) -> None:
        if shutil.which("tmux") is None:
            raise self.skipTest("tmux is not installed")
        # A server of our own, its socket in a directory removed afterwards.
        directory = short_tmp_dir(self, "tmux")
        os.makedirs(directory)
        self.tmux = ["tmux", "-S", os.path.join(directory, "tmux.sock")]
        self.addCleanup(self.run_tmux, "kill-server")

    def run_tmux(self, *args: str) -> Deferred[tuple[bytes, bytes, int]]:
        return getProcessOutputAndValue(self.tmux[0], [*self.tmux[1:], *args], env=dict(os.environ))

    @inlineCallbacks
    def screen(self) -> Any:
        out, _, _ = yield self.run_tmux("capture-pane", "-p", "-t", "tui")
        return out.decode("utf-8", "replace")

    @inlineCallbacks
    def wait_for_screen(self, what: str, check: Callable[[str], bool]) -> Any:
        """Poll the pane until C{check} holds; fail with the screen at the deadline."""
        deadline = reactor.seconds() + DEADLINE_SECS
        while True:
            text = yield self.screen()
            if check(text):
                return text
            if reactor.seconds() > deadline:
                self.fail(f"no {what} within {DEADLINE_SECS:g} s; the screen:\n{text}")
            yield deferLater(reactor, 0.1, lambda: None)

    def send(self, *keys: str) -> Deferred[tuple[bytes, bytes, int]]:
        return self.run_tmux("send-keys", "-t", "tui", *keys)

    @inlineCallbacks
    def test_overview_detail_errors_pause_sort_quit(self) -> Any:
        """
        Overview shows the rule with non-zero totals; Tab goes to Detail and
        Errors; p pauses; s sorts by total; q quits with exit code 0.
        """
        yield self.start_forwarder()
        yield collect(reactor, self.listen_port, PAYLOAD)
        command = " ".join(shlex.quote(a) for a in [*CLI, "stats", "--socket", self.socket_path])
        yield self.run_tmux(
            "new-session",
            "-d",
            "-s",
            "tui",
            "-x",
            "160",
            "-y",
            "50",
            f"{command}; echo TUI-EXIT=$?; sleep 60",
        )

        def rule_row(text: str) -> str:
            return next((line for line in text.splitlines() if line.startswith("echo ")), "")

        text = yield self.wait_for_screen(
            "Overview row with totals", lambda t: "97.7 KiB" in rule_row(t)
        )
        row = rule_row(text)
        self.assertIn(str(self.listen_port), row)
        self.assertIn("0/1", row)  # no connection open, one in total
        self.assertIn("LIVE", text)

        yield self.send("Tab")
        text = yield self.wait_for_screen("Detail", lambda t: "client → target" in t)
        self.assertIn(f"▶ {LOOPBACK}:", text)
        self.assertIn("splice", text)
        yield self.wait_for_screen("a probe RTT", lambda t: "ms" in _active_target_line(t))

        yield self.send("Tab")
        yield self.wait_for_screen("Errors", lambda t: "No error counted by any rule" in t)

        yield self.send("p")
        yield self.wait_for_screen("PAUSED", lambda t: "PAUSED" in t.splitlines()[0])
        yield self.send("s")
        yield self.wait_for_screen("sort by total", lambda t: "sort: total" in t)
        yield self.send("p", "?")
        yield self.wait_for_screen("help", lambda t: "Keys (Esc closes)" in t)
        yield self.send("Escape")
        # Another key right after Esc would read as Alt+key: wait for Esc.
        yield self.wait_for_screen("help closed", lambda t: "Keys (Esc closes)" not in t)
        yield self.send("q")
        yield self.wait_for_screen("exit code", lambda t: "TUI-EXIT=" in t)
        text = yield self.screen()
        self.assertIn("TUI-EXIT=0", text)


def _active_target_line(text: str) -> str:
    return next((line for line in text.splitlines() if "▶" in line), "")
