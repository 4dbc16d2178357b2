"""
Tests for L{portunus.cli.standalone}: the C{portunus-standalone} command
line (C{run} is twistd's and is covered by the process tests).
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import ensureDeferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus import __version__
from portunus.cli.standalone import LogLevelOptions, main, run
from portunus.errors import PortunusError
from tests.standalone._socket import serve_stats_socket

reactor: Any = _reactor

VALID = '[[rule]]\nname = "web"\nlisten_port = 8080\ntarget = "127.0.0.1:80"\n'


class Commands:
    def reload(self) -> dict[str, Any]:
        raise PortunusError("reload_unsupported", "this forwarder cannot reload yet")

    def set_log_level(self, spec: str) -> dict[str, Any]:
        if spec == "loud":
            raise PortunusError("log_level_invalid", "'loud' is not a log level")
        return {"level": spec, "previous": "warn"}


class CliTestCase(TestCase):
    timeout = 20

    def invoke(self, *argv: str) -> Any:
        out, err = io.StringIO(), io.StringIO()
        d = ensureDeferred(run(list(argv), reactor, out, err))
        return d.addCallback(lambda code: (code, out.getvalue(), err.getvalue()))


class OfflineTests(CliTestCase):
    @inlineCallbacks
    def test_usage_errors_exit_2(self) -> Any:
        """No command, an unknown one, or log-level without a level: usage, exit 2."""
        for argv in ((), ("frobnicate",), ("log-level",), ("log-level", "a", "b")):
            code, out, err = yield self.invoke(*argv)
            self.assertEqual((code, out), (2, ""), argv)
            self.assertIn("error: usage:", err)

    @inlineCallbacks
    def test_check(self) -> Any:
        """check prints ok for a valid config, every problem and exit 2 otherwise."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(VALID)
        code, out, _ = yield self.invoke("check", "--config", path)
        self.assertEqual((code, out), (0, "ok\n"))
        with open(path, "w") as f:
            f.write(VALID.replace("8080", "80800"))
        code, out, err = yield self.invoke("check", "-c", path)
        self.assertEqual((code, out), (2, ""))
        self.assertIn("listen_port", err)

    @inlineCallbacks
    def test_stats_needs_a_terminal(self) -> Any:
        """stats without a terminal says to use --once, exit 2."""
        if os.isatty(0) and os.isatty(1):
            raise self.skipTest("runs under a terminal")
        code, _, err = yield self.invoke("stats", "--socket", "/nowhere")
        self.assertEqual(code, 2)
        self.assertIn("use --once", err)

    @inlineCallbacks
    def test_unreachable_socket(self) -> Any:
        """--once and requests to a socket nobody serves: the reason, exit 2."""
        for argv in (("stats", "--once"), ("reload",), ("log-level", "info")):
            code, out, err = yield self.invoke(*argv, "--socket", "/nowhere/s.sock")
            self.assertEqual((code, out), (2, ""))
            self.assertIn("cannot connect to the stats socket /nowhere/s.sock", err)


class ParsingTests(CliTestCase):
    @inlineCallbacks
    def test_help_and_version(self) -> Any:
        """--help lists every command, run included; --version prints the version."""
        code, out, _ = yield self.invoke("--help")
        self.assertEqual(code, 0)
        for name in ("run", "check", "stats", "reload", "log-level"):
            self.assertIn(name, out)
        code, out, _ = yield self.invoke("stats", "--help")
        self.assertEqual(code, 0)
        self.assertIn("--once", out)
        code, out, _ = yield self.invoke("--version")
        self.assertEqual((code, out), (0, f"portunus-standalone {__version__}\n"))


class ForegroundTests(SynchronousTestCase):
    def test_run_is_twistd_in_the_foreground(self) -> None:
        """portunus-standalone run ARGS is twistd --nodaemon --pidfile= portunus-standalone ARGS."""
        from twisted.scripts import twistd

        seen: list[list[str]] = []
        self.patch(sys, "argv", ["portunus-standalone"])
        self.patch(twistd, "run", lambda: seen.append(list(sys.argv)))
        main(["run", "--config", "p.toml", "--workers", "2"])
        self.assertEqual(
            seen,
            [
                [
                    "twistd",
                    "--nodaemon",
                    "--pidfile=",
                    "portunus-standalone",
                    "--config",
                    "p.toml",
                    "--workers",
                    "2",
                ]
            ],
        )


class LevelArgumentTests(SynchronousTestCase):
    def test_level_before_or_after_the_socket(self) -> None:
        """log-level takes LEVEL before or after --socket."""
        for argv in (
            ["debug", "--socket", "/s"],
            ["--socket", "/s", "debug"],
            ["-s", "/s", "debug"],
            ["--socket=/s", "debug"],
        ):
            options = LogLevelOptions()
            options.parseOptions(argv)
            self.assertEqual((options["level"], options["socket"]), ("debug", "/s"), argv)


class OnlineTests(CliTestCase):
    def setUp(self) -> None:
        self.path = serve_stats_socket(self, reactor, Commands())

    @inlineCallbacks
    def test_once_prints_json(self) -> Any:
        """--once prints {hello, snapshot} as indented JSON."""
        code, out, _ = yield self.invoke("stats", "--once", "--socket", self.path)
        self.assertEqual(code, 0)
        both = json.loads(out)
        self.assertEqual((both["hello"]["v"], both["snapshot"]["seq"]), (1, 1))
        self.assertIn('\n  "hello": {', out)

    @inlineCallbacks
    def test_log_level(self) -> Any:
        """log-level prints what changed; a refused level exits with its code's number."""
        code, out, _ = yield self.invoke("log-level", "debug", "--socket", self.path)
        self.assertEqual((code, out), (0, "log-level: ok level=debug previous=warn\n"))
        code, out, err = yield self.invoke("log-level", "loud", "--socket", self.path)
        self.assertEqual((code, out), (2, ""))
        self.assertIn("error: log_level_invalid: 'loud' is not a log level (give one level", err)

    @inlineCallbacks
    def test_reload_refused(self) -> Any:
        """reload, refused as unsupported: the code, message and hint, exit 1."""
        code, out, err = yield self.invoke("reload", "--socket", self.path)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("error: reload_unsupported: this forwarder cannot reload yet (restart", err)
