"""
Throttling of password guesses: login, onboarding, password changes and
resets.

Failures are counted in memory, per key, as Portunus does: the
C{max_failures}th failure in a window locks the key for a minute, and
each further failure doubles the lock up to fifteen minutes.  Every guess
is counted under two keys:

  - (action, subject, remote address), locked after L{MAX_FAILURES}: one
    noisy client cannot lock a user out from everywhere, and one user's
    typos do not block a shared NAT;
  - (action, any subject, remote network), locked after
    L{MAX_ADDRESS_FAILURES}: one source guessing across many user names
    (password spraying) is stopped too.  The network is the IPv4
    address, or the IPv6 /64, since one host usually holds a whole /64.

A guess is reserved before its password is checked (L{Throttle.attempt}),
in the reactor thread, before the first wait: guesses in flight count as
failures until they are decided, so a burst of simultaneous wrong
passwords checks at most C{max_failures} of them, however many arrive at
once.

Memory is bounded: a flood of distinct keys evicts idle ones first, then
the longest-idle, so the table never holds more than C{max_keys}; a key
with a guess in flight is never evicted (when every key has one, a new
key's guess is refused).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from types import TracebackType

import attrs
from twisted.internet.interfaces import IReactorTime

from portunus.errors import PortunusError

__all__ = [
    "BASE_LOCKOUT_SECS",
    "MAX_ADDRESS_FAILURES",
    "MAX_FAILURES",
    "MAX_KEYS",
    "MAX_LOCKOUT_SECS",
    "WINDOW_SECS",
    "Attempt",
    "Throttle",
    "source_network",
]

#: Failures of one (action, subject, address) before it is locked.
MAX_FAILURES = 5
#: Failures of one (action, source network), across subjects, before it is locked.
MAX_ADDRESS_FAILURES = 20
#: The first lock; each further failure doubles it ...
BASE_LOCKOUT_SECS = 60.0
#: ... up to this.
MAX_LOCKOUT_SECS = 900.0
#: A key's count starts over once its last failure is this old.
WINDOW_SECS = 900.0
#: Keys held in memory at most.
MAX_KEYS = 10_000

#: The subject of the per-network keys (no user id can be C{*}).
_ANY_SUBJECT = "*"

_Key = tuple[str, str, str | None]

#: Doubling stops mattering long before this; it keeps the float finite.
_MAX_DOUBLINGS = 64


def source_network(remote: str | None) -> str | None:
    """
    The network the per-source limits key on (here, and the control
    port's gate): an IPv4 address itself (an IPv4-mapped IPv6 address as
    IPv4), an IPv6 address's /64, without its zone, since one host usually
    holds a whole /64; anything else (a UNIX socket's peer, C{None}) as it is.
    """
    if remote is None:
        return None
    try:
        address = ipaddress.ip_address(remote.partition("%")[0])
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@attrs.define
class _Failures:
    count: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0
    #: Guesses reserved and not yet decided.
    in_flight: int = 0

    def current(self, now: float, window: float) -> int:
        """Failures that still count: none once the last is a window old."""
        return self.count if now - self.last_failure < window else 0


def _refusal(action: str, retry_after: int, why: str) -> PortunusError:
    return PortunusError(
        "rate_limited",
        f"too many failed {action} attempts{why}; wait {retry_after} seconds and try again",
        retry_after=retry_after,
        action=action,
    )


class Attempt:
    """
    One reserved guess.  Decide it with L{failed} or L{succeeded}; used as
    a context manager, a guess left undecided (the request failed for
    another reason) is released without counting.
    """

    def __init__(self, throttle: Throttle, keys: list[tuple[_Key, _Failures]]) -> None:
        self._throttle = throttle
        self._keys = keys
        self._done = False

    def failed(self) -> None:
        """The guess was wrong: count it under every key."""
        if self._settle():
            for key, entry in self._keys:
                self._throttle._count_failure(key, entry)

    def succeeded(self) -> None:
        """The guess was right: forget the subject's failures (not the network's)."""
        if self._settle():
            _, subject = self._keys[0]
            subject.count = 0
            subject.locked_until = 0.0
            for key, entry in self._keys:
                self._throttle._forget_if_empty(key, entry)

    def release(self) -> None:
        """The guess was never decided: free its reservation."""
        if self._settle():
            for key, entry in self._keys:
                self._throttle._forget_if_empty(key, entry)

    def _settle(self) -> bool:
        if self._done:
            return False
        self._done = True
        for _, entry in self._keys:
            entry.in_flight -= 1
        return True

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class Throttle:
    """Failure counts and lockouts per subject and per source network, on C{clock}."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_failures: int = MAX_FAILURES,
        max_address_failures: int = MAX_ADDRESS_FAILURES,
        base_lockout: float = BASE_LOCKOUT_SECS,
        max_lockout: float = MAX_LOCKOUT_SECS,
        window: float = WINDOW_SECS,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if min(max_failures, max_address_failures, max_keys) < 1:
            raise ValueError("max_failures, max_address_failures and max_keys must be at least 1")
        self._clock = clock
        self._max_failures = max_failures
        self._max_address_failures = max_address_failures
        self._base_lockout = base_lockout
        self._max_lockout = max_lockout
        self._window = window
        self._max_keys = max_keys
        # Ordered by last use, oldest first, so eviction reads the front.
        self._keys: OrderedDict[_Key, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def attempt(self, action: str, subject: str, remote: str | None) -> Attempt:
        """
        Reserve one guess of C{subject}'s secret from C{remote}, or refuse
        with C{rate_limited} (429, C{retry_after} seconds): while either
        key is locked, or while guesses are in flight that would reach its
        limit if they failed (once a lock has run out, one guess at a time).
        """
        now = self._clock.seconds()
        wanted = [
            ((action, subject, remote), self._max_failures, ""),
            (
                (action, _ANY_SUBJECT, source_network(remote)),
                self._max_address_failures,
                " from your address",
            ),
        ]
        for key, limit, why in wanted:
            entry = self._keys.get(key)
            if entry is None:
                continue
            remaining = entry.locked_until - now
            if remaining > 0:
                raise _refusal(action, max(1, math.ceil(remaining)), why)
            if entry.in_flight and entry.current(now, self._window) + entry.in_flight >= limit:
                # Enough guesses are in flight to reach the lock if they
                # fail; they are decided within a password hash.
                raise _refusal(action, 1, why)
        keys = [key for key, _, _ in wanted]
        reserved = [(key, self._entry(key, now, keys, action)) for key in keys]
        for _, entry in reserved:
            entry.in_flight += 1
        return Attempt(self, reserved)

    def _entry(self, key: _Key, now: float, keep: list[_Key], action: str) -> _Failures:
        entry = self._keys.get(key)
        if entry is None:
            self._make_room(now, keep)
            if len(self._keys) >= self._max_keys:
                raise _refusal(action, 1, " (too many guesses in flight)")
            entry = self._keys[key] = _Failures()
        return entry

    def _count_failure(self, key: _Key, entry: _Failures) -> None:
        now = self._clock.seconds()
        limit = self._max_failures if key[1] != _ANY_SUBJECT else self._max_address_failures
        entry.count = entry.current(now, self._window) + 1
        entry.last_failure = now
        if key in self._keys:
            self._keys.move_to_end(key)
        if entry.count >= limit:
            entry.locked_until = now + self._lockout(entry.count, limit)

    def _forget_if_empty(self, key: _Key, entry: _Failures) -> None:
        if entry.in_flight == 0 and entry.count == 0 and self._keys.get(key) is entry:
            del self._keys[key]

    def _lockout(self, count: int, limit: int) -> float:
        doublings = min(count - limit, _MAX_DOUBLINGS)
        return min(self._base_lockout * 2**doublings, self._max_lockout)

    def _make_room(self, now: float, keep: list[_Key]) -> None:
        """
        Drop keys until one more fits: idle ones first, then the oldest;
        never one with a guess in flight, nor one of C{keep}.
        """
        if len(self._keys) < self._max_keys:
            return
        idle_before = now - self._window
        idle: list[_Key] = []
        for key, entry in self._keys.items():
            if entry.last_failure > idle_before:
                break
            if entry.locked_until <= now and entry.in_flight == 0 and key not in keep:
                idle.append(key)
        for key in idle:
            del self._keys[key]
        if len(self._keys) < self._max_keys:
            return
        for key, entry in list(self._keys.items()):
            if entry.in_flight == 0 and key not in keep:
                del self._keys[key]
                if len(self._keys) < self._max_keys:
                    return
