"""
Hardening of the processes themselves (docs/security.md, "Signals, secrets
and files"), each checked on real twistd processes on 127.0.0.1:

- C{server.toml} that sets C{operator_token} is refused (exit 78) while
  group or others can read it.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.e2e.test_control_plane_process import _ProcessCase


class ServerTomlModeTests(_ProcessCase):
    def write_token_toml(self, mode: int) -> str:
        path = os.path.join(self.data_dir, "server.toml")
        with open(path, "a") as f:
            f.write('operator_token = "a-token-kept-in-server-toml"\n')
        os.chmod(path, mode)
        return path

    @inlineCallbacks
    def test_group_readable_server_toml_with_operator_token_exits_78(self) -> Any:
        """
        A server.toml holding operator_token that group or others may read
        stops startup with exit 78, the stable code and the fix; once it is
        0600 the server starts.
        """
        path = self.write_token_toml(0o640)
        refused = self.start_server()
        self.assertEqual((yield refused.exited), 78, refused.stderr.decode())
        err = refused.stderr.decode()
        self.assertIn("error: startup.server_toml_permissions: ", err)
        self.assertIn(f"chmod 600 {path}", err)
        self.assertNotIn("a-token-kept-in-server-toml", err)

        os.chmod(path, 0o600)
        server = self.start_server()
        started = yield server.wait_for("server.started")
        self.assertEqual(started["bearer_source"], "from server.toml")
