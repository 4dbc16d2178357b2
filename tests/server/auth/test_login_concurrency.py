"""
The login throttle holds when guesses arrive together: the accounts
service reserves each guess before its password is checked, so of many
simultaneous wrong passwords only as many as the lock allows are ever
hashed; the same across user names from one address (spraying).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.errors import PortunusError
from portunus.server.auth.accounts import Accounts
from portunus.server.auth.passwords import Passwords
from portunus.server.auth.throttle import MAX_ADDRESS_FAILURES, MAX_FAILURES, Throttle
from tests.server._apiharness import open_test_store

PASSWORD = "correct horse battery"
REMOTE = "192.0.2.10"


class HeldThreads:
    """A thread runner whose calls wait until released (or run at once when not holding)."""

    def __init__(self) -> None:
        self.holding = False
        self.held: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self.calls = 0

    def __call__(self, fn: Callable[[], Any]) -> Deferred[Any]:
        self.calls += 1
        d: Deferred[Any] = Deferred()
        if self.holding:
            self.held.append((fn, d))
        else:
            d.callback(fn())
        return d

    def release(self) -> None:
        held, self.held = self.held, []
        for fn, d in held:
            d.callback(fn())


class ConcurrentGuessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        store = open_test_store(self, self.clock)
        self.threads = HeldThreads()
        passwords = Passwords(self.threads, time_cost=1, memory_cost=8, parallelism=1)
        self.accounts = Accounts(store.accounts, passwords, Throttle(self.clock), self.clock)
        for user in ("alice", *(f"user{i}" for i in range(30))):
            self.successResultOf(
                ensureDeferred(
                    self.accounts.create_user(
                        {"user_id": user, "initial_password": PASSWORD, "role": "user"}
                    )
                )
            )
        self.threads.holding = True
        self.threads.calls = 0

    def guess_all(self, users: list[str]) -> tuple[int, list[str]]:
        """
        Send one wrong guess per entry of C{users}, all before any is
        checked; release the checks; return how many passwords were hashed
        and the code each guess ended with.
        """
        guesses = [
            ensureDeferred(self.accounts.login(user, "wrong password!", REMOTE, None))
            for user in users
        ]
        checked = self.threads.calls
        self.threads.release()
        codes = []
        for d in guesses:
            failure = self.failureResultOf(d, PortunusError)
            assert isinstance(failure.value, PortunusError)
            codes.append(failure.value.code)
        return checked, codes

    def test_hundred_simultaneous_guesses_check_five(self) -> None:
        """
        100 simultaneous wrong passwords for one user: 5 are checked (and
        fail), 95 are refused with rate_limited without a hash; then the
        user is locked, even with the right password.
        """
        checked, codes = self.guess_all(["alice"] * 100)
        self.assertEqual(checked, MAX_FAILURES)
        self.assertEqual(codes.count("invalid_login"), MAX_FAILURES)
        self.assertEqual(codes.count("rate_limited"), 100 - MAX_FAILURES)
        self.threads.holding = False
        failure = self.failureResultOf(
            ensureDeferred(self.accounts.login("alice", PASSWORD, REMOTE, None)), PortunusError
        )
        assert isinstance(failure.value, PortunusError)
        self.assertEqual(failure.value.fields["retry_after"], 60)

    def test_simultaneous_spraying_checks_the_address_limit(self) -> None:
        """
        Wrong passwords from one address, one for each of 30 users, all at
        once: only the address limit's worth are checked, and then that
        address is locked for every user, while another address is not.
        """
        checked, codes = self.guess_all([f"user{i}" for i in range(30)])
        self.assertEqual(checked, MAX_ADDRESS_FAILURES)
        self.assertEqual(codes.count("rate_limited"), 30 - MAX_ADDRESS_FAILURES)
        self.threads.holding = False
        self.failureResultOf(
            ensureDeferred(self.accounts.login("alice", PASSWORD, REMOTE, None)), PortunusError
        )
        login = self.successResultOf(
            ensureDeferred(self.accounts.login("alice", PASSWORD, "192.0.2.11", None))
        )
        self.assertEqual(login.user.user_id, "alice")
