"""
The values an operator gives for a client: its name, the address it dials,
an enrollment code's lifetime.  One set of checks, used by the operator API
(which names the JSON field) and by the control plane itself (so every
surface refuses the same things with the same codes).
"""

from __future__ import annotations

from portunus.addresses import host_problem, unbracket
from portunus.bounds import ENROLLMENT_TTL_SECS
from portunus.errors import PortunusError
from portunus.fields import BAD_CHARACTERS, has_bad_characters, is_int

__all__ = [
    "DEFAULT_TTL_SECS",
    "MAX_NAME_LENGTH",
    "MAX_TTL_SECS",
    "check_client_address",
    "check_client_name",
    "check_enrollment_ttl",
]

DEFAULT_TTL_SECS = ENROLLMENT_TTL_SECS.fallback
MAX_TTL_SECS = ENROLLMENT_TTL_SECS.high
MAX_NAME_LENGTH = 64


def check_client_name(raw: object, field: str = "name") -> str:
    """C{raw} if it is a usable client name; else C{invalid_name}."""
    if not isinstance(raw, str) or not 1 <= len(raw) <= MAX_NAME_LENGTH or raw != raw.strip():
        raise PortunusError(
            "invalid_name",
            f"{field} must be 1 to {MAX_NAME_LENGTH} printable characters without leading "
            "or trailing spaces",
            field=field,
        )
    if has_bad_characters(raw):
        raise PortunusError("invalid_name", f"{field} {BAD_CHARACTERS}", field=field)
    return raw


def check_client_address(raw: object) -> str | None:
    """
    The bare host (brackets stripped) a client dials, C{None} if not
    given; else C{invalid_client_address}.
    """
    if raw is None:
        return None
    problem = (
        host_problem(unbracket(raw)) if isinstance(raw, str) else "the address is not a string"
    )
    if problem is not None:
        raise PortunusError(
            "invalid_client_address",
            f"address: {problem}; give the bare host name or IP the client dials, without a port",
            field="address",
        )
    assert isinstance(raw, str)
    return unbracket(raw)


def check_enrollment_ttl(raw: object) -> int:
    """C{raw} if it is a whole number of seconds in range; else C{invalid_enrollment_ttl}."""
    if not is_int(raw) or raw not in ENROLLMENT_TTL_SECS:
        raise PortunusError(
            "invalid_enrollment_ttl",
            f"ttl_secs must be a whole number of seconds from {ENROLLMENT_TTL_SECS.span()}, "
            f"got {raw!r}",
            field="ttl_secs",
        )
    assert isinstance(raw, int)
    return raw
