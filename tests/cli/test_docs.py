"""
The command tables and the user docs agree: every command either console
script accepts is documented, and the docs document no command that is
not there.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from portunus.cli import client, server, standalone

DOCS = Path(__file__).resolve().parents[2] / "docs"


class CommandDocsTests(SynchronousTestCase):
    def test_every_server_command_has_a_section(self) -> None:
        """docs/cli.md has one ### section per portunus-server command, serve included."""
        text = (DOCS / "cli.md").read_text()
        documented = re.findall(r"^### `([a-z-]+)", text, re.MULTILINE)
        names = [c.name for c in server.COMMANDS] + [server.SERVE.name]
        self.assertEqual(sorted(documented), sorted(names))

    def test_every_client_command_is_shown(self) -> None:
        """docs/client.md shows each portunus-client command as it is typed."""
        text = (DOCS / "client.md").read_text()
        for name in [c.name for c in client.COMMANDS] + [client.RUN.name]:
            self.assertIn(f"portunus-client {name} ", text)

    def test_every_standalone_command_is_shown(self) -> None:
        """docs/standalone.md shows each portunus-standalone command as it is typed."""
        text = (DOCS / "standalone.md").read_text()
        for name in [c.name for c in standalone.COMMANDS] + [standalone.RUN.name]:
            self.assertIn(f"portunus-standalone {name} ", text)
