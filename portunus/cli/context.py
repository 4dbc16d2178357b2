"""
What a C{portunus-server} command runs with: the operator API and where
its output goes.  Offline commands use only the output.
"""

from __future__ import annotations

from typing import IO

from portunus.cli._http import OperatorClient
from portunus.cli.output import Output

__all__ = ["Context"]


class Context(Output):
    """One run of a command."""

    def __init__(self, api: OperatorClient, out: IO[str]) -> None:
        super().__init__(out)
        self.api = api
