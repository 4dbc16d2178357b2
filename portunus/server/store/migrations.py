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

#: Every delta, oldest first; version N is C{MIGRATIONS[N - 1]}.
MIGRATIONS: tuple[str, ...] = (_V001,)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(MIGRATIONS)
