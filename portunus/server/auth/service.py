"""
The accounts service's place in the server's service tree: the password
hashing threads run while the server does, and at start it loads whether
onboarding is over.  While it is not, the setup token lives in the data
dir's C{onboarding.token} (never on stderr, which is the log under twistd)
and is replaced there each time it expires, so the file always holds one
that works.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from portunus.errors import PortunusError
from portunus.server.auth.accounts import SETUP_TOKEN_TTL_SECS, Accounts

__all__ = ["AccountsService"]

log = Logger(namespace="portunus.server.auth")


class AccountsService(Service):
    """Starts and stops the password pool, loads the accounts state, renews the setup token."""

    def __init__(self, accounts: Accounts, pool: ThreadPool, clock: IReactorTime) -> None:
        self.accounts = accounts
        self._pool = pool
        self._clock = clock
        self._renewal: IDelayedCall | None = None
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
            setup = self.accounts.setup_file
            log.info(
                "no superadmin yet: open the console and onboard with the setup token in "
                "{path} (portunus-server onboarding-token prints it; a new one replaces it "
                "every 30 minutes)",
                event="operator.onboarding_open",
                path=None if setup is None else setup.path,
            )
            self._schedule_renewal()
        self.ready.callback(None)

    def _schedule_renewal(self) -> None:
        if self.running:
            self._renewal = self._clock.callLater(SETUP_TOKEN_TTL_SECS, self._renew)

    def _renew(self) -> None:
        self._renewal = None
        if self.accounts.bootstrapped():
            return
        d = ensureDeferred(self.accounts.rotate_setup_token())
        d.addCallbacks(lambda _: self._schedule_renewal(), self._renewal_failed)

    def _renewal_failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, PortunusError) and error.code == "already_bootstrapped":
            # Onboarding finished while the renewal was on its way.
            return
        log.failure(
            "could not renew the onboarding setup token", failure, event="operator.store_error"
        )

    def stopService(self) -> Any:
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self._renewal = None
        self._pool.stop()
        return super().stopService()
