"""
C{portunus-server} commands that need no running server: C{gen-token}
prints a new operator token, C{backup} and C{restore} copy C{state.db}
out of and into the data dir.
"""

from __future__ import annotations

import secrets

from twisted.python import usage

from portunus.cli.commandline import Subcommand
from portunus.cli.offline import Offline, data_dir
from portunus.cli.output import Output
from portunus.server.store import backup as backup_store
from portunus.server.store import restore as restore_store

__all__ = [
    "BackupOptions",
    "GenTokenOptions",
    "RestoreOptions",
    "backup",
    "gen_token",
    "restore",
]


class GenTokenOptions(Subcommand):
    synopsis = "gen-token"
    longdesc = (
        "Print a new random operator token (32 bytes, URL-safe base64). Put it in "
        "server.toml as operator_token and in PORTUNUS_OPERATOR_TOKEN."
    )


class BackupOptions(Offline):
    synopsis = "backup --out PATH [--data-dir DIR]"
    longdesc = (
        "Copy state.db with SQLite's online backup (safe while the server runs). "
        "PATH may be a directory: portunus-state-<UTC time>.db is written inside. "
        "An existing file is never overwritten."
    )
    optParameters = [["out", None, None, "Destination file or directory (required)."]]
    required_options = ("out",)


class RestoreOptions(Offline):
    synopsis = "restore --in PATH [--force] [--data-dir DIR]"
    longdesc = (
        "Replace state.db with a backup (checked and migrated first). The server "
        "must be stopped; --force replaces an existing state.db."
    )
    optParameters = [["in", None, None, "The backup file (required)."]]
    optFlags = [["force", None, "Replace an existing state.db."]]
    required_options = ("in",)


async def gen_token(cmd: Output, opts: usage.Options) -> None:
    cmd.print(secrets.token_urlsafe(32))


async def backup(cmd: Output, opts: usage.Options) -> None:
    written = backup_store(data_dir(opts), opts["out"])
    cmd.print(f"backup={written}")


async def restore(cmd: Output, opts: usage.Options) -> None:
    where = data_dir(opts)
    restore_store(where, opts["in"], force=bool(opts["force"]))
    cmd.print(f"restore=ok data_dir={where}")
