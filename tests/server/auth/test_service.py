"""
L{AccountsService}: while onboarding is open the setup token is kept in
the data dir's onboarding.token (0600) and renewed there as it expires;
it is never printed or logged; the file goes once onboarding closes.
Real accounts over a real store (inline transactions), on a L{Clock}.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from portunus.server.auth.accounts import SETUP_TOKEN_TTL_SECS, Accounts
from portunus.server.auth.service import AccountsService
from portunus.server.auth.setupfile import SetupTokenFile
from portunus.server.auth.throttle import Throttle
from tests.server._apiharness import fast_passwords, open_test_store

PASSWORD = "correct horse battery"


class _Pool:
    """The password pool's start and stop, counted."""

    running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


class AccountsServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = open_test_store(self, self.clock)
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.setup = SetupTokenFile(self.data_dir)
        self.accounts = Accounts(
            self.store.accounts,
            fast_passwords(),
            Throttle(self.clock),
            self.clock,
            setup_file=self.setup,
        )
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.service = AccountsService(self.accounts, _Pool(), self.clock)  # type: ignore[arg-type]
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.successResultOf(self.service.ready)

    def onboard(self, token: str) -> Any:
        body = {
            "user_id": "alice",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "setup_token": token,
        }
        return ensureDeferred(self.accounts.onboard(body, None))

    def test_token_file_and_log(self) -> None:
        """
        The token is in onboarding.token (0600); the log names the file and
        no event, formatted or as fields, holds the token.
        """
        token = self.setup.read()
        assert token is not None
        self.assertEqual(stat.S_IMODE(os.stat(self.setup.path).st_mode), 0o600)
        [opened] = [e for e in self.events if e.get("event") == "operator.onboarding_open"]
        self.assertEqual(opened["path"], self.setup.path)
        for event in self.events:
            self.assertNotIn(token, formatEvent(event) + repr(event))

    def test_renewed_when_it_expires(self) -> None:
        """At expiry a new token replaces the file's, and only the new one onboards."""
        old = self.setup.read()
        self.clock.advance(SETUP_TOKEN_TTL_SECS)
        new = self.setup.read()
        self.assertNotEqual(new, old)
        assert old is not None and new is not None
        self.assertEqual(self.failureResultOf(self.onboard(old)).value.code, "setup_token_invalid")
        self.successResultOf(self.onboard(new))

    def test_onboarding_removes_the_file_and_ends_renewal(self) -> None:
        """Once onboarded the file is gone and no renewal brings it back."""
        token = self.setup.read()
        assert token is not None
        self.successResultOf(self.onboard(token))
        self.assertFalse(os.path.exists(self.setup.path))
        self.clock.advance(SETUP_TOKEN_TTL_SECS)
        self.assertFalse(os.path.exists(self.setup.path))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_renewal(self) -> None:
        """A stopped service schedules nothing."""
        self.service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_superadmin_created_by_a_bearer_closes_onboarding(self) -> None:
        """A superadmin made through the API (operator token) also removes the file."""
        body = {"user_id": "root", "role": "superadmin", "initial_password": PASSWORD}
        self.successResultOf(ensureDeferred(self.accounts.create_user(body)))
        self.assertFalse(os.path.exists(self.setup.path))
