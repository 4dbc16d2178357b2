"""
C{twistd portunus-standalone}: command-line options and the composition root.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.application.service import IService
from twisted.python import usage

from portunus.bounds import WORKERS
from portunus.dataplane import SUPPORTED_PROTOCOLS
from portunus.dataplane.workers.pool import parse_worker_count
from portunus.errors import PortunusError
from portunus.logging import make_observer, parse_log_level
from portunus.reactors import IProcessReactor, installed_reactor
from portunus.standalone.config import ConfigError, StandaloneConfig, load_config, socket_path
from portunus.standalone.forwarder import forwarder_for
from portunus.standalone.service import StandaloneService
from portunus.tapsupport import name_pidfile

__all__ = ["Options", "makeService"]

#: Exit code for a configuration error (Portunus: 2).
EXIT_CONFIG = 2

#: twistd's pidfile unless --pidfile says otherwise (not twistd.pid: see name_pidfile).
PIDFILE = "portunus-standalone.pid"


class Options(usage.Options):
    synopsis = (
        "[--config PATH] [--check] [--log-level LEVEL] [--log-format json|pretty] [--workers N] "
        "[--stats-socket PATH | --no-stats]"
    )
    longdesc = (
        "Forward TCP and UDP ports as a TOML file says. "
        "Exit codes: 0 clean shutdown, 1 a rule failed to bind, 2 configuration error."
    )
    optParameters = [
        ["config", "c", "portunus.toml", "Path of the standalone TOML config."],
        ["log-level", None, None, "debug, info, warn or error (default: the config's, warn)."],
        ["log-format", None, None, "json (default) or pretty (default: the config's)."],
        [
            "workers",
            None,
            str(WORKERS.fallback),
            f"Worker processes serving the rules: a number ({WORKERS.span('-')}) or 'auto' "
            "(one per CPU).",
        ],
        [
            "stats-socket",
            None,
            None,
            "Serve the stats socket here (default: [stats] socket_path).",
            socket_path,
        ],
    ]
    optFlags = [
        ["check", None, "Validate the config, print 'ok' and exit 0; print every error, exit 2."],
        ["no-stats", None, "Do not serve the stats socket."],
    ]

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        super().__init__()
        self._stdout = stdout if stdout is not None else sys.stdout
        self._stderr = stderr if stderr is not None else sys.stderr
        self.config: StandaloneConfig | None = None

    def _fail(self, lines: list[str]) -> None:
        for line in lines:
            self._stderr.write(f"{line}\n")
        self._stderr.flush()
        raise SystemExit(EXIT_CONFIG)

    def postOptions(self) -> None:
        name_pidfile(self, PIDFILE)
        try:
            self.config = load_config(self["config"], SUPPORTED_PROTOCOLS)
        except ConfigError as e:
            self._fail(
                [f"error: {len(e.issues)} problem(s) in the configuration:"]
                + [f"- {issue}" for issue in e.issues]
            )
        assert self.config is not None
        try:
            self.level = parse_log_level(self["log-level"] or self.config.log_level)
            self.log_format = self["log-format"] or self.config.log_format
            make_observer(self.log_format, self.level, self._stderr)
        except ValueError as e:
            self._fail([f"error: {e}"])
        try:
            self.workers = parse_worker_count(self["workers"])
        except ValueError as e:
            self._fail([f"error: {e}"])
        if self["check"]:
            self._stdout.write("ok\n")
            self._stdout.flush()
            raise SystemExit(0)


def makeService(options: Options, reactor: IProcessReactor | None = None) -> IService:
    if reactor is None:
        reactor = installed_reactor()
    assert options.config is not None
    observer = make_observer(options.log_format, options.level, sys.stderr)
    try:
        forwarder = forwarder_for(
            options.config,
            reactor,
            workers=options.workers,
            log_level=options.level.name,
            log_format=options.log_format,
        )
    except PortunusError as e:
        sys.stderr.write(f"error: {e.message}\n")
        raise SystemExit(EXIT_CONFIG) from e
    return StandaloneService(
        options.config,
        reactor,
        forwarder=forwarder,
        log_observer=observer,
        stats_socket=stats_socket_path(options),
    )


def stats_socket_path(options: Options) -> str | None:
    """Where the stats socket goes, or None when it is off."""
    assert options.config is not None
    if options["no-stats"] or not options.config.stats_enabled:
        return None
    return str(options["stats-socket"] or options.config.stats_socket_path)
