"""
Reading rules out of their rows: one SELECT and one row-to-record mapping
shared by every transaction that hands out L{RuleRecord}s.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import attrs

from portunus.model import Rule
from portunus.rulejson import rule_from_dict
from portunus.server.store._records import RuleRecord, RuleState

__all__ = ["RULE_SELECT", "delete_rules_where", "rule_from_row", "with_id"]

RULE_SELECT = (
    "SELECT r.id, r.client_id, c.name, r.spec_json, r.state_kind, r.state_reason, "
    "r.created_at, r.updated_at, r.owner_user_id, r.grant_id "
    "FROM rules r JOIN clients c ON c.client_id = r.client_id"
)


def rule_from_row(row: Sequence[Any]) -> RuleRecord:
    rule_id, client_id, client_name, spec, kind, reason, created_at, updated_at, owner, grant = row
    rule = rule_from_dict(json.loads(spec))
    if rule.id != rule_id:
        rule = with_id(rule, rule_id)
    return RuleRecord(
        rule=rule,
        client_id=client_id,
        client_name=client_name,
        state=RuleState(kind),
        state_reason=reason,
        created_at=created_at,
        updated_at=updated_at,
        owner_user_id=owner,
        grant_id=grant,
    )


def with_id(rule: Rule, rule_id: int) -> Rule:
    return attrs.evolve(rule, id=rule_id)


def delete_rules_where(conn: sqlite3.Connection, column: str, value: str) -> list[RuleRecord]:
    """Delete the rules whose C{column} (owner or grant) is C{value}; return them."""
    assert column in ("owner_user_id", "grant_id")
    rows = conn.execute(f"{RULE_SELECT} WHERE r.{column} = ? ORDER BY r.id", (value,)).fetchall()
    conn.execute(f"DELETE FROM rules WHERE {column} = ?", (value,))
    return [rule_from_row(row) for row in rows]
