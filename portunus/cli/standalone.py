"""
C{portunus-standalone}: the standalone forwarder's command line.

    portunus-standalone run [twistd portunus-standalone options]
    portunus-standalone check [--config PATH]
    portunus-standalone stats [--once] [--socket PATH]
    portunus-standalone reload [--socket PATH]
    portunus-standalone log-level LEVEL [--socket PATH]

C{run} is C{twistd -n portunus-standalone ...} (same options, same
service); C{check} is its C{--check}.  The others talk to a running
forwarder's stats socket: C{stats} draws the terminal UI (or, with
C{--once}, prints the Hello and the first Snapshot as JSON), C{reload} and
C{log-level} send a request.  Exit codes: 0 done; 2 the socket cannot be
reached or spoke nonsense, or bad usage; a refused request exits with its
error code's number (C{reload_unsupported}: 1, C{log_level_invalid}: 2).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python import usage

from portunus.errors import ERRORS
from portunus.standalone.config import DEFAULT_STATS_SOCKET_PATH

__all__ = ["StandaloneOptions", "main", "run"]

#: Exit code for an unreachable or unreadable socket and for bad usage (Portunus: 2).
EXIT_ERROR = 2
#: How long a reload or log-level request may take to be answered.
REQUEST_TIMEOUT_SECS = 30.0


class _SocketOptions(usage.Options):
    optParameters = [
        [
            "socket",
            "s",
            DEFAULT_STATS_SOCKET_PATH,
            "The forwarder's stats socket ([stats] socket_path).",
        ],
    ]


class StatsOptions(_SocketOptions):
    synopsis = "[--once] [--socket PATH]"
    longdesc = (
        "Watch a running forwarder: a terminal UI with Overview, Detail and Errors tabs "
        "(press ? in it for the keys), or with --once the Hello and the first Snapshot as "
        "JSON. Exit codes: 0 quit or the forwarder stopped, 2 error."
    )
    optFlags = [["once", None, "Print the Hello and the first Snapshot as JSON and exit."]]


class ReloadOptions(_SocketOptions):
    synopsis = "[--socket PATH]"
    longdesc = "Ask a running forwarder to re-read its config."


class LogLevelOptions(_SocketOptions):
    synopsis = "LEVEL [--socket PATH]"
    longdesc = (
        "Change a running forwarder's log level (debug, info, warn, error, critical) until "
        "it restarts; its workers follow."
    )

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # LEVEL may come first (log-level debug --socket PATH): getopt stops
        # at the first word, so hand it the options first.
        args = list(sys.argv[1:] if options is None else options)
        flags: list[str] = []
        words: list[str] = []
        while args:
            arg = args.pop(0)
            if arg == "--":
                words += args
                break
            if arg in ("--socket", "-s"):
                flags += [arg, *args[:1]]
                del args[:1]
            elif arg.startswith("-") and arg != "-":
                flags.append(arg)
            else:
                words.append(arg)
        super().parseOptions([*flags, "--", *words])

    def parseArgs(self, *args: str) -> None:
        if len(args) != 1:
            raise usage.UsageError("give one LEVEL: debug, info, warn, error or critical")
        self["level"] = args[0]


class CheckOptions(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = "Validate a config: print ok and exit 0, or every problem and exit 2."
    optParameters = [["config", "c", "portunus.toml", "Path of the standalone TOML config."]]


class StandaloneOptions(usage.Options):
    synopsis = "run|check|stats|reload|log-level [options]"
    longdesc = (
        "The Portunus standalone forwarder. 'run' takes the options of "
        "'twistd -n portunus-standalone' (see 'portunus-standalone run --help')."
    )
    subCommands: list[list[Any]] = [
        ["run", None, usage.Options, "Run the forwarder (twistd -n portunus-standalone ...)."],
        ["check", None, CheckOptions, "Validate a config file."],
        ["stats", None, StatsOptions, "Watch a running forwarder (TUI, or --once JSON)."],
        ["reload", None, ReloadOptions, "Ask a running forwarder to re-read its config."],
        ["log-level", None, LogLevelOptions, "Change a running forwarder's log level."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            names = ", ".join(str(command[0]) for command in self.subCommands)
            raise usage.UsageError(f"name a command: {names}")


async def run(argv: Sequence[str], reactor: Any, out: IO[str], err: IO[str]) -> int:
    """Run C{portunus-standalone argv} (not C{run}) and return the exit status."""
    from portunus.standalone.tui import FeedError, read_once, run_tui, send_request

    options = StandaloneOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        err.write(f"error: usage: {e}; run portunus-standalone [COMMAND] --help\n")
        return EXIT_ERROR
    sub: Any = options.subOptions
    try:
        if options.subCommand == "check":
            return _check(sub["config"], out, err)
        if options.subCommand == "stats" and sub["once"]:
            both = await read_once(reactor, sub["socket"])
            out.write(json.dumps(both, indent=2) + "\n")
            return 0
        if options.subCommand == "stats":
            if not (sys.stdin.isatty() and sys.stdout.isatty()):
                err.write("error: the stats TUI needs a terminal; use --once for JSON\n")
                return EXIT_ERROR
            code, error = await run_tui(reactor, sub["socket"])
            if error is not None:
                err.write(f"error: {error}\n")
            return int(code)
        if options.subCommand == "reload":
            request: dict[str, Any] = {"cmd": "reload"}
        else:
            request = {"cmd": "log-level", "spec": sub["level"]}
        reply = await send_request(reactor, sub["socket"], REQUEST_TIMEOUT_SECS, **request)
    except FeedError as e:
        err.write(f"error: {e}\n")
        return EXIT_ERROR
    return _report(reply, out, err)


def _check(config: str, out: IO[str], err: IO[str]) -> int:
    from portunus.standalone.tap import Options

    try:
        Options(stdout=out, stderr=err).parseOptions(["--config", config, "--check"])
    except SystemExit as e:
        return int(e.code or 0)
    return 0  # pragma: no cover - --check always exits


def _report(reply: dict[str, Any], out: IO[str], err: IO[str]) -> int:
    if reply.get("ok") is True:
        fields = {k: v for k, v in reply.items() if k not in ("reply", "ok")}
        details = " ".join(f"{k}={v}" for k, v in fields.items())
        out.write(f"{reply.get('reply')}: ok{' ' + details if details else ''}\n")
        return 0
    code = str(reply.get("code"))
    message = reply.get("message", "")
    hint = reply.get("hint")
    err.write(f"error: {code}: {message}{f' ({hint})' if hint else ''}\n")
    known = ERRORS.get(code)
    return known.exit_code if known is not None else 1


def main(argv: Sequence[str] | None = None) -> None:
    """The C{portunus-standalone} console script."""
    from twisted.internet import task

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:
        from twisted.scripts.twistd import run as twistd

        sys.argv = ["twistd", "--nodaemon", "--pidfile=", "portunus-standalone", *args[1:]]
        twistd()
        return

    def start(reactor: Any) -> Deferred[None]:
        async def work() -> None:
            code = await run(args, reactor, sys.stdout, sys.stderr)
            sys.stdout.flush()
            if code:
                raise SystemExit(code)

        return ensureDeferred(work())

    task.react(start)
