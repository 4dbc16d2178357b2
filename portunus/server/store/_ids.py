"""
Client ids: ULIDs (48-bit millisecond timestamp + 80 random bits, Crockford
base32), so ids sort by creation time and carry no coordination.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["new_ulid"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now: float, randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """A 26-character ULID for the instant C{now} (unix seconds)."""
    millis = int(now * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | int.from_bytes(randbytes(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))
