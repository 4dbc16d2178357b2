"""
The values the store hands out: frozen records, never database rows.

Secrets never appear here: a record says whether a client holds a token,
not the token's hash, so a record can be logged or shown safely.
"""

from __future__ import annotations

import enum

import attrs

from portunus.model import Rule

__all__ = [
    "ClientRecord",
    "EnrollmentRecord",
    "Redemption",
    "RuleRecord",
    "RuleState",
]


class RuleState(enum.StrEnum):
    """
    Where a stored rule stands on its client (removed rules are deleted).
    A C{str}, so it compares equal to and formats as its value.
    """

    PENDING = "pending"
    ACTIVE = "active"
    FAILED = "failed"


@attrs.frozen
class ClientRecord:
    """One edge client, enrolled or still waiting for its code to be redeemed."""

    #: A ULID: 26 Crockford base32 characters, sortable by creation time.
    client_id: str
    name: str
    #: The address the operator gave at enrollment, if any.
    address: str | None
    created_at: float
    revoked_at: float | None = None
    #: When the current token was issued; C{None} until a code is redeemed.
    token_issued_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def enrolled(self) -> bool:
        """The client has redeemed a code and holds a token."""
        return self.token_issued_at is not None


@attrs.frozen
class EnrollmentRecord:
    """One enrollment code (by its row; the code itself is never stored)."""

    id: int
    client_id: str
    client_name: str
    client_address: str | None
    issued_at: float
    #: Unix seconds after which the code is refused.
    expires_at: float
    #: Set when redeemed, superseded by a newer code, or its client revoked.
    consumed_at: float | None
    #: The C{host:port} frozen into the code's URI when it was issued.
    advertised_endpoint: str | None


@attrs.frozen
class Redemption:
    """What redeeming a code did."""

    #: The client, now holding the new token.
    client: ClientRecord
    #: The code's row, now consumed; its C{advertised_endpoint} goes in the bundle.
    enrollment: EnrollmentRecord
    #: The client held a token before, which has stopped working: close its session.
    rotated: bool


@attrs.frozen
class RuleRecord:
    """A stored rule; C{rule.id} is the id the store assigned."""

    rule: Rule
    client_id: str
    client_name: str
    state: RuleState
    #: Why the rule is C{FAILED} (C{port_in_use:18080} ...), else C{None}.
    state_reason: str | None
    created_at: float
    updated_at: float
    #: The user who pushed the rule (C{None} for rules pushed before accounts).
    owner_user_id: str | None = None
    #: The grant that allowed the push; C{None} for superadmins' rules.
    grant_id: str | None = None

    @property
    def rule_id(self) -> int:
        return self.rule.id
