"""
docs/security.md states the values the code uses for the process-level
limits it documents: pidfile names, the setup token's file, mode and
lifetime, the log file's mode, the SIGHUP events.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from portunus.client import tap as client_tap
from portunus.logging import LOG_FILE_MODE
from portunus.server import tap as server_tap
from portunus.server.auth.accounts import SETUP_TOKEN_TTL_SECS
from portunus.server.auth.setupfile import SETUP_TOKEN_FILE
from portunus.standalone import statsock
from portunus.standalone import tap as standalone_tap
from portunus.tapsupport import TWISTD_DEFAULT_PIDFILE

DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"


class SecurityDocTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.text = DOC.read_text()

    def test_signals_secrets_and_files(self) -> None:
        """The file names, modes and lifetimes in the doc are the code's."""
        for value in (
            server_tap.PIDFILE,
            client_tap.PIDFILE,
            standalone_tap.PIDFILE,
            TWISTD_DEFAULT_PIDFILE,
            f"`{SETUP_TOKEN_FILE}`",
            f"created `{LOG_FILE_MODE:04o}`",
            f"every **{SETUP_TOKEN_TTL_SECS // 60} minutes**",
            "`process.sighup`",
            "`process.log_reopen_failed`",
            "`startup.server_toml_permissions`, exit 78",
        ):
            self.assertIn(value, self.text)

    def test_stats_socket_limits(self) -> None:
        """The stats socket's limits in the doc are the code's."""
        section = self.text[self.text.index("## Standalone stats socket") :]
        for value in (
            f"created `{statsock.SOCKET_MODE:04o}`",
            f"created `{statsock.DIRECTORY_MODE:04o}`",
            f"| Clients at once | {statsock.MAX_CLIENTS};",
            f"after {statsock.WRITE_TIMEOUT_SECS:g} s",
            f"at most {statsock.MAX_REQUEST_BYTES // 1024} KiB",
            f"{statsock.MAX_QUEUED_REQUESTS} waiting drop",
        ):
            self.assertIn(value, section)

    def test_sections_for_every_area(self) -> None:
        """Each area other helpers add to has its heading."""
        for heading in (
            "## Threat model",
            "## Control port",
            "## Operator API",
            "## Audit log",
            "## Tenants on an edge",
            "## Signals, secrets and files",
            "## Edge input",
            "## Standalone stats socket",
        ):
            self.assertIn(f"\n{heading}\n", self.text)
