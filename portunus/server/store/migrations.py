"""
Numbered schema deltas of the server's store.

C{MIGRATIONS[i]} takes the schema from version C{i} to C{i + 1}; the store
applies each pending delta in its own transaction and records it in
C{schema_migrations(version, applied_at)}.  Deltas are append-only: once a
release has shipped one, it is never edited, only followed by another.

A delta runs inside C{BEGIN IMMEDIATE ... COMMIT}, so it must not change
C{PRAGMA foreign_keys} or C{journal_mode} (SQLite ignores both inside a
transaction); a table rebuild uses the create-copy-drop-rename dance.
"""

from __future__ import annotations

__all__ = ["BOOTSTRAP", "MIGRATIONS", "SCHEMA_VERSION"]

#: The bookkeeping table itself, created before any delta runs.
BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
) STRICT;
"""

_V001 = """
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    address TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL,
    token_hash TEXT UNIQUE,
    token_issued_at REAL
) STRICT;

CREATE TABLE client_enrollments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    client_name TEXT NOT NULL,
    client_address TEXT,
    code_hash TEXT NOT NULL UNIQUE,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    consumed_at REAL,
    advertised_endpoint TEXT
) STRICT;

CREATE INDEX client_enrollments_open
    ON client_enrollments (client_id) WHERE consumed_at IS NULL;

CREATE TABLE rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    listen_start INTEGER NOT NULL CHECK (listen_start BETWEEN 1 AND 65535),
    listen_end INTEGER NOT NULL CHECK (listen_end BETWEEN listen_start AND 65535),
    spec_json TEXT NOT NULL,
    state_kind TEXT NOT NULL CHECK (state_kind IN ('pending', 'active', 'failed')),
    state_reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) STRICT;

CREATE INDEX rules_ports ON rules (client_id, protocol, listen_start);

CREATE TABLE server_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
"""

#: Accounts, web sessions, grants, onboarding, the audit log, and who owns
#: each rule.  Rules reference owners and grants without foreign keys: the
#: server removes a user's or grant's rules itself, in the same
#: transaction, so it can tell the edges which rules went.
_V002 = """
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('superadmin', 'user')),
    display_name TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at REAL NOT NULL,
    password_hash TEXT,
    password_change_required INTEGER NOT NULL DEFAULT 0
        CHECK (password_change_required IN (0, 1))
) STRICT;

CREATE TABLE credentials (
    credential_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    issued_at REAL NOT NULL,
    revoked_at REAL,
    last_used_at REAL
) STRICT;

CREATE TABLE web_sessions (
    session_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    absolute_expires_at REAL NOT NULL,
    revoked_at REAL,
    remote_addr TEXT,
    user_agent TEXT
) STRICT;

CREATE INDEX web_sessions_user ON web_sessions (user_id);

CREATE TABLE grants (
    grant_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    listen_port_start INTEGER NOT NULL CHECK (listen_port_start BETWEEN 1 AND 65535),
    listen_port_end INTEGER NOT NULL CHECK (listen_port_end BETWEEN listen_port_start AND 65535),
    protocols INTEGER NOT NULL CHECK (protocols BETWEEN 1 AND 3),
    note TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
) STRICT;

CREATE INDEX grants_user ON grants (user_id);

CREATE TABLE onboarding_setup (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token_hash TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL
) STRICT;

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    role TEXT,
    method TEXT,
    path TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('allow', 'deny')),
    reason TEXT,
    action TEXT,
    resource_kind TEXT,
    resource_value TEXT,
    correlation_id TEXT,
    details_json TEXT
) STRICT;

CREATE INDEX audit_ts ON audit (ts);
CREATE INDEX audit_outcome_ts ON audit (outcome, ts);
CREATE INDEX audit_actor_ts ON audit (actor, ts);

ALTER TABLE rules ADD COLUMN owner_user_id TEXT;
ALTER TABLE rules ADD COLUMN grant_id TEXT;

CREATE INDEX rules_owner ON rules (owner_user_id);
CREATE INDEX rules_grant ON rules (grant_id) WHERE grant_id IS NOT NULL;
"""

#: Grants may allow local targets (loopback, link-local, the edge's own
#: addresses); none does at first.  Rules pushed under a grant until now
#: take the same default, so their edges refuse local addresses from now
#: on, names included (docs/security.md, "Tenants on an edge").
_V003 = """
ALTER TABLE grants ADD COLUMN allow_local_targets INTEGER NOT NULL DEFAULT 0
    CHECK (allow_local_targets IN (0, 1));

UPDATE rules SET spec_json = json_set(spec_json, '$.allow_local_targets', json('false'))
    WHERE grant_id IS NOT NULL;
"""

#: Every delta, oldest first; version N is C{MIGRATIONS[N - 1]}.
MIGRATIONS: tuple[str, ...] = (_V001, _V002, _V003)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(MIGRATIONS)
