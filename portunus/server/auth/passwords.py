"""
Password policy and Argon2id hashing for user accounts.

Hashing is deliberately slow (about 19 MiB and two passes per call, the
OWASP baseline for Argon2id), so it never runs on the reactor thread: every
hash and verify goes through an injected C{run_in_thread}, and the answers
(and any log lines) come back on the reactor thread.

A login for a user that does not exist still pays for one full verify,
against a dummy hash made with the same parameters, so response time does
not tell an attacker which user ids exist.
"""

from __future__ import annotations

import contextlib
import enum
import secrets
import threading
from collections.abc import Callable
from typing import NoReturn, Protocol, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import HashingError, InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from portunus.errors import PortunusError

__all__ = [
    "MAX_PASSWORD_BYTES",
    "MIN_PASSWORD_CHARS",
    "Passwords",
    "ThreadRunner",
    "check_confirmation",
    "check_password_policy",
    "new_temporary_password",
    "thread_runner",
]

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_BYTES = 1024

_T = TypeVar("_T")

log = Logger()


class ThreadRunner(Protocol):
    """Runs a blocking call off the reactor thread; the Deferred fires on it."""

    def __call__(self, fn: Callable[[], _T], /) -> Deferred[_T]: ...


def thread_runner(reactor: IReactorFromThreads, pool: ThreadPool) -> ThreadRunner:
    """The production L{ThreadRunner}: C{fn} runs in C{pool}."""

    def run(fn: Callable[[], _T]) -> Deferred[_T]:
        return deferToThreadPool(reactor, pool, fn)

    return run


def check_password_policy(value: object, field: str) -> str:
    """
    Return C{value} if it may be set as a new password, else raise
    C{password_invalid}, C{password_too_short} or C{password_too_long}
    naming C{field}.

    Length is counted in characters, so a passphrase in any script is held
    to the same minimum; the byte cap only bounds the work a hash costs.
    """
    if not isinstance(value, str):
        raise PortunusError(
            "password_invalid",
            f"{field} must be a JSON string; send the password as text",
            field=field,
        )
    if "\x00" in value:
        raise PortunusError(
            "password_invalid", f"{field} must not contain a NUL character; remove it", field=field
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise PortunusError(
            "password_invalid",
            f"{field} is not valid Unicode text (it has an unpaired surrogate); retype it",
            field=field,
        ) from None
    if len(value) < MIN_PASSWORD_CHARS:
        raise PortunusError(
            "password_too_short",
            f"{field} is too short; use at least {MIN_PASSWORD_CHARS} characters",
            field=field,
        )
    if size > MAX_PASSWORD_BYTES:
        raise PortunusError(
            "password_too_long",
            f"{field} is too long; use at most {MAX_PASSWORD_BYTES} bytes of UTF-8",
            field=field,
        )
    return value


def check_confirmation(password: str, confirmation: object, field: str) -> None:
    """Refuse with C{password_mismatch} unless the user typed it the same twice."""
    if confirmation != password:
        raise PortunusError(
            "password_mismatch",
            f"{field} does not match the new password; type the same password in both fields",
            field=field,
        )


def new_temporary_password() -> str:
    """
    A fresh random password (144 bits, 24 URL-safe characters) for an
    account a superadmin creates or resets; the user must change it.
    """
    return secrets.token_urlsafe(18)


def _encode(password: str) -> bytes:
    # argon2 encodes str as strict UTF-8, which raises on a lone surrogate
    # (possible from JSON); surrogatepass gives the same bytes for every
    # valid string and bytes no valid string has for the rest.
    return password.encode("utf-8", "surrogatepass")


class _Verdict(enum.Enum):
    MATCH = enum.auto()
    MISMATCH = enum.auto()
    UNREADABLE = enum.auto()


class Passwords:
    """Argon2id hashing (argon2-cffi) that never runs on the reactor thread."""

    def __init__(
        self,
        run_in_thread: ThreadRunner,
        *,
        time_cost: int = 2,
        memory_cost: int = 19456,
        parallelism: int = 1,
    ) -> None:
        self._run = run_in_thread
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID
        )
        self._dummy_lock = threading.Lock()
        self._dummy_hash: str | None = None

    def hash(self, password: str) -> Deferred[str]:
        """
        The PHC string (C{$argon2id$...}) for C{password}; fails with
        C{password_hash_failed} if argon2 cannot hash it.
        """
        return self._run(lambda: self._hasher.hash(_encode(password))).addErrback(_hash_failed)

    def verify(self, phc_hash: str | None, password: str) -> Deferred[bool]:
        """
        Whether C{password} matches C{phc_hash}.  C{None} (no such user)
        costs one full verify and answers C{False}; so does a hash that
        cannot be read, which is also logged.
        """
        if phc_hash is None:
            return self._run(lambda: self._verify_dummy(password))
        stored = phc_hash
        return self._run(lambda: self._verify(stored, password)).addCallback(_verdict)

    def needs_rehash(self, phc_hash: str) -> bool:
        """Whether C{phc_hash} was made with other parameters (or cannot be read)."""
        try:
            return self._hasher.check_needs_rehash(phc_hash)
        except InvalidHashError:
            return True

    def _verify(self, phc_hash: str, password: str) -> tuple[_Verdict, str]:
        # Runs in the thread, so it only reports; _verdict logs on return.
        try:
            self._hasher.verify(phc_hash, _encode(password))
        except VerifyMismatchError:
            return _Verdict.MISMATCH, ""
        except InvalidHashError:
            return _Verdict.UNREADABLE, "not an Argon2 hash"
        except VerificationError as e:
            return _Verdict.UNREADABLE, str(e)
        return _Verdict.MATCH, ""

    def _verify_dummy(self, password: str) -> bool:
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash(new_temporary_password())
            dummy = self._dummy_hash
        with contextlib.suppress(VerificationError):
            self._hasher.verify(dummy, _encode(password))
        return False


def _verdict(outcome: tuple[_Verdict, str]) -> bool:
    verdict, reason = outcome
    if verdict is _Verdict.UNREADABLE:
        log.warn(
            "a stored password hash could not be read ({reason}); the password was refused",
            event="auth.password_hash_unreadable",
            reason=reason,
        )
    return verdict is _Verdict.MATCH


def _hash_failed(failure: Failure) -> NoReturn:
    failure.trap(HashingError)
    log.error(
        "argon2 could not hash a password: {reason}",
        event="auth.password_hash_failed",
        reason=str(failure.value),
    )
    raise PortunusError("password_hash_failed", "the server could not hash the password")
