"""Every error code the code raises is registered (else raising it is a KeyError)."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import portunus
from portunus.errors import ERRORS
from portunus.server.controlplane import _GATES

_RAISED = re.compile(r'PortunusError\(\s*"([^"]+)"')


class RegistryTests(SynchronousTestCase):
    def test_every_literal_code_is_registered(self) -> None:
        root = Path(portunus.__file__).parent
        missing = sorted(
            f"{code} ({path.relative_to(root)})"
            for path in root.rglob("*.py")
            for code in _RAISED.findall(path.read_text(encoding="utf-8"))
            if code not in ERRORS
        )
        self.assertEqual(missing, [])

    def test_capability_gate_codes_are_registered(self) -> None:
        for _, _, code in _GATES:
            self.assertIn(code, ERRORS)
            self.assertEqual(ERRORS[code].http_status, 422)
