"""
Offline tools behind C{portunus-server backup | restore | reset}.

They are synchronous and run without a reactor.  C{backup} reads through
SQLite's online backup API from a read-only connection, so it is safe
while the server runs and takes no lock; C{restore} and C{reset} take the
data-dir lock, so they refuse to run under a live server.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import attrs

from portunus.errors import PortunusError
from portunus.server.store._schema import (
    DB_NAME,
    SIDECARS,
    SQLITE_HEADER,
    DataDirLock,
    connect,
    migrate,
    schema_version,
)
from portunus.server.store.migrations import SCHEMA_VERSION

__all__ = ["ResetResult", "RestoreResult", "backup", "reset", "restore"]


@attrs.frozen
class RestoreResult:
    """What L{restore} did."""

    #: The database now in place.
    db_path: str
    #: The file it was restored from.
    source: str
    #: An existing C{state.db} was replaced (C{force}).
    replaced: bool
    #: The backup's schema version before migration.
    source_version: int
    #: Versions applied to bring it up to date (empty if it was current).
    migrations_applied: tuple[int, ...]


@attrs.frozen
class ResetResult:
    """What L{reset} removed, or would remove without C{confirm}."""

    db_path: str
    #: Files removed (or that would be); the lock file is always kept.
    files: tuple[str, ...]
    dry_run: bool


def _read_only(path: str) -> sqlite3.Connection:
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None)


def _copy_database(source: str, dest: str) -> None:
    """Copy C{source} (with its WAL, if any) into the empty file C{dest}."""
    src = _read_only(source)
    try:
        dst = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(dst)
            # One self-contained file, whatever mode the source was in.
            dst.execute("PRAGMA journal_mode=DELETE").fetchone()
        finally:
            dst.close()
    finally:
        src.close()


def _has_sqlite_header(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def _temp_beside(path: str, prefix: str) -> str:
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=prefix, suffix=".tmp")
    os.close(fd)
    return temp


def backup(data_dir: str, out: str, *, now: float | None = None) -> str:
    """
    Copy C{<data_dir>/state.db} to C{out} and return the path written.  An
    existing directory C{out} gets C{portunus-state-<YYYYmmddTHHMMSSZ>.db}
    (UTC, at C{now}) inside.  An existing file is never overwritten.

    Refusals: C{backup_source_missing}, C{backup_destination_exists},
    C{backup_failed}.
    """
    source = os.path.join(data_dir, DB_NAME)
    if not os.path.isfile(source):
        raise PortunusError(
            "backup_source_missing",
            f"{source} does not exist: is {data_dir} the server's --data-dir?",
            path=source,
        )
    dest = out
    if os.path.isdir(out):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        dest = os.path.join(out, f"portunus-state-{stamp}.db")
    if os.path.lexists(dest):
        raise _destination_exists(dest)
    temp = _temp_beside(dest, ".portunus-backup-")
    try:
        try:
            _copy_database(source, temp)
        except sqlite3.Error as e:
            raise PortunusError(
                "backup_failed", f"cannot back up {source}: {e}", path=source
            ) from None
        try:
            # link() never replaces an existing file: a racing writer loses cleanly.
            os.link(temp, dest)
        except FileExistsError:
            raise _destination_exists(dest) from None
        except OSError:
            if os.path.lexists(dest):
                raise _destination_exists(dest) from None
            os.replace(temp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return dest


def _destination_exists(dest: str) -> PortunusError:
    return PortunusError(
        "backup_destination_exists",
        f"{dest} already exists; choose another --out or remove it first",
        path=dest,
    )


def restore(
    data_dir: str, source: str, *, force: bool = False, now: float | None = None
) -> RestoreResult:
    """
    Make C{source} (a backup) the data dir's C{state.db}, migrated to this
    code's schema.  The backup is copied and migrated beside the live file
    first, so a refused or failed restore leaves the old state untouched;
    only then is C{state.db} (and its C{-wal}/C{-shm}) replaced.

    Refusals: C{restore_source_missing}, C{restore_not_sqlite},
    C{startup.store_in_use}, C{restore_destination_exists} (a C{state.db}
    exists and not C{force}), C{restore_not_portunus},
    C{startup.schema_version_too_new}, C{restore_migration_failed}.
    """
    if not os.path.isfile(source):
        raise PortunusError(
            "restore_source_missing", f"{source} does not exist or is not a file", path=source
        )
    if not _has_sqlite_header(source):
        raise _not_sqlite(source)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    db_path = os.path.join(data_dir, DB_NAME)
    lock = DataDirLock.acquire(data_dir)
    try:
        replaced = os.path.lexists(db_path)
        if replaced and not force:
            raise PortunusError(
                "restore_destination_exists",
                f"{db_path} already exists; pass --force to replace it "
                "(take a backup of it first if you may need it)",
                path=db_path,
            )
        temp = _temp_beside(db_path, ".state.db.restore-")
        try:
            try:
                _copy_database(source, temp)
            except sqlite3.Error as e:
                raise _not_sqlite(source, str(e)) from None
            found, applied = _migrate_restored(temp, source, now)
            if force:
                for suffix in ("", *SIDECARS):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(db_path + suffix)
            os.replace(temp, db_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
    finally:
        lock.release()
    return RestoreResult(
        db_path=db_path,
        source=source,
        replaced=replaced,
        source_version=found,
        migrations_applied=tuple(applied),
    )


def _migrate_restored(path: str, source: str, now: float | None) -> tuple[int, list[int]]:
    try:
        conn = connect(path, journal_mode="DELETE")
    except sqlite3.Error as e:
        raise _not_sqlite(source, str(e)) from None
    try:
        try:
            known = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            ).fetchone()
        except sqlite3.Error as e:
            raise _not_sqlite(source, str(e)) from None
        if known is None:
            raise PortunusError(
                "restore_not_portunus",
                f"{source} is an SQLite database but not a Portunus state backup",
                path=source,
            )
        found = schema_version(conn)
        if found > SCHEMA_VERSION:
            raise PortunusError(
                "startup.schema_version_too_new",
                f"{source} has schema version {found} but this server knows up to "
                f"{SCHEMA_VERSION}: upgrade the server before restoring this backup",
                found=found,
                supported=SCHEMA_VERSION,
                path=source,
            )
        try:
            applied = migrate(conn, time.time() if now is None else now, path=source)
        except sqlite3.Error as e:
            raise PortunusError(
                "restore_migration_failed",
                f"migrating {source} from schema version {found} failed: {e}; "
                "the current state was left as it was",
                path=source,
            ) from None
    finally:
        conn.close()
    return found, applied


def _not_sqlite(path: str, detail: str | None = None) -> PortunusError:
    why = f" ({detail})" if detail else ""
    return PortunusError(
        "restore_not_sqlite",
        f"{path} is not an SQLite database{why}; pass a file written by 'backup'",
        path=path,
    )


def reset(data_dir: str, *, confirm: bool = False) -> ResetResult:
    """
    Delete C{state.db} and its C{-wal}/C{-shm}, keeping everything else in
    the data dir (certificates, C{server.toml}, the lock file).  Without
    C{confirm} nothing is touched and the result lists what would go.

    Refusals: C{reset_not_sqlite} (C{state.db} is not an SQLite file, so
    this is probably not a data dir), C{startup.store_in_use}.
    """
    db_path = os.path.join(data_dir, DB_NAME)
    files = tuple(
        db_path + suffix for suffix in ("", *SIDECARS) if os.path.lexists(db_path + suffix)
    )
    if os.path.isfile(db_path) and os.path.getsize(db_path) and not _has_sqlite_header(db_path):
        raise PortunusError(
            "reset_not_sqlite",
            f"{db_path} is not an SQLite database; refusing to delete it "
            "(is this the server's --data-dir?)",
            path=db_path,
        )
    if not confirm or not files:
        return ResetResult(db_path=db_path, files=files, dry_run=not confirm)
    lock = DataDirLock.acquire(data_dir)
    try:
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        lock.release()
    return ResetResult(db_path=db_path, files=files, dry_run=False)
