"""
Opening C{state.db}: the data-dir lock, per-connection PRAGMAs and the
numbered migrations.  Everything here is synchronous; it runs at startup
(before the reactor serves) or from offline CLI commands.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3

import attrs

from portunus.errors import PortunusError
from portunus.server.store.migrations import BOOTSTRAP, MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "SIDECARS",
    "SQLITE_HEADER",
    "DataDirLock",
    "connect",
    "migrate",
    "schema_version",
]

DB_NAME = "state.db"
LOCK_NAME = "state.db.lock"
#: Files SQLite keeps next to the database in WAL mode.
SIDECARS = ("-wal", "-shm")
#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"

_PRAGMAS = (
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-8000",
)


@attrs.define
class DataDirLock:
    """
    An exclusive C{flock} on C{<data_dir>/state.db.lock}, so two servers
    (or a server and an offline command) never write one database.  The
    lock file itself is never deleted: unlinking it while held would let a
    second process lock a fresh inode.
    """

    path: str
    _fd: int | None

    @classmethod
    def acquire(cls, data_dir: str) -> DataDirLock:
        """Take the lock or fail with C{startup.store_in_use}; never waits."""
        path = os.path.join(data_dir, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PortunusError(
                    "startup.store_in_use",
                    f"{path} is locked: another Portunus server (or offline command) "
                    f"is running on the data dir {data_dir}; stop it or use another --data-dir",
                    lock_file=path,
                ) from None
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock; safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def connect(path: str, *, journal_mode: str = "WAL") -> sqlite3.Connection:
    """
    A connection with the store's PRAGMAs, in autocommit mode: every
    transaction is begun explicitly (C{BEGIN IMMEDIATE} for writes).  It may
    be handed to one worker thread, never used by two at once.
    """
    created = not os.path.exists(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0]
        if str(mode).lower() != journal_mode.lower():
            raise sqlite3.OperationalError(f"journal_mode {journal_mode} refused ({mode})")
        for pragma in _PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    if created:
        # Token and code hashes live here: keep the file to its owner.
        os.chmod(path, 0o600)
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest applied delta, 0 for a database without the bookkeeping table."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if row is None:
        return 0
    (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(version)


def migrate(conn: sqlite3.Connection, now: float, *, path: str = DB_NAME) -> list[int]:
    """
    Apply every pending delta, each in its own transaction, and return the
    versions applied (empty when already current).  A database written by
    newer code is refused with C{startup.schema_version_too_new} and left
    untouched.
    """
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise PortunusError(
            "startup.schema_version_too_new",
            f"{path} has schema version {found} but this server knows up to "
            f"{SCHEMA_VERSION}: upgrade the server, or restore a backup taken by this version",
            found=found,
            supported=SCHEMA_VERSION,
        )
    conn.executescript(BOOTSTRAP)
    applied = []
    for version in range(found + 1, SCHEMA_VERSION + 1):
        try:
            conn.execute("BEGIN IMMEDIATE")
            # executescript() would commit first; feed the statements one by one.
            for statement in _statements(MIGRATIONS[version - 1]):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version, now),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def _statements(script: str) -> list[str]:
    """Split a delta into complete statements (SQLite decides where each ends)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        raise ValueError(f"incomplete SQL statement in migration: {current.strip()[:60]!r}")
    return statements
