"""
How a command fails, in both console scripts: C{error: <code>: <message>}
on stderr and the exit code the registry (L{portunus.errors}) gives the
code, 1 for a code it does not know.
"""

from __future__ import annotations

from typing import IO

from portunus.errors import ERRORS, PortunusError

__all__ = ["USAGE_EXIT", "CliError"]

#: Bad usage: an unknown command, a missing argument or option.
USAGE_EXIT = 2


class CliError(Exception):
    """
    What a command prints to stderr as C{error: <code>: <message>} before
    exiting with C{exit_code}.
    """

    def __init__(self, code: str, message: str, exit_code: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        if exit_code is None:
            known = ERRORS.get(code)
            exit_code = known.exit_code if known is not None else 1
        self.exit_code = exit_code

    @classmethod
    def of(cls, error: PortunusError) -> CliError:
        """A refusal from the product's own code, with its registry exit code."""
        return cls(error.code, error.message)

    def report(self, err: IO[str]) -> int:
        """Print the error line to C{err}; the exit code."""
        err.write(f"error: {self.code}: {self.message}\n")
        return self.exit_code
