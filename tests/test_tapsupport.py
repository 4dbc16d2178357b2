"""
What the server's and the edge's plugins share: the log file twistd's
C{--logfile} names, reopened on SIGHUP (L{ReopeningFile},
L{SighupService}), and where the log goes (L{open_log_sink}).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from typing import Any

from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from portunus.client import tap as client_tap
from portunus.logging import JSONLinesObserver, ReopeningFile
from portunus.server import tap as server_tap
from portunus.standalone import tap as standalone_tap
from portunus.tapsupport import SighupService, open_log_sink


class _Reactor:
    """callFromThread runs the call at once (the signal handler's hand-over)."""

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


class _Signals:
    """signal.signal, recorded."""

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {signal.SIGHUP: signal.SIG_DFL}

    def __call__(self, signum: int, handler: Any) -> Any:
        previous, self.handlers[signum] = self.handlers.get(signum), handler
        return previous


def lines(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f]


class ReopeningFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "portunus.log")

    def test_reopen_after_rename(self) -> None:
        """After a rename and reopen, new lines go to a new file at the path."""
        log_file = ReopeningFile(self.path)
        self.addCleanup(log_file.close)
        observer = JSONLinesObserver(log_file, LogLevel.info)
        observer({"log_level": LogLevel.info, "log_format": "before", "event": "a"})
        os.rename(self.path, self.path + ".1")
        log_file.reopen()
        observer({"log_level": LogLevel.info, "log_format": "after", "event": "b"})
        self.assertEqual([e["msg"] for e in lines(self.path + ".1")], ["before"])
        self.assertEqual([e["msg"] for e in lines(self.path)], ["after"])

    def test_appends_and_is_not_world_readable(self) -> None:
        """An existing file is appended to; a new one gets no permission for others."""
        with open(self.path, "w") as f:
            f.write("kept\n")
        log_file = ReopeningFile(self.path)
        log_file.write("added\n")
        log_file.close()
        with open(self.path) as f:
            self.assertEqual(f.read(), "kept\nadded\n")
        os.unlink(self.path)
        ReopeningFile(self.path).close()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode) & 0o007, 0)

    def test_failed_reopen_keeps_the_old_file(self) -> None:
        """A path that cannot be opened any more: OSError, and writing goes on as before."""
        log_file = ReopeningFile(self.path)
        self.addCleanup(log_file.close)
        os.rename(self.path, self.path + ".1")
        os.rename(self.dir, self.dir + ".moved")
        self.addCleanup(os.rename, self.dir + ".moved", self.dir)
        self.assertRaises(OSError, log_file.reopen)
        log_file.write("still here\n")
        log_file.flush()
        with open(os.path.join(self.dir + ".moved", "portunus.log.1")) as f:
            self.assertEqual(f.read(), "still here\n")


class SighupServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.signals = _Signals()

    def start(self, sink: Any) -> SighupService:
        service = SighupService(_Reactor(), sink, install=self.signals)
        service.startService()
        return service

    def named(self, name: str) -> list[LogEvent]:
        return [e for e in self.events if e.get("event") == name]

    def test_sighup_reopens_the_log_file(self) -> None:
        """The handler reopens the file, then logs process.sighup naming it."""
        path = os.path.join(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        log_file = ReopeningFile(path)
        self.addCleanup(log_file.close)
        self.start(log_file)
        os.rename(path, path + ".1")
        self.signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
        self.assertTrue(os.path.exists(path))
        [event] = self.named("process.sighup")
        self.assertEqual((event["path"], event["log_level"]), (path, LogLevel.info))

    def test_sighup_with_stderr(self) -> None:
        """Logging to stderr, SIGHUP is still handled: logged, nothing to reopen."""
        self.start(sys.stderr)
        self.signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
        [event] = self.named("process.sighup")
        self.assertIsNone(event["path"])

    def test_stop_restores_the_previous_handler(self) -> None:
        """stopService puts back what was installed before."""
        service = self.start(sys.stderr)
        self.assertNotEqual(self.signals.handlers[signal.SIGHUP], signal.SIG_DFL)
        service.stopService()
        self.assertEqual(self.signals.handlers[signal.SIGHUP], signal.SIG_DFL)


class OpenLogSinkTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Any:
        config = ServerOptions()
        config.parseOptions([*argv, "portunus-server"])
        return config.subOptions

    def test_logfile_is_a_reopening_file(self) -> None:
        """twistd --logfile PATH: the plugin writes to PATH itself (twistd would not)."""
        path = os.path.abspath(self.mktemp())
        sink = open_log_sink(self.parse("--logfile", path))
        self.addCleanup(sink.close)  # type: ignore[union-attr]
        self.assertIsInstance(sink, ReopeningFile)
        self.assertEqual(sink.path, path)  # type: ignore[union-attr]

    def test_default_is_stderr(self) -> None:
        """Without --logfile (or outside twistd) the log is stderr; '-' is stdout."""
        self.assertIs(open_log_sink(self.parse()), sys.stderr)
        self.assertIs(open_log_sink(server_tap.Options()), sys.stderr)
        self.assertIs(open_log_sink(self.parse("--logfile", "-")), sys.stdout)


class PidfileTests(SynchronousTestCase):
    """Each plugin's default pidfile is its own, so they can share a directory."""

    def pidfile(self, *argv: str) -> str:
        config = ServerOptions()
        config.parseOptions(list(argv))
        return str(config["pidfile"])

    def test_default_is_named_after_the_plugin(self) -> None:
        """twistd's ./twistd.pid becomes ./portunus-server.pid, -client.pid, -standalone.pid."""
        cwd = os.getcwd()
        self.assertEqual(self.pidfile("portunus-server"), os.path.join(cwd, server_tap.PIDFILE))
        self.assertEqual(self.pidfile("portunus-client"), os.path.join(cwd, client_tap.PIDFILE))
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write('[[rule]]\nname = "r"\nlisten_port = 18080\ntarget = "127.0.0.1:18081"\n')
        self.assertEqual(
            self.pidfile("portunus-standalone", "--config", config),
            os.path.join(cwd, standalone_tap.PIDFILE),
        )

    def test_explicit_pidfile_is_kept(self) -> None:
        """--pidfile PATH and --pidfile= (none) are the operator's choice."""
        self.assertEqual(self.pidfile("--pidfile", "/run/x.pid", "portunus-server"), "/run/x.pid")
        self.assertEqual(self.pidfile("--pidfile=", "portunus-client"), "")
