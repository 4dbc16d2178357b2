"""
C{portunus-client}: the edge's command line.

    portunus-client enroll 'portunus://HOST:PORT/enroll?pin=sha256:<hex>&code=<code>' [--out PATH]
    portunus-client run [twistd portunus-client options]

C{enroll} redeems the code over pinned TLS and writes the bundle (0600),
printing its path; any failure exits 1.  C{run} is
C{twistd -n portunus-client ...}.  Parsing, C{--help}, C{--version} and
usage errors are those of C{portunus-server} (L{portunus.cli.commandline}).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Mapping, Sequence
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
from portunus.cli.exits import CliError
from portunus.cli.output import Output
from portunus.client.enroll import enroll
from portunus.control.enrollment import default_enroll_out, parse_enroll_uri, write_bundle
from portunus.errors import PortunusError

__all__ = ["COMMANDS", "RUN", "ClientOptions", "main", "run"]


class Edge(Output):
    """What a C{portunus-client} command runs with."""

    def __init__(self, reactor: Any, env: Mapping[str, str], out: IO[str]) -> None:
        super().__init__(out)
        self.reactor = reactor
        self.env = env


class EnrollOptions(Subcommand):
    synopsis = "enroll URI [--out PATH]"
    longdesc = (
        "Redeem an enrollment URI (portunus://HOST:PORT/enroll?pin=sha256:<hex>&code=<code>, "
        "as portunus-server enroll-client prints it), write the bundle (0600) and print its "
        "path. Any failure exits 1."
    )
    optParameters = [["out", "o", None, "Bundle path (default: Portunus' lookup order)."]]

    def parseArgs(self, uri: str) -> None:  # type: ignore[override]
        self["uri"] = uri


async def enroll_bundle(edge: Edge, opts: usage.Options) -> None:
    path = opts["out"] or default_enroll_out(edge.env)
    try:
        uri = parse_enroll_uri(opts["uri"])
        write_bundle(await enroll(edge.reactor, uri), path)
    except PortunusError as e:
        raise CliError(e.code, e.message, exit_code=1) from None
    except OSError as e:
        raise CliError(
            "client.enrollment_failed", f"cannot write {path}: {e.strerror}", exit_code=1
        ) from None
    edge.print(path)


COMMANDS: tuple[Command[Edge], ...] = (
    Command(
        "enroll",
        EnrollOptions,
        "Redeem an enrollment URI and write the bundle (0600).",
        enroll_bundle,
    ),
)
RUN = Foreground("run", "portunus-client", "Run the edge (twistd -n portunus-client).")


class ClientOptions(Program):
    program = "portunus-client"
    synopsis = "portunus-client COMMAND [options]"
    longdesc = (
        "The Portunus edge. 'run' takes the options of 'twistd -n portunus-client' "
        "(see --help there)."
    )
    subCommands = sub_commands(COMMANDS, RUN)


async def run(
    argv: Sequence[str], reactor: Any, env: Mapping[str, str], out: IO[str], err: IO[str]
) -> int:
    """Run C{portunus-client argv}; the exit status."""
    return await run_program(
        ClientOptions(), COMMANDS, argv, lambda options: Edge(reactor, env, out), out, err
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The C{portunus-client} console script."""

    def work(reactor: Any, args: list[str]) -> Awaitable[int]:
        return run(args, reactor, os.environ, sys.stdout, sys.stderr)

    react_main(argv, RUN, work)
