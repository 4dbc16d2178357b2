"""
Short connections per second and connection latency through each variant.

The target is C{connbench serve PORT 2} (C{connbench.c}, built with the
system C compiler at the start of the run): two threads that accept, write
one byte and close.  The load is

    connbench load PORT CONCURRENCY SECS MAX

CONCURRENCY threads (1 and 8), each looping socket / connect / read one
byte / close, for SECS seconds or MAX attempts.  A connection's latency runs
from connect() to its first byte, so through a relay it includes the relay's
accept, its connect to the target and the byte's trip back.  Figures:
completed connections per second, p50 and p99 latency in microseconds, and
failed attempts (connect or read error, 2 s timeouts).

The load generator is C so that it is not the bottleneck of the direct
baseline; on a 2-core machine it still shares the CPUs with the target and
the relay, which is part of every figure, the baseline included.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import Settings, Trial, run_rounds, summarize
from procs import LOOPBACK, BenchError, free_port, run_tool, spawn, stop, wait_bound
from proxies import running

SOURCE = Path(__file__).resolve().parent / "connbench.c"
CASES = {"1 client": 1, "8 clients": 8}
METRICS = ("per_second", "p50_us", "p99_us", "errors")
#: Pause between trials so the previous trial's closing sockets settle.
SETTLE_SECS = 0.5


def build(workdir: Path) -> Path:
    """Compile connbench.c; raise L{BenchError} if there is no C compiler."""
    binary = workdir / "connbench"
    run_tool(["cc", "-O2", "-pthread", "-o", str(binary), str(SOURCE)], timeout=120)
    return binary


@contextmanager
def target(
    binary: Path, workdir: Path, host: str = LOOPBACK, prefix: Sequence[str] = ()
) -> Iterator[int]:
    """C{connbench serve} on C{host}, run after C{prefix} (a namespace); yields its port."""
    port = free_port()
    argv = [*prefix, str(binary), "serve", str(port), "2", host]
    proc: subprocess.Popen[bytes] = spawn(argv, cwd=workdir)
    try:
        wait_bound(port, proc, address=host, in_namespace=bool(prefix))
        yield port
    finally:
        stop(proc)


def load(
    binary: Path,
    port: int,
    clients: int,
    secs: float,
    limit: int,
    host: str = LOOPBACK,
    prefix: Sequence[str] = (),
) -> dict[str, float]:
    """One connbench load against C{host}:C{port}, run after C{prefix} (a namespace)."""
    argv = [*prefix, str(binary), "load", str(port), str(clients), str(secs), str(limit), host]
    result: dict[str, float] = json.loads(run_tool(argv, timeout=secs + 30))
    time.sleep(SETTLE_SECS)
    if result["connections"] == 0:
        raise BenchError(f"no connection completed ({result['errors']:.0f} errors)")
    return result


def run(settings: Settings, variants: list[str]) -> dict[str, Any]:
    binary = settings.connbench
    if binary is None:
        raise BenchError("connbench was not built")
    with (
        target(binary, settings.workdir) as port,
        running(variants, port, settings.workdir) as proxies,
    ):

        def one(case: str, variant: str) -> dict[str, float]:
            proxy = proxies[variant]
            proxy.check()
            return load(binary, proxy.port, CASES[case], settings.conn_secs, settings.conn_max)

        trials: list[Trial] = run_rounds(settings.rounds, list(CASES), variants, one)
    return {
        "trials": trials,
        "summary": summarize(trials, METRICS),
        "seconds": settings.conn_secs,
        "max_attempts": settings.conn_max,
    }
