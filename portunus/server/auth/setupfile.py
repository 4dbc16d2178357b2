"""
The onboarding setup token's file: C{<data-dir>/onboarding.token}, 0600.

While onboarding is open the server keeps the current setup token there
and nowhere else: not on stderr, which twistd turns into log events, so
the token never reaches a log stream.  The file is rewritten (atomically)
whenever the token rotates and removed once onboarding closes.
C{portunus-server onboarding-token} prints it while the server runs.
"""

from __future__ import annotations

import contextlib
import os

from portunus.control.tls import write_file_atomically

__all__ = ["SETUP_TOKEN_FILE", "SetupTokenFile"]

#: The file's name inside the data dir.
SETUP_TOKEN_FILE = "onboarding.token"


class SetupTokenFile:
    """The setup token's file in one data dir."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, SETUP_TOKEN_FILE)

    def publish(self, token: str) -> None:
        """Replace the file's token with C{token}; the file is created 0600."""
        write_file_atomically(self.path, (token + "\n").encode("ascii"), 0o600)

    def retract(self) -> None:
        """Remove the file (onboarding is closed); nothing if it is gone already."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def read(self) -> str | None:
        """The token in the file, or C{None} when there is no file (or it is empty)."""
        try:
            with open(self.path, encoding="ascii") as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None
