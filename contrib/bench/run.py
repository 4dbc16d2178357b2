"""
Portunus benchmark suite: one entry point, every figure in docs/performance.md.

    .venv/bin/python contrib/bench/run.py [--quick] [--rounds N] [--only tcp,conns,...]
    make bench

--variants direct,standalone,haproxy runs only those variants (keys in
proxies.py), for a quick before/after of one change.

Sections (each its own module, whose docstring gives the exact method):

    tcp     TCP throughput, iperf3, 1 and 4 streams           (tcp.py)
    conns   short connections/s and connect latency, 1 and 8 clients (conns.py)
    udp     UDP delivered rate, loss and packets/s, iperf3 -u  (udp.py)
    memory  RSS per idle TCP connection and per UDP flow       (memory.py)
    cpu     relay CPU at a paced 1 Gbit/s TCP stream           (cpu.py)
    netns   client, edge and target namespaces: TCP, short connections and
            UDP routed directly, through kernel mode, the relay (1 and 2
            workers) and HAProxy; needs root and nftables     (netns.py)

Variants (proxies.py): direct (no relay: the baseline), the standalone
forwarder with splice and with PORTUNUS_DISABLE_SPLICE=1, each with 1 and
(when this checkout's portunus-standalone has --workers) 2 workers;
HAProxy, socat and Twisted's stock portforward.  Within a section every
variant runs once per round in a fixed order (A B C A B C ...), and the
tables show medians over the rounds, with ratios to the direct baseline and
to the peers measured in the same run.  Every section records the load
average at its start and end and the CPU that processes outside the run
used meanwhile, so a disturbed section can be spotted and rerun alone
(--only).

Everything runs on 127.0.0.1 on ports picked at run time; every load is
bounded in time and count; every process started is stopped at the end
(also on error or SIGINT/SIGTERM), and the run checks that none is left.
Results: bench-results/latest.json (raw trials, summaries, machine info)
and bench-results/latest.md (the tables, also printed).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import conns
import cpu
import memory
import netns
import tcp
import udp
from common import Settings
from procs import (
    REPO,
    BenchError,
    install_cleanup,
    leftovers,
    log,
    others_cores,
    others_cpu,
    raise_nofile,
    stop_all,
)
from proxies import ALL_TCP, workers_available
from report import loadavg, machine_info, markdown

SECTIONS = ("tcp", "conns", "udp", "memory", "cpu", "netns")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, short runs")
    parser.add_argument("--rounds", type=int, help="rounds per section (default 3; 1 if --quick)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated sections; the other sections of the previous "
        "latest.json are kept, so one disturbed section can be rerun",
    )
    parser.add_argument(
        "--variants",
        help="comma-separated variant keys to run (default: all), e.g. "
        "direct,standalone,standalone-2w,haproxy; see proxies.py",
    )
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench-results")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; pick from {SECTIONS}")
    if args.variants:
        known = (*ALL_TCP, *netns.VARIANTS)
        unknown = set(args.variants.split(",")) - set(known)
        if unknown:
            parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; pick from {known}")
    return args


def make_settings(args: argparse.Namespace, workdir: Path) -> Settings:
    quick = args.quick
    settings = Settings(
        rounds=args.rounds or (1 if quick else 3),
        tcp_secs=2 if quick else 5,
        conn_secs=2.0 if quick else 5.0,
        conn_max=100_000 if quick else 300_000,
        udp_secs=2 if quick else 5,
        cpu_secs=3 if quick else 10,
        tcp_counts=(1000, 10000),
        udp_flow_counts=(1000, 10000),
        workdir=workdir,
        workers_available=workers_available(workdir),
        connbench=None,
        only_variants=frozenset(args.variants.split(",")) if args.variants else None,
    )
    if not settings.workers_available:
        settings.skipped["standalone, 2 workers"] = "--workers not available"
        log("skipped: --workers not available")
    if {"conns", "netns"} & set(args.only.split(",")):
        try:
            settings = _with_connbench(settings)
        except BenchError as e:
            settings.skipped["short connections"] = f"could not build connbench.c: {e}"
    return settings


def _with_connbench(settings: Settings) -> Settings:
    return replace(settings, connbench=conns.build(settings.workdir))


def tcp_variants(settings: Settings) -> list[str]:
    if settings.workers_available:
        return settings.pick(ALL_TCP)
    return settings.pick([key for key in ALL_TCP if not key.startswith("standalone-2w")])


def section_runners(settings: Settings) -> dict[str, Callable[[], dict[str, Any]]]:
    variants = tcp_variants(settings)
    # A one-byte exchange per connection: splice changes nothing there, so
    # the 2-worker userspace variant only runs in the throughput section.
    conn_variants = [v for v in variants if v != "standalone-2w-userspace"]
    return {
        "tcp": lambda: tcp.run(settings, variants),
        "conns": lambda: conns.run(settings, conn_variants),
        "udp": lambda: udp.run(settings),
        "memory": lambda: memory.run(settings),
        "cpu": lambda: cpu.run(settings),
        "netns": lambda: netns.run(settings),
    }


def run_sections(settings: Settings, only: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    runners = section_runners(settings)
    for name in SECTIONS:
        if name not in only:
            continue
        if name == "conns" and settings.connbench is None:
            continue
        if name == "netns" and netns.available() is not None:
            settings.skipped["netns"] = str(netns.available())
            continue
        load_before, when, cpu_before = loadavg(), utc_now(), others_cpu()
        log(f"== {name} (load average {' '.join(load_before)})")
        started = time.monotonic()
        try:
            results[name] = runners[name]()
        except Exception as e:  # one broken section must not lose the others
            log(traceback.format_exc())
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            stop_all()
        results[name]["started"] = when
        results[name]["loadavg"] = {"start": load_before, "end": loadavg()}
        results[name]["other_cores"] = round(others_cores(cpu_before, others_cpu()), 2)
        results[name]["wall_secs"] = round(time.monotonic() - started)
        log(
            f"== {name} took {results[name]['wall_secs']}s, load average "
            f"{' '.join(loadavg())}, other processes {results[name]['other_cores']} cores"
        )
    return results


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def merge_previous(results: dict[str, Any], output_dir: Path) -> None:
    """After an --only rerun, keep the other sections of the previous run."""
    try:
        previous = json.loads((output_dir / "latest.json").read_text())
    except (OSError, ValueError):
        return
    rerun = list(results["sections"])
    kept = {k: v for k, v in previous.get("sections", {}).items() if k not in rerun}
    if not kept:
        return
    results["sections"] = {**kept, **results["sections"]}
    for key in ("started", "mode", "machine", "rounds", "duration_secs"):
        results[key] = previous.get(key, results.get(key))
    results["reruns"] = [*previous.get("reruns", []), {"sections": rerun, "at": utc_now()}]


def write(results: dict[str, Any], output_dir: Path) -> str:
    output_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (output_dir / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "latest.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_cleanup()
    soft, hard = raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="portunus-bench-"))
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": utc_now(),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(),
        "nofile": [soft, hard],
    }
    try:
        settings = make_settings(args, workdir)
        results["rounds"] = settings.rounds
        results["skipped"] = settings.skipped
        results["sections"] = run_sections(settings, args.only.split(","))
    finally:
        stop_all()
        if args.keep_workdir:
            log(f"configs and logs kept in {workdir}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)
    results["duration_secs"] = round(time.monotonic() - started)
    results["leftover_processes"] = leftovers()
    if set(args.only.split(",")) != set(SECTIONS):
        merge_previous(results, args.output_dir)
    text = write(results, args.output_dir)
    print(text)
    log(f"wrote {args.output_dir / 'latest.json'} and {args.output_dir / 'latest.md'}")
    if results["leftover_processes"]:
        log(f"processes left behind: {results['leftover_processes']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
