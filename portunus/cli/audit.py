"""
C{portunus-server audit prune}: delete old audit entries, offline.

The server prunes by itself (entries older than 90 days, past 50,000
rows, every hour); this is for an operator who must remove entries
sooner.  Like C{restore}, it opens C{state.db} with the data-dir lock, so
it refuses with C{startup.store_in_use} while the server runs.
"""

from __future__ import annotations

from twisted.python import usage

from portunus.cli.commandline import Options
from portunus.cli.exits import CliError
from portunus.cli.offline import Offline, offline_store
from portunus.cli.output import Output

__all__ = ["AuditOptions", "AuditPruneOptions", "audit"]


class AuditPruneOptions(Offline):
    synopsis = "audit prune --before TIME [--dry-run] [--data-dir DIR]"
    longdesc = (
        "Delete the audit entries written before TIME (RFC 3339, such as "
        "2026-01-02T03:04:05Z). The server must be stopped. --dry-run only counts them."
    )
    optParameters = [["before", None, None, "Delete entries older than this (required)."]]
    optFlags = [["dry-run", None, "Count the entries that would go; delete nothing."]]
    required_options = ("before",)


class AuditOptions(Options):
    synopsis = "audit prune --before TIME [--dry-run] [--data-dir DIR]"
    subCommands = [["prune", None, AuditPruneOptions, "Delete old audit entries (offline)."]]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give an audit command: prune")


async def audit(cmd: Output, opts: usage.Options) -> None:
    from portunus.server.api.audit import parse_rfc3339

    prune = opts.subOptions
    try:
        before = parse_rfc3339(prune["before"])
    except ValueError:
        raise CliError(
            "invalid_time_range",
            f"--before {prune['before']!r}: use an RFC 3339 timestamp such as 2026-01-02T03:04:05Z",
        ) from None
    dry_run = bool(prune["dry-run"])
    async with offline_store(prune, None, missing="startup.store_open_failed") as store:
        count = await store.audit.prune(before, dry_run=dry_run)
    if dry_run:
        cmd.print(f"audit_prune dry_run=true would_delete={count}")
    else:
        cmd.print(f"audit_prune deleted={count}")
