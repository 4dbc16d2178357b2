"""
The control protocol's helpers that are more than AMP declarations.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from portunus.control.commands import chunk_stats


class ChunkStatsTests(SynchronousTestCase):
    def test_chunks_fit_the_limit(self) -> None:
        """Entries are packed into lists whose JSON fits the limit, in order, none lost."""
        entries = [{"rule_id": i, "bytes_in": i * 1000} for i in range(100)]
        chunks = list(chunk_stats(entries, limit=300))
        self.assertGreater(len(chunks), 1)
        for chunk in chunks:
            self.assertLessEqual(len(json.dumps(chunk, separators=(",", ":"))), 300)
        self.assertEqual([e for chunk in chunks for e in chunk], entries)

    def test_oversized_entry_loses_its_ports(self) -> None:
        """An entry too big on its own drops its per-port detail, keeping its totals."""
        ports = {str(p): {"bytes_in": p} for p in range(1000, 1100)}
        entry = {"rule_id": 1, "bytes_in": 5, "ports": ports}
        (chunk,) = list(chunk_stats([entry], limit=500))
        self.assertEqual(chunk, [{"rule_id": 1, "bytes_in": 5}])

    def test_oversized_entry_sheds_ports_then_targets(self) -> None:
        """Per-port detail goes first; per-target detail only if still too big."""
        ports = {str(p): {"bytes_in": p} for p in range(1000, 1010)}
        targets = [{"target": f"10.0.0.{i}:80", "health": "healthy"} for i in range(40)]
        entry = {"rule_id": 1, "bytes_in": 5, "ports": ports, "per_target": targets}
        (chunk,) = list(chunk_stats([entry], limit=500))
        self.assertEqual(chunk, [{"rule_id": 1, "bytes_in": 5}])
        small = {"rule_id": 2, "ports": ports, "per_target": targets[:2]}
        (chunk,) = list(chunk_stats([small], limit=300))
        self.assertEqual(chunk, [{"rule_id": 2, "per_target": targets[:2]}])
