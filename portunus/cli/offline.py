"""
Offline commands: they work on the server's data dir (C{--data-dir}, else
the server's own lookup order) rather than through the API.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from twisted.python import usage

from portunus.cli.commandline import Subcommand
from portunus.cli.exits import CliError
from portunus.server.datadir import resolve_data_dir
from portunus.server.store import DB_NAME, Store, open_store, run_synchronously

__all__ = ["Offline", "data_dir", "offline_store"]


class Offline(Subcommand):
    """An offline command's options: C{--data-dir}."""

    optParameters = [
        ["data-dir", None, None, "The server's data dir (default: the server's lookup order)."],
    ]


def data_dir(opts: usage.Options) -> str:
    """The data dir C{opts} names, or the one the server would use."""
    return resolve_data_dir(opts["data-dir"], os.environ, os.getcwd())


@asynccontextmanager
async def offline_store(
    opts: usage.Options, clock: Any, *, missing: str | None = None
) -> AsyncIterator[Store]:
    """
    The data dir's store, locked (so a running server makes this fail with
    C{startup.store_in_use}) and run inline, closed when the block ends.
    With C{missing} (an error code), a data dir without C{state.db} is
    refused with it instead of getting a new, empty one.
    """
    where = data_dir(opts)
    if missing is not None and not os.path.isfile(os.path.join(where, DB_NAME)):
        raise CliError(
            missing,
            f"there is no {DB_NAME} in {where}; point --data-dir (or STATE_DIRECTORY) "
            "at the server's data dir",
        )
    store = open_store(where, clock, runner=run_synchronously)
    try:
        yield store
    finally:
        await store.close()
