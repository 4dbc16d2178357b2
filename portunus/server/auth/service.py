"""
The accounts service's place in the server's service tree: the password
hashing threads run while the server does, and at start it loads whether
onboarding is over and, while it is not, prints a fresh setup token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from portunus.server.auth.accounts import Accounts

__all__ = ["SETUP_TOKEN_LINE", "AccountsService"]

log = Logger(namespace="portunus.server.auth")

#: What C{serve} prints (to stderr, never to the log) while onboarding is open.
SETUP_TOKEN_LINE = "Portunus onboarding setup token: {token}"


class AccountsService(Service):
    """Starts and stops the password pool and loads the accounts state."""

    def __init__(
        self, accounts: Accounts, pool: ThreadPool, announce: Callable[[str], None]
    ) -> None:
        self.accounts = accounts
        self._pool = pool
        self._announce = announce
        #: Fires once the accounts state is loaded (tests and startup wait on it).
        self.ready: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        self._pool.start()
        ensureDeferred(self._load()).addErrback(
            lambda f: log.failure("could not load accounts", f, event="operator.store_error")
        )

    async def _load(self) -> None:
        token = await self.accounts.start()
        if token is not None:
            self._announce(SETUP_TOKEN_LINE.format(token=token))
            log.info(
                "no superadmin yet: open the console and onboard with the setup token "
                "printed above (valid 30 minutes; a restart prints a new one)",
                event="operator.onboarding_open",
            )
        self.ready.callback(None)

    def stopService(self) -> Any:
        self._pool.stop()
        return super().stopService()
