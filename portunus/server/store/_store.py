"""
The server's store: SQLite in WAL mode under C{--data-dir}, reached only
through named transactions that run off the reactor thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast, overload

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.python.threadpool import ThreadPool

from portunus.errors import PortunusError
from portunus.model import Protocol, Rule
from portunus.reactors import IStoreReactor
from portunus.rulejson import rule_to_dict
from portunus.server.store._accounts import AccountStore
from portunus.server.store._audit import AuditStore
from portunus.server.store._ids import new_ulid
from portunus.server.store._records import (
    ClientRecord,
    EnrollmentRecord,
    Redemption,
    RuleRecord,
    RuleState,
)
from portunus.server.store._rulerows import RULE_SELECT as _RULE_SELECT
from portunus.server.store._rulerows import rule_from_row as _rule
from portunus.server.store._rulerows import with_id as _with_id
from portunus.server.store._runner import Runner, ThreadPoolRunner
from portunus.server.store._schema import (
    DB_NAME,
    DataDirLock,
    connect,
    migrate,
    schema_version,
)

__all__ = ["Store", "open_store"]

T = TypeVar("T")

_CLIENT_COLUMNS = "client_id, name, address, created_at, revoked_at, token_issued_at"
_ENROLLMENT_COLUMNS = (
    "id, client_id, client_name, client_address, issued_at, expires_at, "
    "consumed_at, advertised_endpoint"
)


def _client(row: Sequence[Any]) -> ClientRecord:
    return ClientRecord(*row)


def _enrollment(row: Sequence[Any]) -> EnrollmentRecord:
    return EnrollmentRecord(*row)


def _spec(rule: Rule) -> str:
    return json.dumps(rule_to_dict(rule), sort_keys=True, separators=(",", ":"))


def _client_not_found(client_id: str) -> PortunusError:
    return PortunusError(
        "client_not_found", f"no client has the id {client_id!r}", client_id=client_id
    )


def _rule_not_found(rule_id: int) -> PortunusError:
    return PortunusError("rule_not_found", f"no rule has the id {rule_id}", rule_id=rule_id)


def _fetch_client(conn: sqlite3.Connection, client_id: str) -> ClientRecord:
    row = conn.execute(
        f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = ?", (client_id,)
    ).fetchone()
    if row is None:
        raise _client_not_found(client_id)
    return _client(row)


def _fetch_unrevoked_client(conn: sqlite3.Connection, client_id: str) -> ClientRecord:
    client = _fetch_client(conn, client_id)
    if client.revoked:
        raise PortunusError(
            "client_revoked",
            f"client {client.name!r} ({client_id}) is revoked; enroll a new client instead",
            client_id=client_id,
        )
    return client


def _exists(conn: sqlite3.Connection, table: str, column: str, value: str) -> bool:
    row = conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (value,)).fetchone()
    return row is not None


def _fetch_rule(conn: sqlite3.Connection, rule_id: int) -> RuleRecord:
    row = conn.execute(f"{_RULE_SELECT} WHERE r.id = ?", (rule_id,)).fetchone()
    if row is None:
        raise _rule_not_found(rule_id)
    return _rule(row)


def _overlapping(
    conn: sqlite3.Connection, client_id: str, protocol: Protocol, start: int, end: int
) -> list[RuleRecord]:
    rows = conn.execute(
        f"{_RULE_SELECT} WHERE r.client_id = ? AND r.protocol = ? "
        "AND r.listen_start <= ? AND r.listen_end >= ? ORDER BY r.id",
        (client_id, protocol.value, end, start),
    ).fetchall()
    return [_rule(row) for row in rows]


class Store:
    """
    Every read and write of the server's state.

    Each public method is one named transaction and returns a L{Deferred};
    refusals fail it with a L{PortunusError}.  Writes take the write lock
    up front (C{BEGIN IMMEDIATE}); reads run in a transaction too, so a
    read sees all of a write or none of it.  Build one with L{open_store}.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: DataDirLock,
        runner: Runner,
        *,
        path: str,
        schema_version: int,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._conn = conn
        self._lock = lock
        self._runner = runner
        self._randbytes = randbytes
        self._on_close: list[Callable[[], None]] = []
        self._closed = False
        self._close_done = False
        self._close_waiters: list[Deferred[None]] = []
        #: The database file.
        self.path = path
        #: The schema version on disk (the code's version once migrated).
        self.schema_version = schema_version
        #: Users, credentials, sessions, grants and onboarding.
        self.accounts = AccountStore(self._run, randbytes)
        #: The operator audit log.
        self.audit = AuditStore(self._run)

    # -- plumbing ---------------------------------------------------------

    def _run(self, name: str, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> Deferred[T]:
        if self._closed:
            return defer.fail(RuntimeError(f"store transaction {name!r} after close()"))
        conn = self._conn
        begin = "BEGIN IMMEDIATE" if write else "BEGIN"

        def transaction() -> T:
            conn.execute(begin)
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return self._runner(name, transaction)

    def close(self) -> Deferred[None]:
        """
        Finish the transactions already submitted, close the connection,
        stop the worker thread and release the data-dir lock.  Calling it
        again waits for the same close; transactions submitted after it
        fail.
        """
        if self._closed:
            waiter: Deferred[None] = Deferred()
            if self._close_done:
                waiter.callback(None)
            else:
                self._close_waiters.append(waiter)
            return waiter
        conn = self._conn
        # One-thread runners are FIFO: this runs after everything queued.
        d = self._run("close", lambda _: None, write=False)
        self._closed = True

        def finish(result: object) -> object:
            try:
                conn.close()
                for hook in self._on_close:
                    hook()
            finally:
                self._lock.release()
                self._close_done = True
                waiters, self._close_waiters = self._close_waiters, []
                for waiter in waiters:
                    waiter.callback(None)
            return result

        return d.addBoth(finish).addCallback(lambda _: None)

    # -- clients ----------------------------------------------------------

    def create_client(self, name: str, address: str | None, now: float) -> Deferred[ClientRecord]:
        """A new, not yet enrolled client with a fresh ULID."""
        client_id = new_ulid(now, self._randbytes)

        def txn(conn: sqlite3.Connection) -> ClientRecord:
            conn.execute(
                "INSERT INTO clients (client_id, name, address, created_at) VALUES (?, ?, ?, ?)",
                (client_id, name, address, now),
            )
            return _fetch_client(conn, client_id)

        return self._run("create_client", txn, write=True)

    def get_client(self, client_id: str) -> Deferred[ClientRecord]:
        """The client; C{client_not_found}."""
        return self._run("get_client", lambda conn: _fetch_client(conn, client_id), write=False)

    def list_clients(self) -> Deferred[list[ClientRecord]]:
        """Every client, revoked ones included, ordered by name then id."""

        def txn(conn: sqlite3.Connection) -> list[ClientRecord]:
            rows = conn.execute(
                f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY name, client_id"
            ).fetchall()
            return [_client(row) for row in rows]

        return self._run("list_clients", txn, write=False)

    def rename_client(self, client_id: str, name: str) -> Deferred[ClientRecord]:
        """Give the client a new display name; C{client_not_found}."""

        def txn(conn: sqlite3.Connection) -> ClientRecord:
            cursor = conn.execute(
                "UPDATE clients SET name = ? WHERE client_id = ?", (name, client_id)
            )
            if cursor.rowcount == 0:
                raise _client_not_found(client_id)
            return _fetch_client(conn, client_id)

        return self._run("rename_client", txn, write=True)

    def revoke_client(self, client_id: str, now: float) -> Deferred[ClientRecord]:
        """
        Stop the client's token working.  Idempotent: the first
        C{revoked_at} is kept.  The client's unredeemed codes are consumed
        too, so none can bring it back.  C{client_not_found}.
        """

        def txn(conn: sqlite3.Connection) -> ClientRecord:
            _fetch_client(conn, client_id)
            conn.execute(
                "UPDATE clients SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL",
                (now, client_id),
            )
            conn.execute(
                "UPDATE client_enrollments SET consumed_at = ? "
                "WHERE client_id = ? AND consumed_at IS NULL",
                (now, client_id),
            )
            return _fetch_client(conn, client_id)

        return self._run("revoke_client", txn, write=True)

    def delete_client(self, client_id: str) -> Deferred[None]:
        """
        Delete a revoked client with its rules, codes and the grants that
        name it.  C{client_not_found}, C{client_not_revoked}.
        """

        def txn(conn: sqlite3.Connection) -> None:
            client = _fetch_client(conn, client_id)
            if not client.revoked:
                raise PortunusError(
                    "client_not_revoked",
                    f"client {client.name!r} ({client_id}) is not revoked; revoke it first",
                    client_id=client_id,
                )
            conn.execute("DELETE FROM grants WHERE client_id = ?", (client_id,))
            conn.execute("DELETE FROM clients WHERE client_id = ?", (client_id,))

        return self._run("delete_client", txn, write=True)

    def client_for_token_hash(
        self, token_hash: str, *, include_revoked: bool = False
    ) -> Deferred[ClientRecord | None]:
        """
        The client holding the token whose hash is C{token_hash}, or
        C{None}.  A revoked client is C{None} unless C{include_revoked}
        (to log why a session was refused).
        """

        def txn(conn: sqlite3.Connection) -> ClientRecord | None:
            row = conn.execute(
                f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            if row is None:
                return None
            client = _client(row)
            if client.revoked and not include_revoked:
                return None
            return client

        return self._run("client_for_token_hash", txn, write=False)

    # -- enrollment -------------------------------------------------------

    def create_enrollment(
        self,
        client_id: str,
        code_hash: str,
        issued_at: float,
        expires_at: float,
        advertised_endpoint: str | None,
        address: str | None,
    ) -> Deferred[EnrollmentRecord]:
        """
        Record a new code for the client; its earlier unredeemed codes are
        consumed (superseded) in the same transaction.
        C{client_not_found}, C{client_revoked}.
        """

        def txn(conn: sqlite3.Connection) -> EnrollmentRecord:
            client = _fetch_unrevoked_client(conn, client_id)
            conn.execute(
                "UPDATE client_enrollments SET consumed_at = ? "
                "WHERE client_id = ? AND consumed_at IS NULL",
                (issued_at, client_id),
            )
            cursor = conn.execute(
                "INSERT INTO client_enrollments (client_id, client_name, client_address, "
                "code_hash, issued_at, expires_at, advertised_endpoint) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    client_id,
                    client.name,
                    address,
                    code_hash,
                    issued_at,
                    expires_at,
                    advertised_endpoint,
                ),
            )
            row = conn.execute(
                f"SELECT {_ENROLLMENT_COLUMNS} FROM client_enrollments WHERE id = ?",
                (cursor.lastrowid,),
            ).fetchone()
            return _enrollment(row)

        return self._run("create_enrollment", txn, write=True)

    def redeem_enrollment(
        self, code_hash: str, now: float, new_token_hash: str
    ) -> Deferred[Redemption]:
        """
        Trade a code for a token, atomically: the code is consumed and the
        client's token becomes C{new_token_hash} (any older token stops
        working).  Refusals leave everything as it was:
        C{enrollment_invalid} (unknown code, or its client revoked),
        C{enrollment_used}, C{enrollment_expired} (after C{expires_at}).
        """

        def txn(conn: sqlite3.Connection) -> Redemption:
            row = conn.execute(
                f"SELECT {_ENROLLMENT_COLUMNS} FROM client_enrollments WHERE code_hash = ?",
                (code_hash,),
            ).fetchone()
            if row is None:
                raise PortunusError(
                    "enrollment_invalid", "this enrollment code is not known to the server"
                )
            enrollment = _enrollment(row)
            before = _fetch_client(conn, enrollment.client_id)
            if before.revoked:
                raise PortunusError(
                    "enrollment_invalid",
                    "this enrollment code belongs to a revoked client",
                    client_id=before.client_id,
                )
            if enrollment.consumed_at is not None:
                raise PortunusError(
                    "enrollment_used",
                    "this enrollment code was already used or replaced by a newer one",
                    client_id=before.client_id,
                )
            if now > enrollment.expires_at:
                raise PortunusError(
                    "enrollment_expired",
                    "this enrollment code has expired",
                    client_id=before.client_id,
                    expires_at=enrollment.expires_at,
                )
            conn.execute(
                "UPDATE client_enrollments SET consumed_at = ? WHERE id = ?",
                (now, enrollment.id),
            )
            conn.execute(
                "UPDATE clients SET token_hash = ?, token_issued_at = ? WHERE client_id = ?",
                (new_token_hash, now, before.client_id),
            )
            return Redemption(
                client=_fetch_client(conn, before.client_id),
                enrollment=_enrollment(
                    conn.execute(
                        f"SELECT {_ENROLLMENT_COLUMNS} FROM client_enrollments WHERE id = ?",
                        (enrollment.id,),
                    ).fetchone()
                ),
                rotated=before.enrolled,
            )

        return self._run("redeem_enrollment", txn, write=True)

    # -- rules ------------------------------------------------------------

    def insert_rule(
        self,
        client_id: str,
        rule: Rule,
        now: float,
        *,
        check: Callable[[list[RuleRecord]], None] | None = None,
        owner_user_id: str | None = None,
        grant_id: str | None = None,
    ) -> Deferred[RuleRecord]:
        """
        Store C{rule} as C{PENDING} under a new id (C{rule.id} is
        ignored).  C{check}, if given, is called inside the transaction
        with the client's rules overlapping C{rule}'s protocol and ports and
        may raise a L{PortunusError} to refuse: the overlap test and the
        insert are then atomic.  It runs on the store's thread, so it must
        only look at its argument.  C{owner_user_id} and C{grant_id} say who
        pushed it under which grant.  C{client_not_found}, C{client_revoked}.
        """

        def txn(conn: sqlite3.Connection) -> RuleRecord:
            _fetch_unrevoked_client(conn, client_id)
            if owner_user_id is not None and not _exists(conn, "users", "user_id", owner_user_id):
                raise PortunusError(
                    "user_not_found",
                    f"user {owner_user_id!r} was removed while the rule was being pushed",
                    user_id=owner_user_id,
                )
            if grant_id is not None and not _exists(conn, "grants", "grant_id", grant_id):
                raise PortunusError(
                    "client_not_granted",
                    f"grant {grant_id} was revoked while the rule was being pushed",
                    grant_id=grant_id,
                )
            if check is not None:
                check(
                    _overlapping(conn, client_id, rule.protocol, rule.listen.start, rule.listen.end)
                )
            cursor = conn.execute(
                "INSERT INTO rules (client_id, protocol, listen_start, listen_end, spec_json, "
                "state_kind, created_at, updated_at, owner_user_id, grant_id) "
                "VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, ?)",
                (
                    client_id,
                    rule.protocol.value,
                    rule.listen.start,
                    rule.listen.end,
                    RuleState.PENDING.value,
                    now,
                    now,
                    owner_user_id,
                    grant_id,
                ),
            )
            rule_id = cursor.lastrowid
            assert rule_id is not None
            conn.execute(
                "UPDATE rules SET spec_json = ? WHERE id = ?",
                (_spec(_with_id(rule, rule_id)), rule_id),
            )
            return _fetch_rule(conn, rule_id)

        return self._run("insert_rule", txn, write=True)

    def set_rule_state(
        self, rule_id: int, kind: RuleState | str, reason: str | None, now: float
    ) -> Deferred[RuleRecord]:
        """
        Move the rule to C{kind} with C{reason} (stored as given, normally
        only for C{FAILED}); C{rule_not_found}.
        """
        kind = RuleState(kind)

        def txn(conn: sqlite3.Connection) -> RuleRecord:
            cursor = conn.execute(
                "UPDATE rules SET state_kind = ?, state_reason = ?, updated_at = ? WHERE id = ?",
                (kind.value, reason, now, rule_id),
            )
            if cursor.rowcount == 0:
                raise _rule_not_found(rule_id)
            return _fetch_rule(conn, rule_id)

        return self._run("set_rule_state", txn, write=True)

    def get_rule(self, rule_id: int) -> Deferred[RuleRecord]:
        """The rule; C{rule_not_found}."""
        return self._run("get_rule", lambda conn: _fetch_rule(conn, rule_id), write=False)

    def list_rules(
        self, client_id: str | None = None, owner_user_id: str | None = None
    ) -> Deferred[list[RuleRecord]]:
        """Every rule, or one client's, or one owner's (or both), ordered by id."""
        where = []
        params: list[str] = []
        if client_id is not None:
            where.append("r.client_id = ?")
            params.append(client_id)
        if owner_user_id is not None:
            where.append("r.owner_user_id = ?")
            params.append(owner_user_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""

        def txn(conn: sqlite3.Connection) -> list[RuleRecord]:
            rows = conn.execute(f"{_RULE_SELECT}{clause} ORDER BY r.id", params).fetchall()
            return [_rule(row) for row in rows]

        return self._run("list_rules", txn, write=False)

    def rules_in_state(self, client_id: str, kind: RuleState | str) -> Deferred[list[RuleRecord]]:
        """One client's rules in state C{kind}, ordered by id (replay on reconnect)."""
        kind = RuleState(kind)

        def txn(conn: sqlite3.Connection) -> list[RuleRecord]:
            rows = conn.execute(
                f"{_RULE_SELECT} WHERE r.client_id = ? AND r.state_kind = ? ORDER BY r.id",
                (client_id, kind.value),
            ).fetchall()
            return [_rule(row) for row in rows]

        return self._run("rules_in_state", txn, write=False)

    def delete_rule(self, rule_id: int) -> Deferred[RuleRecord]:
        """Delete the rule and return it as it was; C{rule_not_found}."""

        def txn(conn: sqlite3.Connection) -> RuleRecord:
            record = _fetch_rule(conn, rule_id)
            conn.execute("DELETE FROM rules WHERE id = ?", (rule_id,))
            return record

        return self._run("delete_rule", txn, write=True)

    def overlapping_rules(
        self, client_id: str, protocol: Protocol | str, start: int, end: int
    ) -> Deferred[list[RuleRecord]]:
        """
        The client's rules of C{protocol} sharing a port with C{start..end}
        (inclusive), ordered by id.  Pending, active and failed rules all
        count: a failed rule holds its ports until it is removed.
        """
        proto = Protocol(protocol)
        return self._run(
            "overlapping_rules",
            lambda conn: _overlapping(conn, client_id, proto, start, end),
            write=False,
        )

    # -- settings ---------------------------------------------------------

    def get_setting(self, key: str) -> Deferred[str | None]:
        """The setting's value, C{None} when unset."""

        def txn(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM server_settings WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return self._run("get_setting", txn, write=False)

    def set_setting(self, key: str, value: str | None) -> Deferred[None]:
        """Set the setting, or unset it when C{value} is C{None}."""

        def txn(conn: sqlite3.Connection) -> None:
            if value is None:
                conn.execute("DELETE FROM server_settings WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO server_settings (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

        return self._run("set_setting", txn, write=True)


@overload
def open_store(data_dir: str, reactor: IStoreReactor, *, runner: None = None) -> Store: ...


@overload
def open_store(data_dir: str, reactor: IReactorTime | None, *, runner: Runner) -> Store: ...


def open_store(
    data_dir: str, reactor: IStoreReactor | IReactorTime | None, *, runner: Runner | None = None
) -> Store:
    """
    Open (creating if needed) C{<data_dir>/state.db}, synchronously: lock
    the data dir, apply pending migrations, and start the store's worker
    thread.  Meant for startup, before the reactor serves.

    With C{runner=None} the store owns a one-thread L{ThreadPool} on
    C{reactor}, stopped by L{Store.close} (or at reactor shutdown if
    nobody closed it).  A given C{runner} (such as
    L{run_synchronously}) is used as is and C{reactor} only tells time
    (C{None}: the system clock).

    Refusals: C{startup.store_in_use}, C{startup.schema_version_too_new},
    C{startup.store_open_failed}.
    """
    path = os.path.join(data_dir, DB_NAME)
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        lock = DataDirLock.acquire(data_dir)
    except OSError as e:
        raise _open_failed(path, e) from None
    now = time.time() if reactor is None else reactor.seconds()
    try:
        try:
            conn = connect(path)
        except sqlite3.Error as e:
            raise _open_failed(path, e) from None
        try:
            migrate(conn, now, path=path)
            version = schema_version(conn)
        except BaseException as e:
            conn.close()
            if isinstance(e, sqlite3.Error):
                raise _open_failed(path, e) from None
            raise
    except BaseException:
        lock.release()
        raise

    if runner is None:
        # The overloads: without a runner, the reactor is a whole one.
        threaded = cast(IStoreReactor, reactor)
        pool = ThreadPool(minthreads=1, maxthreads=1, name="portunus-store")
        # The worker thread starts with the reactor (work queued before then
        # waits): a process that fails before running it (a busy port, say)
        # has no non-daemon thread keeping it alive at exit.
        if threaded.running:
            pool.start()
        else:
            threaded.callWhenRunning(pool.start)
        store = Store(
            conn, lock, ThreadPoolRunner(threaded, pool), path=path, schema_version=version
        )
        _stop_with_store(store, threaded, pool)
        return store
    return Store(conn, lock, runner, path=path, schema_version=version)


def _open_failed(path: str, error: sqlite3.Error | OSError) -> PortunusError:
    return PortunusError(
        "startup.store_open_failed",
        f"cannot open {path}: {error}; check the disk and the file's permissions, "
        "or restore a backup if the file is damaged",
        path=path,
    )


def _stop_with_store(store: Store, reactor: IReactorCore, pool: ThreadPool) -> None:
    """Stop C{pool} when the store closes, and close the store at shutdown."""
    fired = False

    def at_shutdown() -> Deferred[None]:
        nonlocal fired
        fired = True
        return store.close()

    trigger = reactor.addSystemEventTrigger("during", "shutdown", at_shutdown)

    def stop() -> None:
        pool.stop()
        if not fired:
            reactor.removeSystemEventTrigger(trigger)

    store._on_close.append(stop)
