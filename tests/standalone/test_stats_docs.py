"""
docs/standalone.md states the stats socket's numbers and names; these
tests keep it agreeing with the code.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from portunus.bounds import STATS_REFRESH_MS
from portunus.standalone import statsock
from portunus.standalone.config import DEFAULT_STATS_SOCKET_PATH
from portunus.standalone.tui import feed, probe

DOC = (Path(__file__).resolve().parents[2] / "docs" / "standalone.md").read_text("utf-8")


def section(title: str) -> str:
    start = DOC.index(f"## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else len(DOC)]


class StatsDocsTests(SynchronousTestCase):
    def test_stats_table(self) -> None:
        """The [stats] table gives the code's default path and refresh_ms default and bounds."""
        table = section("The config file")
        refresh = STATS_REFRESH_MS
        self.assertIn(f"| `refresh_ms` | integer | `{refresh.default}` | {refresh.span()} |", table)
        self.assertIn(f'| `socket_path` | string | `"{DEFAULT_STATS_SOCKET_PATH}"` |', table)

    def test_limits(self) -> None:
        """The socket's and the client's limits are the code's."""
        text = section("Stats socket and TUI")
        self.assertIn(f"At most {statsock.MAX_CLIENTS} clients at once", text)
        self.assertIn(f"the {statsock.MAX_CLIENTS + 1}th is accepted", text)
        self.assertIn(f"has stayed full for {statsock.WRITE_TIMEOUT_SECS:g} s", text)
        self.assertIn(f"at most {statsock.MAX_REQUEST_BYTES // 1024} KiB", text)
        self.assertIn(f"more than {statsock.MAX_QUEUED_REQUESTS}", text)
        self.assertIn(f"lines up to {feed.MAX_LINE_BYTES // (1 << 20)} MiB", text)
        self.assertIn(f"every {probe.PROBE_INTERVAL_SECS:g} s", text)
        self.assertIn(f"`timeout` after {probe.PROBE_TIMEOUT_SECS:g} s", text)
        self.assertIn(f'"v": {statsock.PROTOCOL_VERSION}', text)

    def test_error_counter_names(self) -> None:
        """The err keys in the Snapshot example are exactly the ones sent, in order."""
        example = re.search(r'"err": \{(.*?)\}', section("Stats socket and TUI"), re.S)
        assert example is not None
        keys = re.findall(r'"(\w+)": 0', example.group(1))
        self.assertEqual(keys, [key for key, _ in statsock.ERROR_COUNTERS])
