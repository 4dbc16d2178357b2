"""
Offline commands: they work on the server's data dir (C{--data-dir}, else
the server's own lookup order) rather than through the API.
"""

from __future__ import annotations

import os

from twisted.python import usage

from portunus.cli.commandline import Subcommand
from portunus.server.datadir import resolve_data_dir

__all__ = ["Offline", "data_dir"]


class Offline(Subcommand):
    """An offline command's options: C{--data-dir}."""

    optParameters = [
        ["data-dir", None, None, "The server's data dir (default: the server's lookup order)."],
    ]


def data_dir(opts: usage.Options) -> str:
    """The data dir C{opts} names, or the one the server would use."""
    return resolve_data_dir(opts["data-dir"], os.environ, os.getcwd())
