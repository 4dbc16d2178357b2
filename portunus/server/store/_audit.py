"""
The audit table: batched appends from the audit writer, newest-first
queries paged by row sequence, and deletion by age.

Rows are ordered by C{seq} (the AUTOINCREMENT key), never by C{ts}: a
cursor is "the last seq seen", so paging neither skips nor repeats rows
that share a timestamp, and rows written while an operator pages sort
before the first page instead of shifting the later ones.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from portunus.server.audit.entry import AuditEntry
from portunus.server.store._runner import Transact

__all__ = [
    "DEFAULT_MAX_AGE_SECS",
    "AuditRecord",
    "AuditStore",
]

#: Rows older than this are deleted by the retention sweep (90 days);
#: no younger row is ever deleted by it, however many there are.
DEFAULT_MAX_AGE_SECS = 90 * 86400

_COLUMNS = (
    "ts, actor, role, method, path, outcome, reason, action, "
    "resource_kind, resource_value, correlation_id, details_json"
)


@attrs.frozen
class AuditRecord:
    """A stored audit entry and its row sequence (what cursors point at)."""

    seq: int
    entry: AuditEntry


def _row(entry: AuditEntry) -> tuple[Any, ...]:
    details = (
        None
        if entry.details is None
        else json.dumps(entry.details, sort_keys=True, separators=(",", ":"), default=str)
    )
    return (
        entry.ts,
        entry.actor,
        entry.role,
        entry.method,
        entry.path,
        entry.outcome,
        entry.reason,
        entry.action,
        entry.resource_kind,
        entry.resource_value,
        entry.correlation_id,
        details,
    )


def _record(row: Sequence[Any]) -> AuditRecord:
    seq, ts, actor, role, method, path, outcome, reason, action, kind, value, cid, details = row
    return AuditRecord(
        seq,
        AuditEntry(
            ts=ts,
            actor=actor,
            outcome=outcome,
            role=role,
            method=method,
            path=path,
            reason=reason,
            action=action,
            resource_kind=kind,
            resource_value=value,
            correlation_id=cid,
            details=None if details is None else json.loads(details),
        ),
    )


class AuditStore:
    """
    The audit half of the store; reach it as C{store.audit}.  Each method
    is one named transaction run by the store's runner.
    """

    def __init__(self, run: Transact) -> None:
        self._run = run

    def append(self, entries: Sequence[AuditEntry]) -> Deferred[int]:
        """Write C{entries} in one transaction, in order; fire with how many."""
        rows = [_row(entry) for entry in entries]

        def txn(conn: sqlite3.Connection) -> int:
            conn.executemany(
                f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return len(rows)

        return self._run("audit_append", txn, write=True)

    def query(
        self,
        *,
        limit: int,
        outcome: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_seq: int | None = None,
        oldest_first: bool = False,
    ) -> Deferred[list[AuditRecord]]:
        """
        At most C{limit} rows, newest first (or C{oldest_first}), with the
        given C{outcome} and C{actor}, C{since <= ts < until}, and (paging
        to older rows) C{seq < before_seq}.
        """
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("outcome = ?", outcome),
            ("actor = ?", actor),
            ("ts >= ?", since),
            ("ts < ?", until),
            ("seq < ?", before_seq),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT seq, {_COLUMNS} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {'ASC' if oldest_first else 'DESC'} LIMIT ?"
        params.append(limit)

        def txn(conn: sqlite3.Connection) -> list[AuditRecord]:
            return [_record(row) for row in conn.execute(sql, params).fetchall()]

        return self._run("audit_query", txn, write=False)

    def prune(self, before: float, dry_run: bool = False) -> Deferred[int]:
        """
        Delete the rows written before C{before} (unix seconds); fire with
        how many went, or with C{dry_run}, how many would.
        """

        def txn(conn: sqlite3.Connection) -> int:
            if dry_run:
                (count,) = conn.execute(
                    "SELECT count(*) FROM audit WHERE ts < ?", (before,)
                ).fetchone()
                return int(count)
            return conn.execute("DELETE FROM audit WHERE ts < ?", (before,)).rowcount

        return self._run("audit_prune", txn, write=not dry_run)

    def enforce_retention(
        self, now: float, max_age_secs: float = DEFAULT_MAX_AGE_SECS
    ) -> Deferred[int]:
        """
        Delete the rows older than C{max_age_secs}, and only those: there
        is no cap on the row count, which would delete younger entries
        under load (only authenticated requests become rows, so their
        number is bounded by what accountable callers do); fire with how
        many went.
        """

        def txn(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute("DELETE FROM audit WHERE ts < ?", (now - max_age_secs,)).rowcount
            )

        return self._run("audit_retention", txn, write=True)

    def count(self) -> Deferred[int]:
        """How many rows the table holds."""

        def txn(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute("SELECT count(*) FROM audit").fetchone()
            return int(count)

        return self._run("audit_count", txn, write=False)
