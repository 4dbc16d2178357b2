"""
Throttling of password guesses: login, onboarding and password reset.

Failures are counted per (action, subject, remote address), in memory, as
Portunus does: the fifth failure in a window locks that key for a minute,
and each further failure doubles the lock up to fifteen minutes.  Keying on
the subject as well as the address means one noisy client cannot lock a
user out from everywhere, and one user's typos do not block a shared NAT.

Memory is bounded: a flood of distinct keys evicts idle ones first, then the
longest-idle, so the table never holds more than C{max_keys}.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import attrs
from twisted.internet.interfaces import IReactorTime

from portunus.errors import PortunusError

__all__ = ["Throttle"]

_Key = tuple[str, str, str | None]

#: Doubling stops mattering long before this; it keeps the float finite.
_MAX_DOUBLINGS = 64


@attrs.define
class _Failures:
    count: int
    last_failure: float
    locked_until: float = 0.0


class Throttle:
    """Failure counts and lockouts per (action, subject, remote), on C{clock}."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_failures: int = 5,
        base_lockout: float = 60.0,
        max_lockout: float = 900.0,
        window: float = 900.0,
        max_keys: int = 10_000,
    ) -> None:
        if max_failures < 1 or max_keys < 1:
            raise ValueError("max_failures and max_keys must be at least 1")
        self._clock = clock
        self._max_failures = max_failures
        self._base_lockout = base_lockout
        self._max_lockout = max_lockout
        self._window = window
        self._max_keys = max_keys
        # Ordered by last failure, oldest first, so eviction reads the front.
        self._keys: OrderedDict[_Key, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, action: str, subject: str, remote: str | None) -> None:
        """Refuse with C{rate_limited} while this key is locked."""
        entry = self._keys.get((action, subject, remote))
        if entry is None:
            return
        remaining = entry.locked_until - self._clock.seconds()
        if remaining > 0:
            retry_after = max(1, math.ceil(remaining))
            raise PortunusError(
                "rate_limited",
                f"too many failed {action} attempts; wait {retry_after} seconds and try again",
                retry_after=retry_after,
                action=action,
            )

    def failed(self, action: str, subject: str, remote: str | None) -> None:
        """Count a failure, locking the key from the C{max_failures}th on."""
        key = (action, subject, remote)
        now = self._clock.seconds()
        entry = self._keys.get(key)
        if entry is None:
            self._make_room(now)
            entry = self._keys[key] = _Failures(count=0, last_failure=now)
        elif now - entry.last_failure >= self._window:
            entry.count = 0
        entry.count += 1
        entry.last_failure = now
        self._keys.move_to_end(key)
        if entry.count >= self._max_failures:
            entry.locked_until = now + self._lockout(entry.count)

    def succeeded(self, action: str, subject: str, remote: str | None) -> None:
        """Forget the key's failures."""
        self._keys.pop((action, subject, remote), None)

    def _lockout(self, count: int) -> float:
        doublings = min(count - self._max_failures, _MAX_DOUBLINGS)
        return min(self._base_lockout * 2**doublings, self._max_lockout)

    def _make_room(self, now: float) -> None:
        """Drop keys until one more fits: idle ones first, then the oldest."""
        if len(self._keys) < self._max_keys:
            return
        idle_before = now - self._window
        idle: list[_Key] = []
        for key, entry in self._keys.items():
            if entry.last_failure > idle_before:
                break
            if entry.locked_until <= now:
                idle.append(key)
        for key in idle:
            del self._keys[key]
        while len(self._keys) >= self._max_keys:
            self._keys.popitem(last=False)
