"""
What the server's and the edge's twistd plugins share: the logging
options, where the log goes (stderr, or twistd's C{--logfile}, reopened on
SIGHUP), installing the chosen log observer on the application twistd
hands a plugin's service, and a pidfile named after the plugin.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from portunus.logging import LOG_FORMATS, LogSink, ReopeningFile, parse_log_level

__all__ = [
    "LOG_OPTIONS",
    "LoggingOptions",
    "SighupService",
    "install_log_observer",
    "name_pidfile",
    "open_log_sink",
]

log = Logger(namespace="portunus.process")

#: --log-level and --log-format as the server and the client take them.
LOG_OPTIONS: list[list[Any]] = [
    ["log-level", None, "info", "debug, info, warn, error or critical."],
    ["log-format", None, "json", "json or pretty."],
]


class LoggingOptions(usage.Options):
    """Options with --log-level/--log-format checked; C{self.level} after parsing."""

    def postOptions(self) -> None:
        try:
            self.level = parse_log_level(self["log-level"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}")


def _twistd_option(options: usage.Options, name: str) -> Any:
    """twistd's own option C{name} when C{options} are a plugin's under twistd, else None."""
    parent = getattr(options, "parent", None)
    return parent.get(name) if isinstance(parent, usage.Options) else None


def open_log_sink(options: usage.Options) -> LogSink:
    """
    Where the plugin's log lines go: twistd's C{--logfile PATH} (a
    L{ReopeningFile}; C{-} is stdout), else stderr.  twistd itself ignores
    C{--logfile} once the application has its own observer, so the plugin
    honours it here.

    @raise SystemExit: 1, with the reason on stderr, when PATH cannot be
        opened for appending.
    """
    path = _twistd_option(options, "logfile")
    if not path:
        return sys.stderr
    if path == "-":
        return sys.stdout
    try:
        return ReopeningFile(path)
    except OSError as e:
        sys.stderr.write(
            f"error: log_file_unwritable: cannot open --logfile {path}: "
            f"{e.strerror or e}; choose a path the service user can write\n"
        )
        sys.stderr.flush()
        raise SystemExit(1) from None


#: twistd's default --pidfile, which every plugin started in one directory would share.
TWISTD_DEFAULT_PIDFILE = "twistd.pid"


def name_pidfile(options: usage.Options, name: str) -> None:
    """
    Under twistd, replace its default pidfile (C{./twistd.pid}) with
    C{./<name>}, so a server, an edge and a standalone forwarder started
    from one directory do not refuse each other.  An explicit
    C{--pidfile} (other than the bare default name) or C{--pidfile=} is
    kept.  Call from the plugin options' C{postOptions}: twistd reads the
    pidfile only after its plugin's options are parsed.
    """
    parent = getattr(options, "parent", None)
    if isinstance(parent, usage.Options) and parent.get("pidfile") == TWISTD_DEFAULT_PIDFILE:
        parent["pidfile"] = name


def install_log_observer(parent: Any, observer: ILogObserver) -> None:
    """
    twistd gives the application to the service a plugin made; an
    ILogObserver component on it is how an application chooses its log
    format (an explicit --logger on the command line still wins).
    """
    if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
        parent.setComponent(ILogObserver, observer)


class SighupService(Service):
    """
    SIGHUP never stops the process (its default action): it reopens the
    log file, as logrotate's C{postrotate} expects, and is logged as
    C{process.sighup}.  Nothing is reloaded.

    @param sink: where the log goes; a L{ReopeningFile} is reopened.
    @param install: C{signal.signal} (tests pass a fake).
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        sink: LogSink,
        install: Callable[[int, Any], Any] = signal.signal,
    ) -> None:
        self._reactor = reactor
        self._file = sink if isinstance(sink, ReopeningFile) else None
        self._install = install
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        try:
            self._previous = self._install(signal.SIGHUP, self._on_signal)
        except ValueError:
            # Not the main thread (a test runner): nobody can signal us here.
            self._previous = None

    def stopService(self) -> Any:
        if self._previous is not None:
            self._install(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()

    def _on_signal(self, signum: int, frame: object) -> None:
        # Signal context: only hand over to the reactor thread.
        self._reactor.callFromThread(self.hangup)

    def hangup(self) -> None:
        """What SIGHUP does: reopen the log file, if there is one, and say so."""
        if self._file is None:
            log.info(
                "SIGHUP received: logs go to stderr, nothing to reopen (there is no reload)",
                event="process.sighup",
                path=None,
            )
            return
        try:
            self._file.reopen()
        except OSError as e:
            log.error(
                "SIGHUP received but {path} cannot be reopened ({reason}); "
                "still writing to the file opened before",
                event="process.log_reopen_failed",
                path=self._file.path,
                reason=e.strerror or str(e),
            )
            return
        log.info(
            "SIGHUP received: reopened {path} (there is no reload)",
            event="process.sighup",
            path=self._file.path,
        )
