"""
Running nftables: C{nft -j -f -} as a child process of the reactor.

Why the command and not the libnftables binding: Debian ships the binding
(C{python3-nftables}) for its own Python only, so the project's virtualenv
cannot import it without reaching into the system's dist-packages; and its
calls block while the kernel applies a batch, so it would need a thread
anyway.  A child process needs neither: the reactor writes the batch to its
standard input and reads the JSON answer, nothing blocks, a hung C{nft} is
killed after a deadline, and the same runner programs another network
namespace by prefixing the command (C{ip netns exec NAME nft}), which is
how the tests and the benchmark drive an edge namespace.  A change costs a
process start (a few milliseconds); rules change rarely and counters are
read every few seconds, so that is cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

__all__ = [
    "DEFAULT_TIMEOUT_SECS",
    "INftRunner",
    "NftError",
    "NftRunner",
    "find_command",
    "parse_output",
    "run_command",
]

#: A batch or listing that takes longer than this is killed and fails.
DEFAULT_TIMEOUT_SECS = 30.0
#: nft's answers are bounded: a listing of a large table, and its errors.
_MAX_OUTPUT = 64 * 1024 * 1024
_MAX_ERRORS = 64 * 1024


class NftError(Exception):
    """nft (or conntrack) refused, could not be run, or timed out."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class INftRunner(Protocol):
    """Runs one batch of nftables JSON commands, atomically."""

    def run(self, commands: Sequence[dict[str, Any]]) -> Deferred[list[dict[str, Any]]]:
        """
        Apply C{commands} in one transaction; fire with the objects that
        C{list} commands among them printed (empty for changes), or fail
        with L{NftError} (nothing applied).
        """
        ...


def parse_output(text: bytes) -> list[dict[str, Any]]:
    """
    The objects of nft's JSON answer: one document per C{list} command,
    each C{{"nftables": [{"metainfo": ...}, {KIND: {...}}, ...]}}.
    """
    objects: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    body = text.decode("utf-8", "replace")
    at = 0
    while True:
        while at < len(body) and body[at].isspace():
            at += 1
        if at >= len(body):
            return objects
        try:
            document, at = decoder.raw_decode(body, at)
        except ValueError as e:
            raise NftError(f"nft printed something that is not JSON: {e}") from e
        for item in document.get("nftables", ()):
            if "metainfo" not in item:
                objects.append(item)


class _Collect(ProcessProtocol):
    """Feed a child its standard input, collect its output (bounded), report how it ended."""

    def __init__(self, stdin: bytes, done: Deferred[bytes], name: str) -> None:
        self._name = name
        self._stdin = stdin
        self._done = done
        self._out: list[bytes] = []
        self._out_size = 0
        self._err = b""
        self._timed_out: float | None = None
        self.timer: Any = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._out_size += len(data)
        if self._out_size > _MAX_OUTPUT:
            assert self.transport is not None
            with contextlib.suppress(ProcessExitedAlready):
                self.transport.signalProcess("KILL")
            return
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err = (self._err + data)[:_MAX_ERRORS]

    def processEnded(self, reason: Failure) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self._timed_out is not None:
            message = f"{self._name} did not answer within {self._timed_out:g} s"
            self._done.errback(NftError(message))
            return
        if reason.check(ProcessDone) and self._out_size <= _MAX_OUTPUT:
            self._done.callback(b"".join(self._out))
            return
        detail = self._err.decode("utf-8", "replace").strip() or "no message"
        if self._out_size > _MAX_OUTPUT:
            detail = f"more than {_MAX_OUTPUT} bytes of output"
        elif isinstance(reason.value, ProcessTerminated) and reason.value.signal is not None:
            detail = f"killed by signal {reason.value.signal}; {detail}"
        self._done.errback(NftError(_first_lines(detail)))

    def time_out(self, secs: float) -> None:
        """Kill nft; the run fails once the process is gone (L{processEnded})."""
        self._timed_out = secs
        assert self.transport is not None
        with contextlib.suppress(ProcessExitedAlready):
            self.transport.signalProcess("KILL")


def _first_lines(text: str, lines: int = 6) -> str:
    return " / ".join(line.strip() for line in text.splitlines()[:lines] if line.strip())


class NftRunner:
    """
    L{INftRunner} by C{nft -j -f -} (or C{prefix + nft ...}).

    @param command: the argv that starts nft, e.g. C{("/usr/sbin/nft",)} or
        C{("ip", "netns", "exec", "edge", "nft")}; its first element is
        found on C{PATH} when it is not a path.
    """

    def __init__(
        self,
        reactor: Any,
        command: Sequence[str] = ("nft",),
        timeout: float = DEFAULT_TIMEOUT_SECS,
    ) -> None:
        self._reactor = reactor
        self.command = tuple(command)
        self._timeout = timeout

    def run(self, commands: Sequence[dict[str, Any]]) -> Deferred[list[dict[str, Any]]]:
        stdin = json.dumps({"nftables": list(commands)}).encode("utf-8")
        argv = [*self.command, "-j", "-f", "-"]
        ran = run_command(self._reactor, argv, stdin, self._timeout)
        return ran.addCallback(parse_output)


def run_command(
    reactor: Any, argv: Sequence[str], stdin: bytes, timeout: float, name: str = "nft"
) -> Deferred[bytes]:
    """
    Run C{argv} as a child of C{reactor} with C{stdin}; fire with its
    standard output, or fail with L{NftError} carrying its first error
    lines if it exits non-zero, is killed after C{timeout} seconds, prints
    more than 64 MiB or cannot be started.
    """
    done: Deferred[bytes] = Deferred()
    executable = find_command(argv[0])
    if executable is None:
        done.errback(NftError(f"{argv[0]} is not installed (not found on PATH)"))
        return done
    protocol = _Collect(stdin, done, name)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
    try:
        reactor.spawnProcess(protocol, executable, list(argv), env=env)
    except OSError as e:
        done.errback(NftError(f"could not run {argv[0]}: {e}"))
        return done
    protocol.timer = reactor.callLater(timeout, protocol.time_out, timeout)
    return done


def find_command(name: str) -> str | None:
    """C{name} on C{PATH}, or in root's sbin directories, often missing from a service's PATH."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)
