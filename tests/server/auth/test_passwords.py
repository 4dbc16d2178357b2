"""
Tests for L{portunus.server.auth.passwords}.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import HashingError
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portunus.errors import PortunusError, lookup
from portunus.server.auth.passwords import (
    MAX_PASSWORD_BYTES,
    MIN_PASSWORD_CHARS,
    Passwords,
    check_confirmation,
    check_password_policy,
    new_temporary_password,
    thread_runner,
)

_T = TypeVar("_T")

CHEAP = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
CHEAP_PREFIX = "$argon2id$v=19$m=8,t=1,p=1$"
GOOD = "correct horse battery"


class QueuedRunner:
    """
    A C{run_in_thread} that holds each call until L{run_all}, as a thread
    pool would, and counts the calls it was given.
    """

    def __init__(self) -> None:
        self.calls = 0
        self._pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, fn: Callable[[], _T]) -> Deferred[_T]:
        self.calls += 1
        d: Deferred[_T] = Deferred()
        self._pending.append((fn, d))
        return d

    def run_all(self) -> None:
        pending, self._pending = self._pending, []
        for fn, d in pending:
            defer.maybeDeferred(fn).chainDeferred(d)


def synchronous(fn: Callable[[], _T]) -> Deferred[_T]:
    return defer.execute(fn)


def spy_on_hash(case: SynchronousTestCase) -> list[str | bytes]:
    """Record every password argon2 is asked to hash, for the rest of C{case}."""
    hashed: list[str | bytes] = []
    real_hash = PasswordHasher.hash

    def spy(hasher: PasswordHasher, password: str | bytes, **kw: Any) -> str:
        hashed.append(password)
        return real_hash(hasher, password, **kw)

    case.patch(PasswordHasher, "hash", spy)
    return hashed


def policy_error(value: object) -> PortunusError:
    try:
        check_password_policy(value, "new_password")
    except PortunusError as e:
        return e
    raise AssertionError(f"{value!r} was accepted")


class PolicyTests(SynchronousTestCase):
    """What a new password must be."""

    def test_minimum_is_twelve_characters(self) -> None:
        """Eleven characters are refused as too short; twelve are accepted."""
        error = policy_error("a" * (MIN_PASSWORD_CHARS - 1))
        self.assertEqual(error.code, "password_too_short")
        self.assertEqual(error.fields, {"field": "new_password"})
        self.assertIn("new_password", error.message)
        self.assertIn("12", error.message)
        self.assertEqual(check_password_policy("a" * 12, "new_password"), "a" * 12)

    def test_multibyte_characters_count_once(self) -> None:
        """Length is counted in characters, not bytes: 11 euro signs (33 bytes) are too short."""
        self.assertEqual(policy_error("€" * 11).code, "password_too_short")
        self.assertEqual(check_password_policy("€" * 12, "p"), "€" * 12)
        self.assertEqual(check_password_policy("😀" * 12, "p"), "😀" * 12)

    def test_maximum_is_1024_bytes(self) -> None:
        """1024 UTF-8 bytes are accepted; 1025 are refused as too long."""
        self.assertEqual(len(check_password_policy("a" * MAX_PASSWORD_BYTES, "p")), 1024)
        error = policy_error("a" * (MAX_PASSWORD_BYTES + 1))
        self.assertEqual(error.code, "password_too_long")
        self.assertEqual(error.fields, {"field": "new_password"})
        self.assertIn("1024", error.message)

    def test_maximum_counts_utf8_bytes(self) -> None:
        """The cap is on bytes: 342 euro signs (1026 bytes) are too long, 341 (1023) fit."""
        self.assertEqual(policy_error("€" * 342).code, "password_too_long")
        self.assertEqual(check_password_policy("€" * 341, "p"), "€" * 341)

    def test_not_a_string(self) -> None:
        """Anything but a str (a number, null, bytes, a list) is password_invalid."""
        for value in (123456789012345, None, b"a" * 20, ["a" * 20]):
            error = policy_error(value)
            self.assertEqual(error.code, "password_invalid", value)
            self.assertEqual(error.fields, {"field": "new_password"})
            self.assertIn("new_password", error.message)

    def test_nul_refused(self) -> None:
        """A NUL anywhere is password_invalid, even in an otherwise good password."""
        self.assertEqual(policy_error(GOOD + "\x00").code, "password_invalid")
        self.assertEqual(policy_error("\x00" + GOOD).code, "password_invalid")

    def test_lone_surrogate_refused(self) -> None:
        """JSON can carry an unpaired surrogate; it is refused, not a crash in encode."""
        self.assertEqual(policy_error(GOOD + "\ud800").code, "password_invalid")

    def test_codes_are_422(self) -> None:
        """The policy codes answer 422 as in Portunus."""
        for code in ("password_too_short", "password_too_long", "password_invalid"):
            self.assertEqual(lookup(code).http_status, 422)


class ConfirmationTests(SynchronousTestCase):
    """The new password must be typed the same twice."""

    def test_match(self) -> None:
        """The same string passes."""
        check_confirmation(GOOD, GOOD, "confirm_password")

    def test_mismatch(self) -> None:
        """A different string, or a non-string, is password_mismatch naming the field."""
        for other in (GOOD + " ", GOOD.upper(), None, 12):
            with self.assertRaises(PortunusError) as cm:
                check_confirmation(GOOD, other, "confirm_password")
            self.assertEqual(cm.exception.code, "password_mismatch")
            self.assertEqual(cm.exception.fields, {"field": "confirm_password"})
            self.assertIn("confirm_password", cm.exception.message)


class TemporaryPasswordTests(SynchronousTestCase):
    """Generated passwords for created or reset accounts."""

    def test_passes_policy_and_url_safe(self) -> None:
        """A temporary password is at least 20 URL-safe characters and meets the policy."""
        allowed = set(string.ascii_letters + string.digits + "-_")
        for _ in range(20):
            value = new_temporary_password()
            self.assertGreaterEqual(len(value), 20)
            self.assertLessEqual(set(value), allowed)
            self.assertEqual(check_password_policy(value, "p"), value)

    def test_differ(self) -> None:
        """Each call gives a new password."""
        self.assertEqual(len({new_temporary_password() for _ in range(50)}), 50)


class HashTests(SynchronousTestCase):
    """Hashing goes through the runner and yields Argon2id PHC strings."""

    def test_roundtrip(self) -> None:
        """A hash verifies with its password and not with another."""
        passwords = Passwords(synchronous, **CHEAP)
        phc = self.successResultOf(passwords.hash(GOOD))
        self.assertTrue(phc.startswith(CHEAP_PREFIX), phc)
        self.assertTrue(self.successResultOf(passwords.verify(phc, GOOD)))
        self.assertFalse(self.successResultOf(passwords.verify(phc, GOOD + "!")))
        self.assertFalse(self.successResultOf(passwords.verify(phc, "")))

    def test_salted(self) -> None:
        """The same password hashes differently each time."""
        passwords = Passwords(synchronous, **CHEAP)
        self.assertNotEqual(
            self.successResultOf(passwords.hash(GOOD)), self.successResultOf(passwords.hash(GOOD))
        )

    def test_unicode_roundtrip(self) -> None:
        """Non-ASCII passwords hash as UTF-8 and verify."""
        passwords = Passwords(synchronous, **CHEAP)
        phc = self.successResultOf(passwords.hash("pässwörd-€-😀-long"))
        self.assertTrue(self.successResultOf(passwords.verify(phc, "pässwörd-€-😀-long")))
        self.assertTrue(PasswordHasher().verify(phc, "pässwörd-€-😀-long"))

    def test_default_parameters(self) -> None:
        """By default the hash is Argon2id with m=19456 KiB, t=2, p=1."""
        phc = self.successResultOf(Passwords(synchronous).hash(GOOD))
        self.assertTrue(phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), phc)

    def test_hash_runs_in_runner(self) -> None:
        """Nothing is hashed until the runner runs the call it was handed."""
        hashed = spy_on_hash(self)
        runner = QueuedRunner()
        passwords = Passwords(runner, **CHEAP)
        d = passwords.hash(GOOD)
        self.assertEqual(runner.calls, 1)
        self.assertEqual(hashed, [])
        self.assertNoResult(d)
        runner.run_all()
        self.assertEqual(hashed, [GOOD.encode()])
        self.assertTrue(self.successResultOf(d).startswith(CHEAP_PREFIX))

    def test_verify_runs_in_runner(self) -> None:
        """Verification is handed to the runner too."""
        phc = self.successResultOf(Passwords(synchronous, **CHEAP).hash(GOOD))
        runner = QueuedRunner()
        d = Passwords(runner, **CHEAP).verify(phc, GOOD)
        self.assertEqual(runner.calls, 1)
        self.assertNoResult(d)
        runner.run_all()
        self.assertTrue(self.successResultOf(d))

    def test_hashing_error(self) -> None:
        """An argon2 HashingError fails the Deferred with password_hash_failed, logged."""

        def broken(self: PasswordHasher, password: str | bytes, **kw: object) -> str:
            raise HashingError("Memory allocation error")

        self.patch(PasswordHasher, "hash", broken)
        with capturedLogs() as events:
            failure = self.failureResultOf(
                Passwords(synchronous, **CHEAP).hash(GOOD), PortunusError
            )
        self.assertEqual(failure.value.code, "password_hash_failed")
        self.assertEqual(lookup("password_hash_failed").http_status, 500)
        self.assertEqual([e.get("event") for e in events], ["auth.password_hash_failed"])
        self.assertNotIn(GOOD, repr(events))

    def test_other_errors_pass_through(self) -> None:
        """A failure that is not argon2's (a broken pool, say) is not disguised."""

        def failing(fn: Callable[[], _T]) -> Deferred[_T]:
            return defer.fail(Failure(RuntimeError("pool stopped")))

        self.failureResultOf(Passwords(failing, **CHEAP).hash(GOOD), RuntimeError)


class VerifyTests(SynchronousTestCase):
    """Verification answers a bool, never an exception, for bad input."""

    def setUp(self) -> None:
        self.passwords = Passwords(synchronous, **CHEAP)
        self.phc = self.successResultOf(self.passwords.hash(GOOD))
        self.verified: list[tuple[str, str | bytes]] = []
        real_verify = PasswordHasher.verify

        def spy(hasher: PasswordHasher, phc: str | bytes, password: str | bytes) -> bool:
            self.verified.append((str(phc), password))
            return real_verify(hasher, phc, password)

        self.patch(PasswordHasher, "verify", spy)

    def test_unknown_user_runs_dummy_verify(self) -> None:
        """
        With no hash (no such user) one full verify still runs, in the runner,
        against an Argon2id hash with the same parameters; the answer is False.
        """
        hashed = spy_on_hash(self)
        runner = QueuedRunner()
        passwords = Passwords(runner, **CHEAP)
        d = passwords.verify(None, GOOD)
        self.assertEqual(runner.calls, 1)
        self.assertEqual((self.verified, hashed), ([], []))
        runner.run_all()
        self.assertEqual(len(hashed), 1)
        self.assertIs(self.successResultOf(d), False)
        [(dummy, password)] = self.verified
        self.assertTrue(dummy.startswith(CHEAP_PREFIX), dummy)
        self.assertEqual(password, GOOD.encode())

    def test_dummy_hash_made_once(self) -> None:
        """Later unknown-user checks reuse the dummy hash rather than hashing again."""
        self.assertFalse(self.successResultOf(self.passwords.verify(None, "a")))
        self.assertFalse(self.successResultOf(self.passwords.verify(None, "b")))
        self.assertEqual(len(self.verified), 2)
        self.assertEqual(self.verified[0][0], self.verified[1][0])

    def test_wrong_password(self) -> None:
        """A wrong password is False after a full verify against the stored hash."""
        self.assertIs(self.successResultOf(self.passwords.verify(self.phc, "wrong")), False)
        self.assertEqual(self.verified, [(self.phc, b"wrong")])

    def test_malformed_hash(self) -> None:
        """
        A hash that cannot be read (not Argon2, truncated, another scheme)
        answers False and logs auth.password_hash_unreadable without the hash.
        """
        bad_hashes = [
            "not a hash",
            "",
            self.phc[:-10],
            "$2b$12$abcdefghijklmnopqrstuu5sVgq6Rxp3lV2V0.QkJ9Qs6Vn3cF7yW",
            "$argon2id$v=19$m=8,t=1,p=1$!!!!$!!!!",
        ]
        for bad in bad_hashes:
            with capturedLogs() as events:
                result = self.successResultOf(self.passwords.verify(bad, GOOD))
            self.assertIs(result, False, bad)
            self.assertEqual(
                [e.get("event") for e in events], ["auth.password_hash_unreadable"], bad
            )
            self.assertEqual(events[0]["log_level"].name, "warn")
            if bad:
                self.assertNotIn(bad, repr(events))

    def test_mismatch_not_logged(self) -> None:
        """An ordinary wrong password logs nothing here (the caller audits logins)."""
        with capturedLogs() as events:
            self.successResultOf(self.passwords.verify(self.phc, "wrong"))
        self.assertEqual(events, [])

    def test_lone_surrogate_is_false(self) -> None:
        """A password with an unpaired surrogate is a plain mismatch, not an error."""
        self.assertIs(self.successResultOf(self.passwords.verify(self.phc, "\ud800")), False)
        self.assertIs(self.successResultOf(self.passwords.verify(None, "\ud800")), False)


class RehashTests(SynchronousTestCase):
    """needs_rehash tells the login path when to upgrade a stored hash."""

    def test_same_parameters(self) -> None:
        """A hash made with the current parameters is kept."""
        passwords = Passwords(synchronous, **CHEAP)
        self.assertFalse(passwords.needs_rehash(self.successResultOf(passwords.hash(GOOD))))

    def test_other_parameters(self) -> None:
        """A hash made with other costs, or with Argon2i, needs a rehash."""
        passwords = Passwords(synchronous, **CHEAP)
        stronger = Passwords(synchronous, time_cost=2, memory_cost=16, parallelism=1)
        self.assertTrue(passwords.needs_rehash(self.successResultOf(stronger.hash(GOOD))))
        argon2i = PasswordHasher(type=Type.I, **CHEAP).hash(GOOD)
        self.assertTrue(passwords.needs_rehash(argon2i))

    def test_unreadable(self) -> None:
        """An unreadable hash needs replacing rather than raising."""
        self.assertTrue(Passwords(synchronous, **CHEAP).needs_rehash("not a hash"))


class ThreadRunnerTests(SynchronousTestCase):
    """The production runner hands calls to the pool and answers via the reactor."""

    def test_runs_in_pool(self) -> None:
        """C{fn} goes to the pool; its result comes back through callFromThread."""
        handed: list[str] = []

        class Pool:
            def callInThreadWithCallback(
                self, onResult: Callable[[bool, object], None], f: Callable[[], object]
            ) -> None:
                handed.append("pool")
                onResult(True, f())

        class Reactor:
            def callFromThread(self, f: Callable[..., object], *args: object) -> None:
                handed.append("reactor")
                f(*args)

        run = thread_runner(Reactor(), Pool())  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(run(lambda: 42)), 42)
        self.assertEqual(handed, ["pool", "reactor"])
