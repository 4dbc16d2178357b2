"""
The command-line style of the console scripts: L{twisted.python.usage}
options (as the twistd plugins use) and a table of L{Command}s, each a
name, its options, a line of help and the function that runs it.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Generic, TypeVar

import attrs
from twisted.python import usage

from portunus.cli.exits import CliError
from portunus.errors import PortunusError

__all__ = [
    "Command",
    "Formatted",
    "Subcommand",
    "output_format",
    "positive_int",
    "run_command",
    "sub_commands",
]

C = TypeVar("C")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


positive_int.coerceDoc = "A positive integer."  # type: ignore[attr-defined]


def output_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError("use text or json")
    return text


output_format.coerceDoc = "text (default) or json."  # type: ignore[attr-defined]


class Subcommand(usage.Options):
    """
    A command's options, which may come before or after its arguments
    (C{enroll-client NAME --ttl-secs 60}), as operators type them.
    """

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        args = list(sys.argv[1:] if options is None else options)
        takes_value = {name[:-1] for name in self.longOpt if name.endswith("=")}
        flags: list[str] = []
        positional: list[str] = []
        rest = iter(args)
        for arg in rest:
            if arg == "--":
                positional.extend(rest)
            elif arg.startswith("--") and len(arg) > 2:
                flags.append(arg)
                if "=" not in arg and arg[2:] in takes_value:
                    value = next(rest, None)
                    if value is not None:
                        flags.append(value)
            else:
                positional.append(arg)
        super().parseOptions([*flags, "--", *positional])


class Formatted(Subcommand):
    """A command that prints the API's JSON with C{--format json}."""

    optParameters = [["format", None, "text", "Output: text or json.", output_format]]


@attrs.frozen
class Command(Generic[C]):
    """
    One entry of a console script's command table: C{run} is called with
    the script's context (output, API ...) and the parsed C{options}.
    """

    name: str
    options: type[usage.Options]
    help: str
    run: Callable[[C, usage.Options], Awaitable[None]]


def sub_commands(table: Sequence[Command[C]]) -> list[list[object]]:
    """C{table} as L{usage.Options.subCommands}."""
    return [[c.name, None, c.options, c.help] for c in table]


async def run_command(command: Command[C], context: C, options: usage.Options, err: IO[str]) -> int:
    """
    Run C{command}; its exit status.  A refusal (L{CliError}, or a
    L{PortunusError} from the code it calls) is reported on C{err} with
    the exit code the registry gives its code.
    """
    try:
        await command.run(context, options)
    except PortunusError as e:
        return CliError.of(e).report(err)
    except CliError as e:
        return e.report(err)
    return 0
