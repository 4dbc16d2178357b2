"""
One audit entry, and what whatever records them provides.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import attrs
from twisted.internet.defer import Deferred

__all__ = ["AuditEntry", "AuditSink", "Outcome"]

Outcome = Literal["allow", "deny"]


@attrs.frozen
class AuditEntry:
    """
    A request (or a denial) as the audit log keeps it.  C{details} must
    never hold a secret: callers pass only identifiers and outcomes.
    """

    #: Unix seconds.
    ts: float
    #: The user id, or C{_anonymous} before authentication.
    actor: str
    outcome: Outcome
    role: str | None = None
    method: str | None = None
    path: str | None = None
    #: C{ok}, or the error code that ended the request.
    reason: str | None = None
    #: What was done (C{rule.push}, C{user.create} ...), when known.
    action: str | None = None
    resource_kind: str | None = None
    resource_value: str | None = None
    correlation_id: str | None = None
    details: dict[str, Any] | None = None


class AuditSink(Protocol):
    """Where the operator API's pipeline sends what the audit log keeps."""

    def record(self, entry: AuditEntry) -> Deferred[None]:
        """
        Keep C{entry}; never drops it, never fails.  The Deferred fires at
        once while the writer keeps up, else once the entry is written
        (the request waits: back-pressure instead of a lost entry).
        """

    def unauthenticated(self, reason: str, remote: str | None) -> None:
        """Count a request refused before anyone authenticated (no entry is kept)."""
