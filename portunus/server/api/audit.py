"""
C{/v1/audit} (superadmins): the audit log, read back.

C{GET /v1/audit} answers as Portunus does: without C{since}, C{until} or
C{cursor} a plain JSON array of the newest entries (the v0.7 shape the
console's live view polls); with any of them an envelope
C{{entries, next_cursor, count}} for paging to older entries.  A cursor
is the base64url (unpadded) row sequence of the last entry seen.

C{GET /v1/audit/export} streams the same filters as NDJSON, oldest first.

Both write out what the writer still holds before they read, so an
operator sees their own request of a moment ago.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from portunus.bounds import AUDIT_PAGE_LIMIT
from portunus.errors import PortunusError
from portunus.server.api.request import Call, Raw, timestamp
from portunus.server.api.route import Routes
from portunus.server.api.schemas import AUDIT_LIMIT, string
from portunus.server.store import AuditRecord

__all__ = [
    "EXPORT_MAX_ROWS",
    "ROUTES",
    "AuditReader",
    "decode_cursor",
    "encode_cursor",
    "entry_json",
    "parse_rfc3339",
]

#: Rows one export holds at most.
EXPORT_MAX_ROWS = 50_000
DEFAULT_LIMIT = AUDIT_PAGE_LIMIT.fallback
MAX_LIMIT = AUDIT_PAGE_LIMIT.high

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_CURSOR = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
#: Row sequences are SQLite integers; no cursor we made holds a larger one.
_MAX_SEQ = 2**63 - 1


class Flushable(Protocol):
    """The part of L{portunus.server.audit.writer.AuditLog} the routes use."""

    def flush(self) -> Deferred[None]: ...


class AuditQueries(Protocol):
    """The part of L{portunus.server.store.AuditStore} the routes use."""

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
    ) -> Deferred[list[AuditRecord]]: ...


def parse_rfc3339(text: str) -> float:
    """
    An RFC 3339 timestamp with its offset (C{2026-01-02T03:04:05Z}) as unix
    seconds; C{ValueError} for anything else.
    """
    if _RFC3339.fullmatch(text) is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    return datetime.fromisoformat(text.upper()).timestamp()


def encode_cursor(seq: int) -> str:
    """The cursor that pages to the entries older than row C{seq}."""
    return base64.urlsafe_b64encode(str(seq).encode("ascii")).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> int:
    """The row sequence in C{cursor}; C{invalid_cursor} unless it is one we made."""
    try:
        if _CURSOR.fullmatch(cursor) is None:
            raise ValueError(cursor)
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        seq = int(text) if text.isdigit() else 0
        if not 1 <= seq <= _MAX_SEQ or encode_cursor(seq) != cursor:
            raise ValueError(cursor)
    except (ValueError, binascii.Error):
        raise PortunusError(
            "invalid_cursor",
            "cursor: pass back a next_cursor exactly as the server sent it",
            field="cursor",
        ) from None
    return seq


def entry_json(record: AuditRecord) -> dict[str, Any]:
    entry = record.entry
    return {
        "seq": record.seq,
        "timestamp": timestamp(entry.ts),
        "actor": entry.actor,
        "role": entry.role,
        "method": entry.method,
        "path": entry.path,
        "outcome": entry.outcome,
        "reason": entry.reason,
        "action": entry.action,
        "resource_kind": entry.resource_kind,
        "resource_value": entry.resource_value,
        "correlation_id": entry.correlation_id,
        "details": entry.details,
    }


def _arg(request: IRequest, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    return bytes(values[0]).decode("utf-8", "replace")


def _limit(request: IRequest) -> int:
    text = _arg(request, "limit")
    if text is None:
        return DEFAULT_LIMIT
    value = int(text) if text.isascii() and text.isdigit() else 0
    if value not in AUDIT_PAGE_LIMIT:
        raise PortunusError(
            "invalid_limit",
            f"limit: use a number from {AUDIT_PAGE_LIMIT.span()} (got {text!r})",
            field="limit",
        )
    return value


def _time(request: IRequest, name: str) -> float | None:
    text = _arg(request, name)
    if text is None:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise PortunusError(
            "invalid_time_range",
            f"{name}: use an RFC 3339 timestamp such as 2026-01-02T03:04:05Z (got {text!r})",
            field=name,
        ) from None


def _filters(request: IRequest) -> dict[str, Any]:
    """The query's C{outcome}, C{actor}, C{since} and C{until}, checked."""
    outcome = _arg(request, "outcome")
    if outcome is not None and outcome not in ("allow", "deny"):
        raise PortunusError(
            "invalid_outcome",
            f'outcome: use "allow" or "deny" (got {outcome!r})',
            field="outcome",
        )
    since = _time(request, "since")
    until = _time(request, "until")
    if since is not None and until is not None and since >= until:
        raise PortunusError("invalid_time_range", "since must be earlier than until", field="since")
    return {
        "outcome": outcome,
        "actor": _arg(request, "actor") or None,
        "since": since,
        "until": until,
    }


async def _caught_up(audit_log: Flushable | None) -> None:
    """Write out what the writer holds; a failing store still lets reads through."""
    if audit_log is not None:
        # A failure was logged as audit.flush_failed; answer with what is stored.
        with contextlib.suppress(Exception):
            await audit_log.flush()


@attrs.frozen
class AuditReader:
    """
    What the audit routes serve from: entries are read from C{table} (the
    store's C{audit}) after C{log} (the writer) has written out what it
    holds; C{clock} names the export files.
    """

    log: Flushable | None
    table: AuditQueries
    clock: IReactorTime


ROUTES = Routes("audit", bind=None)


@ROUTES.route(
    "GET",
    "/v1/audit",
    "listAudit",
    "Read the audit log, newest first",
    access="superadmin",
    action="audit.query",
    answer="AuditAnswer",
    codes=("invalid_limit", "invalid_outcome", "invalid_time_range", "invalid_cursor"),
    query={
        "limit": AUDIT_LIMIT,
        "outcome": string(enum=["allow", "deny"]),
        "actor": string("Only this actor's entries"),
        "since": string("RFC 3339; pages the answer", format="date-time"),
        "until": string("RFC 3339; pages the answer", format="date-time"),
        "cursor": string("A next_cursor, to page to older entries"),
    },
    description="Without since, until or cursor: an array of the newest entries; "
    "with any of them: a page `{entries, next_cursor, count}`.",
)
async def list_entries(reader: AuditReader, call: Call) -> object:
    request = call.request
    limit = _limit(request)
    filters = _filters(request)
    cursor = _arg(request, "cursor")
    before_seq = decode_cursor(cursor) if cursor is not None else None
    paged = cursor is not None or filters["since"] is not None or filters["until"] is not None
    await _caught_up(reader.log)
    rows = await reader.table.query(
        limit=limit + 1 if paged else limit, before_seq=before_seq, **filters
    )
    if not paged:
        return [entry_json(row) for row in rows]
    page = rows[:limit]
    more = len(rows) > limit
    return {
        "entries": [entry_json(row) for row in page],
        "next_cursor": encode_cursor(page[-1].seq) if more else None,
        "count": len(page),
    }


@ROUTES.route(
    "GET",
    "/v1/audit/export",
    "exportAudit",
    "The audit log as NDJSON, oldest first (at most 50000 entries)",
    access="superadmin",
    action="audit.export",
    answer="Ndjson",
    media_type="application/x-ndjson",
    codes=("invalid_outcome", "invalid_time_range"),
    query={
        "outcome": string(enum=["allow", "deny"]),
        "actor": string("Only this actor's entries"),
        "since": string("RFC 3339", format="date-time"),
        "until": string("RFC 3339", format="date-time"),
    },
    headers={
        "Content-Disposition": 'attachment; filename="portunus-audit-<time>.ndjson"',
        "X-Portunus-Export-Truncated": "true, when the 50000 entries cap cut the export",
    },
    description="One AuditEntry JSON object per line.",
)
async def export(reader: AuditReader, call: Call) -> object:
    request = call.request
    filters = _filters(request)
    await _caught_up(reader.log)
    rows = await reader.table.query(limit=EXPORT_MAX_ROWS + 1, oldest_first=True, **filters)
    if len(rows) > EXPORT_MAX_ROWS:
        rows = rows[:EXPORT_MAX_ROWS]
        request.setHeader(b"x-portunus-export-truncated", b"true")
    body = b"".join(
        json.dumps(entry_json(row), separators=(",", ":")).encode("utf-8") + b"\n" for row in rows
    )
    moment = datetime.fromtimestamp(reader.clock.seconds(), tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    request.setHeader(
        b"content-disposition",
        f'attachment; filename="portunus-audit-{moment}.ndjson"'.encode("ascii"),
    )
    return Raw(200, "application/x-ndjson", body)
