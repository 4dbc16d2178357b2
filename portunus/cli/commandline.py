"""
The one command-line style of C{portunus-server} and C{portunus-client}:
L{twisted.python.usage} options (as the twistd plugins use), a table of
L{Command}s, and the same C{--help}/C{-h}, C{--version}, usage errors
(C{error: usage: ...}, exit 2) and error lines (C{error: <code>:
<message>}, the registry's exit code) for both.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any, ClassVar, Generic, TypeVar

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python import usage

from portunus import __version__
from portunus.cli.exits import USAGE_EXIT, CliError
from portunus.errors import PortunusError

__all__ = [
    "Command",
    "Foreground",
    "Formatted",
    "Options",
    "Program",
    "Subcommand",
    "output_format",
    "positive_int",
    "react_main",
    "run_program",
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


output_format.coerceDoc = "text or json."  # type: ignore[attr-defined]


class _Shown(Exception):
    """C{--help} or C{--version}: print C{text} (C{None}: the version) and exit 0."""

    def __init__(self, text: str | None) -> None:
        super().__init__(text)
        self.text = text


class Options(usage.Options):
    """
    Every options class of the console scripts: C{--help} (C{-h}) and
    C{--version} at any level print to the run's output rather than
    exiting from inside the parser, and the synopsis reads
    C{Usage: <program> <synopsis>}.
    """

    synopsis: str = ""
    longdesc: str = ""

    def opt_help(self) -> None:
        """Display this help and exit."""
        raise _Shown(str(self))

    opt_h = opt_help

    def opt_version(self) -> None:
        """Display the version and exit."""
        raise _Shown(None)

    def getSynopsis(self) -> str:
        root: usage.Options = self
        while root.parent is not None:
            root = root.parent
        if root is self:
            return f"Usage: {self.synopsis}"
        return f"Usage: {getattr(root, 'program', '')} {self.synopsis}"


class Subcommand(Options):
    """
    A command's options, which may come before or after its arguments
    (C{enroll-client NAME --ttl-secs 60}), as operators type them.

    @cvar required_options: options that must be given.
    @cvar exclusive_flags: pairs of flags that may not be given together.
    """

    required_options: ClassVar[tuple[str, ...]] = ()
    exclusive_flags: ClassVar[tuple[tuple[str, str], ...]] = ()

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        args = list(sys.argv[1:] if options is None else options)
        takes_value = {name[:-1] for name in self.longOpt if name.endswith("=")}
        short = {letter for letter in self.shortOpt if letter != ":"}
        short_takes_value = {self.shortOpt[i - 1] for i, c in enumerate(self.shortOpt) if c == ":"}
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
            elif len(arg) > 1 and arg[0] == "-" and arg[1] in short:
                flags.append(arg)
                if len(arg) == 2 and arg[1] in short_takes_value:
                    value = next(rest, None)
                    if value is not None:
                        flags.append(value)
            else:
                positional.append(arg)
        super().parseOptions([*flags, "--", *positional])

    def postOptions(self) -> None:
        for key in self.required_options:
            if self[key] is None or self[key] == "":
                raise usage.UsageError(f"--{key} is required")
        for first, second in self.exclusive_flags:
            if self[first] and self[second]:
                raise usage.UsageError(f"give --{first} or --{second}, not both")


class Formatted(Subcommand):
    """A command that prints the API's JSON with C{--format json}."""

    optParameters = [["format", None, "text", "Output format.", output_format]]


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


class _Foreground(Options):
    """
    A L{Foreground} command in the help.  L{Foreground.claims} takes it
    before any parsing, so it is parsed only when something came first.
    """

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        name = self.parent.subCommand if self.parent is not None else "this command"
        raise usage.UsageError(f"{name} takes twistd's options and must come first")


@attrs.frozen
class Foreground:
    """
    A command that runs C{twistd --nodaemon --pidfile= PLUGIN} with the
    rest of the command line as the plugin's options (C{portunus-server
    serve}, C{portunus-client run}).
    """

    name: str
    plugin: str
    help: str

    def claims(self, args: Sequence[str]) -> bool:
        return list(args[:1]) == [self.name]

    def start(self, args: Sequence[str]) -> None:
        from twisted.scripts.twistd import run as twistd

        sys.argv = ["twistd", "--nodaemon", "--pidfile=", self.plugin, *args]
        twistd()


def sub_commands(commands: Sequence[Command[Any]], foreground: Foreground) -> list[list[Any]]:
    """C{commands} and C{foreground}, for the help, as L{usage.Options.subCommands}."""
    return [
        *([c.name, None, c.options, c.help] for c in commands),
        [foreground.name, None, _Foreground, foreground.help],
    ]


class Program(Options):
    """A console script's top-level options: a command is required."""

    program: ClassVar[str]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give a command; --help lists them")


async def run_program(
    options: Program,
    commands: Sequence[Command[C]],
    argv: Sequence[str],
    context: Callable[[Program], C],
    out: IO[str],
    err: IO[str],
) -> int:
    """
    Parse C{argv} into C{options} and run the command it names with
    C{context(options)}; the exit status.  Help and the version go to
    C{out}; a usage error (exit 2) or a refusal (L{CliError}, or a
    L{PortunusError} with the exit code the registry gives its code) goes
    to C{err}.
    """
    try:
        options.parseOptions(list(argv))
    except _Shown as shown:
        text = shown.text if shown.text is not None else f"{options.program} {__version__}"
        out.write(text.rstrip("\n") + "\n")
        return 0
    except usage.UsageError as e:
        err.write(f"error: usage: {e}; run {options.program} [COMMAND] --help\n")
        return USAGE_EXIT
    [command] = [c for c in commands if c.name == options.subCommand]
    try:
        await command.run(context(options), options.subOptions)
    except PortunusError as e:
        return CliError.of(e).report(err)
    except CliError as e:
        return e.report(err)
    return 0


def react_main(
    argv: Sequence[str] | None,
    foreground: Foreground,
    work: Callable[[Any, list[str]], Awaitable[int]],
) -> None:
    """
    A console script: C{foreground} when the command line starts with it,
    else C{work(reactor, args)} under L{twisted.internet.task.react},
    exiting with the status it returns.
    """
    from twisted.internet import task

    args = list(sys.argv[1:] if argv is None else argv)
    if foreground.claims(args):
        foreground.start(args[1:])
        return

    async def main(reactor: Any) -> None:
        code = await work(reactor, args)
        if code:
            raise SystemExit(code)

    def start(reactor: Any) -> Deferred[None]:
        return ensureDeferred(main(reactor))

    task.react(start)
