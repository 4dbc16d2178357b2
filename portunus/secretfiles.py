"""
Files that hold a secret must be readable by their owner only.

One check, L{refuse_shared_secret_file}, for every such file the server
reads at startup: C{server.key} (the TLS private key) and C{server.toml}
when it sets C{operator_token}.  A file with any group or other permission
bit is refused with the caller's stable error code (exit 78, C{EX_CONFIG})
and a message that says how to fix it, rather than silently used.
"""

from __future__ import annotations

import os
import stat

from portunus.errors import PortunusError

__all__ = ["OWNER_ONLY", "refuse_shared_secret_file"]

#: Permission bits a secret file may not have: any for group or others.
OWNER_ONLY = 0o077


def refuse_shared_secret_file(path: str, code: str, what: str) -> None:
    """
    Refuse C{path}, which holds C{what} ("the TLS private key"), if its
    mode gives group or others any access.

    @raise PortunusError: C{code}, with C{path} and C{mode} as fields.
    @raise OSError: when C{path} cannot be inspected; the caller reports
        that in its own terms.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & OWNER_ONLY:
        raise PortunusError(
            code,
            f"{path} holds {what} but has mode {mode:04o}: it is readable or writable"
            f" by group or others; run `chmod 600 {path}` (and make the service"
            " user its owner), then start again",
            path=path,
            mode=f"{mode:04o}",
        )
