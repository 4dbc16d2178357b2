"""
What needs no worker process: the worker count option, the restart
backoff, counters summed over workers, gauges dropped from an exited
worker's counters, and per-target states merged over workers (counters
summed, health from the freshest view).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.workers.pool import (
    HEALTHY_RUN_SECS,
    RESTART_MAX_SECS,
    RESTART_MIN_SECS,
    RestartBackoff,
    merge_target_states,
    parse_worker_count,
    sum_snapshots,
    without_gauges,
)


def state(
    health: str = "healthy",
    success: float | None = None,
    failure: float | None = None,
    streak: int = 0,
    **counters: int,
) -> dict[str, Any]:
    return {
        "host": "10.0.0.5",
        "port": 80,
        "target": "10.0.0.5:80",
        "priority": 0,
        "weight": 1,
        "health": health,
        "consecutive_failures": streak,
        "last_success_at": success,
        "last_failure_at": failure,
        "bytes_in": counters.get("bytes_in", 0),
        "bytes_out": counters.get("bytes_out", 0),
        "active_connections": counters.get("active_connections", 0),
        "total_connections": counters.get("total_connections", 0),
    }


class WorkerCountTests(SynchronousTestCase):
    def test_counts(self) -> None:
        """--workers takes 1..64 or auto; anything else names the allowed values."""
        self.assertEqual(parse_worker_count("2"), 2)
        self.assertGreaterEqual(parse_worker_count("auto"), 1)
        for bad in ("0", "65", "two", ""):
            error = self.assertRaises(ValueError, parse_worker_count, bad)
            self.assertIn("'auto' or a whole number from 1 to 64", str(error))


class SumSnapshotTests(SynchronousTestCase):
    def test_sums_rules_and_ports(self) -> None:
        """Counters from several workers add up per rule and per port."""
        a = {"7": {"bytes_in": 10, "active_connections": 1, "ports": {"80": {"bytes_in": 10}}}}
        b = {"7": {"bytes_in": 5, "active_connections": 2, "ports": {"80": {"bytes_in": 5}}}}
        totals = sum_snapshots([a, b])
        self.assertEqual((totals[7].bytes_in, totals[7].active_connections), (15, 3))
        self.assertEqual(totals[7].ports[80].bytes_in, 15)


class RestartBackoffTests(SynchronousTestCase):
    def test_doubles_while_dying_young_and_resets_after_a_healthy_run(self) -> None:
        backoff = RestartBackoff()
        delays = [backoff.delay(0, 1.0) for _ in range(8)]
        self.assertEqual(delays[:3], [RESTART_MIN_SECS, 2 * RESTART_MIN_SECS, 4 * RESTART_MIN_SECS])
        self.assertEqual(delays[-1], RESTART_MAX_SECS)
        self.assertEqual(backoff.delay(0, HEALTHY_RUN_SECS), RESTART_MIN_SECS)
        self.assertEqual(backoff.delay(1, 0.0), RESTART_MIN_SECS, "indexes back off apart")


class WithoutGaugesTests(SynchronousTestCase):
    def test_open_counts_drop_to_zero_counted_ones_stay(self) -> None:
        snapshot = {
            "bytes_in": 5,
            "active_connections": 2,
            "active_flows": 3,
            "ports": {"80": {"bytes_in": 5, "active_connections": 2}},
        }
        result = without_gauges(snapshot)
        self.assertEqual((result["bytes_in"], result["active_connections"]), (5, 0))
        self.assertEqual(result["active_flows"], 0)
        self.assertEqual(result["ports"]["80"]["active_connections"], 0)
        self.assertEqual(snapshot["active_connections"], 2, "the input is not changed")


class MergeTargetStatesTests(SynchronousTestCase):
    def test_counters_add_up(self) -> None:
        [merged] = merge_target_states(
            [
                [state(bytes_in=1, bytes_out=2, active_connections=1, total_connections=3)],
                [state(bytes_in=10, bytes_out=20, active_connections=2, total_connections=30)],
            ]
        )
        self.assertEqual(
            [merged[k] for k in ("bytes_in", "bytes_out", "active_connections")], [11, 22, 3]
        )
        self.assertEqual(merged["total_connections"], 33)
        self.assertEqual((merged["target"], merged["weight"]), ("10.0.0.5:80", 1))

    def test_health_is_the_freshest_view(self) -> None:
        """The worker that saw the target last decides, success or failure."""
        failed_late = state("failed", success=10, failure=30, streak=3)
        healthy_earlier = state("healthy", success=20)
        [merged] = merge_target_states([[healthy_earlier], [failed_late]])
        self.assertEqual((merged["health"], merged["consecutive_failures"]), ("failed", 3))
        self.assertEqual((merged["last_success_at"], merged["last_failure_at"]), (20, 30))
        [merged] = merge_target_states([[failed_late], [state("healthy", success=40)]])
        self.assertEqual((merged["health"], merged["consecutive_failures"]), ("healthy", 0))

    def test_a_worker_without_a_view_does_not_decide(self) -> None:
        """A worker that never dialled the target keeps its initial healthy; it loses."""
        [merged] = merge_target_states([[state("healthy")], [state("failed", failure=5)]])
        self.assertEqual(merged["health"], "failed")
        [merged] = merge_target_states([[state("healthy")], [state("healthy")]])
        self.assertEqual(merged["health"], "healthy")

    def test_targets_line_up_by_position(self) -> None:
        a, b = state(bytes_in=1), {**state(bytes_in=2), "target": "10.0.0.6:80"}
        merged = merge_target_states([[a, b], [a, b], []])
        self.assertEqual([m["bytes_in"] for m in merged], [2, 4])
        self.assertEqual(merge_target_states([]), [])
