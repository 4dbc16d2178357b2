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
code's number in the registry (C{reload_unsupported}: 1,
C{log_level_invalid}: 2).  Parsing, C{--help}, C{--version} and usage
errors are those of the other console scripts (L{portunus.cli.commandline}).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Sequence
from typing import IO, Any

from twisted.python import usage

from portunus.cli.commandline import (
    Command,
    Foreground,
    Program,
    Subcommand,
    react_main,
    run_program,
    sub_commands,
)
from portunus.cli.exits import USAGE_EXIT, CliError
from portunus.cli.output import Output
from portunus.reactors import IStatsClientReactor
from portunus.standalone.config import DEFAULT_STATS_SOCKET_PATH

__all__ = ["COMMANDS", "RUN", "StandaloneOptions", "main", "run"]

#: How long a reload or log-level request may take to be answered.
REQUEST_TIMEOUT_SECS = 30.0
#: The socket cannot be reached, or sent what this client cannot read (Portunus: 2).
STATS_CLIENT_ERROR = "stats_client_failed"


class Watcher(Output):
    """What a C{portunus-standalone} command runs with."""

    def __init__(self, reactor: IStatsClientReactor, out: IO[str], err: IO[str]) -> None:
        super().__init__(out)
        self.reactor = reactor
        self.err = err


class _SocketOptions(Subcommand):
    optParameters = [
        [
            "socket",
            "s",
            DEFAULT_STATS_SOCKET_PATH,
            "The forwarder's stats socket ([stats] socket_path).",
        ],
    ]


class StatsOptions(_SocketOptions):
    synopsis = "stats [--once] [--socket PATH]"
    longdesc = (
        "Watch a running forwarder: a terminal UI with Overview, Detail and Errors tabs "
        "(press ? in it for the keys), or with --once its Hello and first Snapshot as "
        "JSON. Exit codes: 0 quit or the forwarder stopped, 2 error."
    )
    optFlags = [["once", None, "Print the Hello and the first Snapshot as JSON and exit."]]


class ReloadOptions(_SocketOptions):
    synopsis = "reload [--socket PATH]"
    longdesc = "Ask a running forwarder to re-read its config."


class LogLevelOptions(_SocketOptions):
    synopsis = "log-level LEVEL [--socket PATH]"
    longdesc = (
        "Change a running forwarder's log level (debug, info, warn, error, critical) until "
        "it restarts; its workers follow."
    )

    def parseArgs(self, level: str) -> None:  # type: ignore[override]
        self["level"] = level


class CheckOptions(Subcommand):
    synopsis = "check [--config PATH]"
    longdesc = "Validate a config: print ok and exit 0, or every problem and exit 2."
    optParameters = [["config", "c", "portunus.toml", "Path of the standalone TOML config."]]


def _unreachable(error: Exception) -> CliError:
    return CliError(STATS_CLIENT_ERROR, str(error), exit_code=USAGE_EXIT)


async def check(watcher: Watcher, opts: usage.Options) -> None:
    from portunus.standalone.tap import Options

    try:
        Options(stdout=watcher.out, stderr=watcher.err).parseOptions(
            ["--config", opts["config"], "--check"]
        )
    except SystemExit as e:
        if e.code:
            raise CliError("config_invalid", "the config has problems (listed above)") from None


async def stats(watcher: Watcher, opts: usage.Options) -> None:
    from portunus.standalone.tui import FeedError, read_once, run_tui

    if opts["once"]:
        try:
            both = await read_once(watcher.reactor, opts["socket"])
        except FeedError as e:
            raise _unreachable(e) from None
        watcher.print(json.dumps(both, indent=2))
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CliError(
            STATS_CLIENT_ERROR,
            "the stats TUI needs a terminal; use --once for JSON",
            exit_code=USAGE_EXIT,
        )
    code, error = await run_tui(watcher.reactor, opts["socket"])
    if error is not None:
        raise CliError(STATS_CLIENT_ERROR, error, exit_code=code)


async def _request(watcher: Watcher, opts: usage.Options, **request: Any) -> None:
    from portunus.standalone.tui import FeedError, send_request

    try:
        reply = await send_request(watcher.reactor, opts["socket"], REQUEST_TIMEOUT_SECS, **request)
    except FeedError as e:
        raise _unreachable(e) from None
    if reply.get("ok") is not True:
        hint = reply.get("hint")
        message = f"{reply.get('message', '')}{f' ({hint})' if hint else ''}"
        raise CliError(str(reply.get("code")), message)
    fields = " ".join(f"{k}={v}" for k, v in reply.items() if k not in ("reply", "ok"))
    watcher.print(f"{reply['reply']}: ok{' ' + fields if fields else ''}")


async def reload(watcher: Watcher, opts: usage.Options) -> None:
    await _request(watcher, opts, cmd="reload")


async def log_level(watcher: Watcher, opts: usage.Options) -> None:
    await _request(watcher, opts, cmd="log-level", spec=opts["level"])


COMMANDS: tuple[Command[Watcher], ...] = (
    Command("check", CheckOptions, "Validate a config file.", check),
    Command("stats", StatsOptions, "Watch a running forwarder (TUI, or --once JSON).", stats),
    Command("reload", ReloadOptions, "Ask a running forwarder to re-read its config.", reload),
    Command("log-level", LogLevelOptions, "Change a running forwarder's log level.", log_level),
)
RUN = Foreground("run", "portunus-standalone", "Run the forwarder (twistd -n portunus-standalone).")


class StandaloneOptions(Program):
    program = "portunus-standalone"
    synopsis = "portunus-standalone COMMAND [options]"
    longdesc = (
        "The Portunus standalone forwarder. 'run' takes the options of "
        "'twistd -n portunus-standalone' (see 'portunus-standalone run --help')."
    )
    subCommands = sub_commands(COMMANDS, RUN)


async def run(argv: Sequence[str], reactor: IStatsClientReactor, out: IO[str], err: IO[str]) -> int:
    """Run C{portunus-standalone argv}; the exit status."""
    return await run_program(
        StandaloneOptions(),
        COMMANDS,
        argv,
        lambda options: Watcher(reactor, out, err),
        out,
        err,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The C{portunus-standalone} console script."""

    def work(reactor: Any, args: list[str]) -> Awaitable[int]:
        return run(args, reactor, sys.stdout, sys.stderr)

    react_main(argv, RUN, work)
