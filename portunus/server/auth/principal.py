"""
The authenticated identity a request runs as.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "ANONYMOUS",
    "LEGACY_USER",
    "SUPERADMIN_USER",
    "AuthMethod",
    "Principal",
    "Role",
]

#: The reserved superadmin behind C{operator_token} (server.toml or the
#: generated C{operator.token} file).
LEGACY_USER = "_legacy"
#: The reserved superadmin whose bearer C{bootstrap-superadmin} prints.
SUPERADMIN_USER = "_superadmin"
#: The actor audit rows name when nobody has authenticated.
ANONYMOUS = "_anonymous"


class Role(enum.StrEnum):
    SUPERADMIN = "superadmin"
    USER = "user"


class AuthMethod(enum.StrEnum):
    #: C{Authorization: Bearer <token>}: machine credentials.
    BEARER = "bearer"
    #: The console's C{portunus_session} cookie.
    SESSION = "session"


@attrs.frozen
class Principal:
    """A user a request was authenticated as, and how."""

    user_id: str
    role: Role
    auth_method: AuthMethod
    display_name: str = ""
    #: The user must change their password before anything else.
    password_change_required: bool = False
    #: The session's hash for cookie requests (logout revokes it).
    session_hash: str | None = attrs.field(default=None, repr=False)

    @property
    def is_superadmin(self) -> bool:
        return self.role is Role.SUPERADMIN
