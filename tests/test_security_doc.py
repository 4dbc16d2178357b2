"""
docs/security.md states the values the code uses for the limits it
documents: pidfile names, the setup token's file, mode and lifetime, the
log file's mode, the SIGHUP events; the operator API's body, header, idle
and throttle limits; the audit log's queue, tally and retention.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from portunus.client import tap as client_tap
from portunus.control.commands import MAX_HELLO_ADDRESSES
from portunus.dataplane.descriptors import (
    MEASURE_EVERY,
    MIN_DEFAULT_RESERVE,
    default_per_rule,
    default_reserve,
)
from portunus.logging import LOG_FILE_MODE
from portunus.server import tap as server_tap
from portunus.server.api.httplimits import HEADER_LIMITS, IDLE_TIMEOUT_SECS, MAX_BODY_BYTES
from portunus.server.audit.tally import MAX_SOURCES, SUMMARY_INTERVAL, TOP_SOURCES
from portunus.server.audit.writer import QUEUE_SIZE
from portunus.server.auth.accounts import SETUP_TOKEN_TTL_SECS
from portunus.server.auth.setupfile import SETUP_TOKEN_FILE
from portunus.server.auth.throttle import (
    BASE_LOCKOUT_SECS,
    MAX_ADDRESS_FAILURES,
    MAX_FAILURES,
    MAX_KEYS,
    MAX_LOCKOUT_SECS,
)
from portunus.server.store._audit import DEFAULT_MAX_AGE_SECS
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

    def test_operator_api_and_audit_log(self) -> None:
        """The operator API's and the audit log's limits in the doc are the code's."""
        for value in (
            f"({MAX_BODY_BYTES:,} bytes)",
            f"{HEADER_LIMITS['header_bytes']:,} bytes in at most "
            f"{HEADER_LIMITS['header_lines']} header lines",
            f"closed after {IDLE_TIMEOUT_SECS} s",
            f"{MAX_FAILURES} per (action, user id, client IP)",
            f"locked for {BASE_LOCKOUT_SECS:g} s",
            f"at most {MAX_LOCKOUT_SECS / 60:g} min",
            f"{MAX_ADDRESS_FAILURES} per (action, client network)",
            f"{MAX_KEYS:,} counters",
            f"every {SUMMARY_INTERVAL:g} s",
            f"the {TOP_SOURCES} busiest sources",
            f"at most {MAX_SOURCES:,} source addresses",
            f"past {QUEUE_SIZE:,} queued entries",
            f"older than {DEFAULT_MAX_AGE_SECS // 86400} days",
        ):
            self.assertIn(value, self.text)

    def test_tenant_limits(self) -> None:
        """The derived descriptor limits and their examples in the doc are the code's."""
        section = self.text[self.text.index("## Tenants on an edge") :]
        section = " ".join(section[: section.index("\n## ")].split())
        small, large = 1024, 65536
        small_reserve, large_reserve = default_reserve(small), default_reserve(large)
        self.assertIn(
            f"With an open-file limit of {small:,} that is a reserve of {small_reserve:,} and "
            f"{default_per_rule(small, small_reserve):,} connections per rule; with {large:,}, "
            f"{large_reserve:,} and {default_per_rule(large, large_reserve):,}.",
            section,
        )
        self.assertIn(f"at least {MIN_DEFAULT_RESERVE}", section)
        self.assertIn(f"every {MEASURE_EVERY} connections", section)
        self.assertIn(f"(at most {MAX_HELLO_ADDRESSES})", section)
        for code in (
            "validation.target_is_listener",
            "local_target_not_granted",
            "local_target_policy_unsupported_by_client",
        ):
            self.assertIn(f"`{code}`", section)

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
