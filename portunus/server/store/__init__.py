"""
The server's store: every piece of server state, in SQLite under
C{--data-dir}.

L{open_store} locks the data dir, migrates C{state.db} and returns a
L{Store} whose methods are named transactions returning Deferreds; they
run on one worker thread that owns the connection.  L{backup},
L{restore} and L{reset} are the offline tools behind the CLI commands of
the same names.
"""

from portunus.server.store._accounts import AccountStore, GrantRecord, UserRecord, UserRemoval
from portunus.server.store._audit import AuditRecord, AuditStore
from portunus.server.store._offline import (
    ResetResult,
    RestoreResult,
    backup,
    reset,
    restore,
)
from portunus.server.store._records import (
    ClientRecord,
    EnrollmentRecord,
    Redemption,
    RuleRecord,
    RuleState,
)
from portunus.server.store._runner import Runner, ThreadPoolRunner, run_synchronously
from portunus.server.store._schema import DB_NAME, LOCK_NAME
from portunus.server.store._store import Store, open_store
from portunus.server.store.migrations import SCHEMA_VERSION

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "AccountStore",
    "AuditRecord",
    "AuditStore",
    "ClientRecord",
    "EnrollmentRecord",
    "GrantRecord",
    "Redemption",
    "ResetResult",
    "RestoreResult",
    "RuleRecord",
    "RuleState",
    "Runner",
    "Store",
    "ThreadPoolRunner",
    "UserRecord",
    "UserRemoval",
    "backup",
    "open_store",
    "reset",
    "restore",
    "run_synchronously",
]
