"""
Settings shared by the benchmark sections, and the round-robin trial loop.

Every section measures each variant once per round, variants in a fixed
order inside a round (A B C A B C ...), so slow drifts in machine load hit
every variant alike; the figure reported is the median over the rounds.
A trial that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import BenchError, log

Trial = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    rounds: int
    tcp_secs: int
    conn_secs: float
    conn_max: int
    udp_secs: int
    cpu_secs: int
    tcp_counts: tuple[int, ...]
    udp_flow_counts: tuple[int, ...]
    workdir: Path
    workers_available: bool
    connbench: Path | None
    skipped: dict[str, str] = field(default_factory=dict)
    #: Only these variants run (None: all); see C{run.py --variants}.
    only_variants: frozenset[str] | None = None

    def pick(self, variants: Sequence[str]) -> list[str]:
        """C{variants}, in order, less those C{--variants} leaves out."""
        if self.only_variants is None:
            return list(variants)
        return [v for v in variants if v in self.only_variants]


def run_rounds(
    rounds: int,
    cases: Sequence[str],
    variants: Sequence[str],
    measure: Callable[[str, str], dict[str, float]],
) -> list[Trial]:
    """Call C{measure(case, variant)} for every round, case and variant."""
    trials: list[Trial] = []
    for round_no in range(1, rounds + 1):
        for case in cases:
            for variant in variants:
                trial: Trial = {"round": round_no, "case": case, "variant": variant}
                started = time.monotonic()
                try:
                    trial.update(measure(case, variant))
                except BenchError as e:
                    trial["error"] = str(e)
                    log(f"  ! {case} / {variant}: {e}")
                else:
                    log(f"  {round_no} {case} / {variant}: {short(trial)}")
                trial["wall_secs"] = round(time.monotonic() - started, 2)
                trials.append(trial)
    return trials


def short(trial: Trial) -> str:
    skip = {"round", "case", "variant"}
    parts = []
    for key, value in trial.items():
        if key in skip or not isinstance(value, int | float):
            continue
        parts.append(f"{key}={value:.4g}")
    return " ".join(parts)


def summarize(trials: Sequence[Trial], metrics: Sequence[str]) -> dict[str, Any]:
    """Per case and variant: median, min and max of each metric over the rounds."""
    summary: dict[str, Any] = {}
    for trial in trials:
        cell = summary.setdefault(trial["case"], {}).setdefault(trial["variant"], {})
        cell.setdefault("failures", [])
        if "error" in trial:
            cell["failures"].append(trial["error"])
        for metric in metrics:
            if isinstance(trial.get(metric), int | float):
                cell.setdefault("_values", {}).setdefault(metric, []).append(trial[metric])
    for variants in summary.values():
        for cell in variants.values():
            for metric, values in cell.pop("_values", {}).items():
                cell[metric] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                }
    return summary
