"""
Machine information and the Markdown rendering of a benchmark run.

Every table shows the median over the rounds; where the rounds differed the
spread (min-max) follows in brackets.  Ratios divide medians of the same
case in the same run: "vs direct" by the no-proxy baseline, "vs HAProxy"
and "vs socat" by those peers.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from procs import VENV_BIN
from proxies import LABELS

UDP_LABELS = {
    "standalone": "Portunus standalone (TCP + UDP rule)",
    "standalone-2w": "Portunus standalone, 2 workers (TCP + UDP rule)",
    "socat": "socat, fork (TCP + UDP relay)",
}

EN_DASH = "\u2013"
TIMES = "\u00d7"


def _first_line(argv: list[str], match: str = "") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    lines = (out.stdout + out.stderr).strip().splitlines()
    for line in lines:
        if match in line:
            return line.strip()
    return lines[0].strip() if lines else "unavailable"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    twisted = _first_line(
        [str(VENV_BIN / "python"), "-c", "import twisted; print(twisted.__version__)"]
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": _first_line([str(VENV_BIN / "python"), "-V"]),
        "twisted": twisted,
        "haproxy": _first_line(["haproxy", "-v"]),
        "iperf3": _first_line(["iperf3", "--version"]),
        "socat": _first_line(["socat", "-V"], match="socat version"),
        "memory": _mem_total(),
        "loadavg_at_start": loadavg(),
    }


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages."""
    return Path("/proc/loadavg").read_text().split()[:3]


def _mem_total() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1048576:.1f} GiB"
    return "unknown"


# -- formatting helpers ------------------------------------------------------


def cell(stat: dict[str, Any] | None, fmt: Callable[[float], str]) -> str:
    if not stat:
        return "\u2014"
    text = fmt(stat["median"])
    if stat["n"] > 1 and fmt(stat["min"]) != fmt(stat["max"]):
        text += f" ({fmt(stat['min'])}{EN_DASH}{fmt(stat['max'])})"
    return text


def ratio(stat: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    if not stat or not base or not base["median"]:
        return "\u2014"
    return f"{stat['median'] / base['median']:.2f}{TIMES}"


def ratios(variants: dict[str, Any], variant: str, metric: str, refs: Sequence[str]) -> list[str]:
    """The C{metric} of C{variant} divided by that of each of C{refs}."""
    stat = variants[variant].get(metric)
    return [ratio(stat, variants.get(ref, {}).get(metric)) for ref in refs]


def _errors(cases: dict[str, Any]) -> list[str]:
    notes = []
    for case, variants in cases.items():
        for variant, c in variants.items():
            for error in sorted(set(c.get("failures", []))):
                notes.append(f"- {case} / {LABELS.get(variant, variant)}: failed: {error[:300]}")
    return [*notes, ""] if notes else []


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---", "---"] + ["---:"] * (len(header) - 2)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def f0(x: float) -> str:
    return f"{x:,.0f}"


def f1(x: float) -> str:
    return f"{x:,.1f}"


def f2(x: float) -> str:
    return f"{x:,.2f}"


def mib(x: float) -> str:
    return f"{x / 1048576:.1f} MiB"


def _heading(title: str, result: dict[str, Any]) -> list[str]:
    """The section title, when it ran and how busy the machine was."""
    parts = [f"Run {result['started']}"] if "started" in result else []
    load = result.get("loadavg")
    if load:
        start, end = " ".join(load["start"]), " ".join(load["end"])
        parts.append(f"load average (1/5/15 min) {start} at the start, {end} at the end")
    if "other_cores" in result:
        parts.append(f"processes outside the benchmark used {result['other_cores']:.2f} cores")
    lines = [f"### {title}", ""]
    return [*lines, "; ".join(parts) + ".", ""] if parts else lines


def _retries(result: dict[str, Any]) -> list[str]:
    retried = [t for t in result.get("trials", []) if t.get("attempts", 1) > 1]
    if not retried:
        return []
    which = ", ".join(f"{t['case']} / {t['variant']} (round {t['round']})" for t in retried)
    return [f"Retried after a transient iperf3 error: {which}.", ""]


def _modes(result: dict[str, Any]) -> list[str]:
    modes = result.get("relay_modes") or {}
    if not modes:
        return []
    text = "; ".join(f"{LABELS.get(k, k)}: {v}" for k, v in modes.items())
    return [f"Relay mode the forwarder logged: {text}.", ""]


# -- sections ----------------------------------------------------------------


def tcp_section(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    refs = ("direct", "haproxy", "socat")
    header = ["case", "variant", "Gbit/s", "vs direct", "vs HAProxy", "vs socat"]
    rows = [
        [case, LABELS.get(v, v), cell(c.get("gbps"), f2), *ratios(variants, v, "gbps", refs)]
        for case, variants in summary.items()
        for v, c in variants.items()
    ]
    title = f"TCP throughput (iperf3, {result['seconds']} s per run)"
    lines = [*_heading(title, result), *table(header, rows), ""]
    return lines + _modes(result) + _retries(result) + _errors(summary)


def conns_section(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    refs = ("direct", "haproxy", "socat")
    header = ["clients", "variant", "conn/s", "vs direct", "vs HAProxy", "vs socat"]
    header += ["p50 µs", "p50 vs HAProxy", "p99 µs", "failed"]
    rows = []
    for case, variants in summary.items():
        for variant, c in variants.items():
            rows.append(
                [
                    case.split()[0],
                    LABELS.get(variant, variant),
                    cell(c.get("per_second"), f0),
                    *ratios(variants, variant, "per_second", refs),
                    cell(c.get("p50_us"), f0),
                    *ratios(variants, variant, "p50_us", ("haproxy",)),
                    cell(c.get("p99_us"), f0),
                    cell(c.get("errors"), f0),
                ]
            )
    title = f"Short connections ({result['seconds']:g} s per run)"
    return [*_heading(title, result), *table(header, rows), "", *_errors(summary)]


def udp_section(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    header = ["case", "variant", "offered Mbit/s", "delivered Mbit/s", "vs direct", "vs socat"]
    header += ["loss %", "delivered pkt/s"]
    rows = []
    for case, variants in summary.items():
        for variant, c in variants.items():
            rows.append(
                [
                    case,
                    UDP_LABELS.get(variant, LABELS.get(variant, variant)),
                    cell(c.get("offered_mbps"), f0),
                    cell(c.get("delivered_mbps"), f0),
                    *ratios(variants, variant, "delivered_mbps", ("direct", "socat")),
                    cell(c.get("loss_pct"), f2),
                    cell(c.get("delivered_pps"), f0),
                ]
            )
    title = f"UDP (iperf3 -u, {result['seconds']} s per run)"
    lines = [*_heading(title, result), *table(header, rows), ""]
    return lines + _retries(result) + _errors(summary)


def memory_section(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    header = ["idle connections", "variant", "RSS growth", "bytes per connection", "vs HAProxy"]
    rows = [
        [
            case.split()[0],
            LABELS.get(v, v),
            cell(c.get("rss_growth_bytes"), mib),
            cell(c.get("bytes_per_conn"), f0),
            *ratios(variants, v, "bytes_per_conn", ("haproxy",)),
        ]
        for case, variants in summary.items()
        for v, c in variants.items()
    ]
    lines = [*_heading("Memory per idle TCP connection", result), *table(header, rows), ""]
    if "note" in result:
        lines += [f"Note: {result['note']}.", ""]
    return lines + _errors(summary) + udp_flow_lines(result.get("udp_flows", {}))


def udp_flow_lines(report: dict[str, Any]) -> list[str]:
    lines = ["### Memory per idle UDP flow (udp_flow_memory.py)", ""]
    if "error" in report or not report:
        return [*lines, f"failed: {report.get('error', 'not run')}", ""]
    rows = [
        [
            f"{r['flows']:,}",
            report["upstream"],
            mib(r["rss_growth_bytes"]),
            f"{r['bytes_per_flow']:,}",
            f"{r.get('upstream_fds', 0):,}",
        ]
        for r in report["results"]
    ]
    header = ["flows", "upstream", "RSS growth", "bytes per flow", "upstream descriptors"]
    return lines + table(header, rows) + [""]


def cpu_section(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    header = ["case", "variant", "delivered Gbit/s", "relay CPU, % of one core"]
    header += ["vs HAProxy", "vs socat"]
    rows = [
        [
            case,
            LABELS.get(v, v),
            cell(c.get("gbps"), f2),
            cell(c.get("cpu_pct"), f1),
            *ratios(variants, v, "cpu_pct", ("haproxy", "socat")),
        ]
        for case, variants in summary.items()
        for v, c in variants.items()
    ]
    title = f"Relay CPU at a paced TCP stream ({result['seconds']} s per run)"
    lines = [*_heading(title, result), *table(header, rows), ""]
    return lines + _modes(result) + _retries(result) + _errors(summary)


#: Kernel-mode targets (issue 19): throughput against routing directly,
#: short connections against HAProxy, both on the namespace topology.
KERNEL_THROUGHPUT_TARGET = 0.95
KERNEL_CONNS_TARGET = 1.5


def _met(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return f"{value:.2f}{TIMES}: {'met' if value >= target else '**missed**'}"


def _median(summary: dict[str, Any], case: str, variant: str, metric: str) -> float | None:
    stat = summary.get(case, {}).get(variant, {}).get(metric)
    return stat["median"] if stat else None


def _share(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def netns_targets(result: dict[str, Any]) -> list[str]:
    """The kernel-mode targets, met or missed."""
    lines = []
    tcp = result.get("tcp", {}).get("summary", {})
    for case in tcp:
        share = _share(_median(tcp, case, "kernel", "gbps"), _median(tcp, case, "direct", "gbps"))
        goal = f"{KERNEL_THROUGHPUT_TARGET:.2f}{TIMES}"
        verdict = _met(share, KERNEL_THROUGHPUT_TARGET)
        lines.append(f"- kernel mode, TCP {case}, vs direct (target ≥ {goal}): {verdict}")
    conns = result.get("conns", {}).get("summary", {})
    for case in conns:
        share = _share(
            _median(conns, case, "kernel", "per_second"),
            _median(conns, case, "haproxy", "per_second"),
        )
        goal = f"{KERNEL_CONNS_TARGET:.1f}{TIMES}"
        verdict = _met(share, KERNEL_CONNS_TARGET)
        lines.append(
            f"- kernel mode, short connections, {case}, vs HAProxy (target ≥ {goal}): {verdict}"
        )
    return [*lines, ""] if lines else []


def netns_section(result: dict[str, Any]) -> list[str]:
    from netns import LABELS as NETNS_LABELS

    def label(variant: str) -> str:
        return NETNS_LABELS.get(variant, variant)

    lines = _heading("Three hosts in network namespaces (client, edge, target)", result)
    lines += netns_targets(result)
    tcp = result.get("tcp", {})
    lines += [f"#### TCP throughput (iperf3, {result['seconds']['tcp']} s per run)", ""]
    if "error" in tcp:
        lines += [f"failed: {tcp['error']}", ""]
    else:
        refs = ("direct", "haproxy")
        rows = [
            [case, label(v), cell(c.get("gbps"), f2), *ratios(variants, v, "gbps", refs)]
            for case, variants in tcp["summary"].items()
            for v, c in variants.items()
        ]
        lines += [*table(["case", "variant", "Gbit/s", "vs direct", "vs HAProxy"], rows), ""]
        lines += _errors(tcp["summary"])
    conns = result.get("conns", {})
    lines += [f"#### Short connections ({result['seconds']['conns']:g} s per run)", ""]
    if "error" in conns:
        lines += [f"failed: {conns['error']}", ""]
    else:
        rows = []
        for case, variants in conns["summary"].items():
            for v, c in variants.items():
                rows.append(
                    [
                        case.split()[0],
                        label(v),
                        cell(c.get("per_second"), f0),
                        *ratios(variants, v, "per_second", ("direct", "haproxy")),
                        cell(c.get("p50_us"), f0),
                        cell(c.get("p99_us"), f0),
                        cell(c.get("errors"), f0),
                    ]
                )
        header = ["clients", "variant", "conn/s", "vs direct", "vs HAProxy", "p50 µs", "p99 µs"]
        lines += [*table([*header, "failed"], rows), "", *_errors(conns["summary"])]
    udp = result.get("udp", {})
    lines += [f"#### UDP (iperf3 -u, {result['udp_seconds']} s per run)", ""]
    if "error" in udp:
        lines += [f"failed: {udp['error']}", ""]
    else:
        rows = []
        for case, variants in udp["summary"].items():
            for v, c in variants.items():
                rows.append(
                    [
                        case,
                        label(v),
                        cell(c.get("offered_mbps"), f0),
                        cell(c.get("delivered_mbps"), f0),
                        *ratios(variants, v, "delivered_mbps", ("direct",)),
                        cell(c.get("loss_pct"), f2),
                        cell(c.get("delivered_pps"), f0),
                    ]
                )
        header = ["case", "variant", "offered Mbit/s", "delivered Mbit/s", "vs direct"]
        lines += [*table([*header, "loss %", "delivered pkt/s"], rows), ""]
        lines += _errors(udp["summary"])
    return lines


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "tcp": tcp_section,
    "conns": conns_section,
    "udp": udp_section,
    "memory": memory_section,
    "cpu": cpu_section,
    "netns": netns_section,
}


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        "## Latest figures",
        "",
        f"Run {results['started']} ({results['mode']}, {results['rounds']} round(s), "
        f"{results['duration_secs'] / 60:.0f} min).",
        "",
        f"- machine: {info['nproc']} CPUs ({info['cpu_model']}), {info.get('memory', '?')} RAM, "
        f"Linux {info['kernel']}, load average at start {' '.join(info['loadavg_at_start'])}",
        f"- {info['python']}, Twisted {info['twisted']}",
        f"- {info['haproxy']}",
        f"- {info['iperf3']}",
        f"- {info['socat']}",
        f"- open-file limit {results['nofile'][0]:,}",
        "",
        f"Medians over the rounds; (min{EN_DASH}max) where the rounds differed.",
        "",
    ]
    for rerun in results.get("reruns", []):
        lines += [f"- rerun {rerun['at']}: {', '.join(rerun['sections'])}"]
    if results.get("reruns"):
        lines.append("")
    for name, reason in results.get("skipped", {}).items():
        lines += [f"- {name}: skipped: {reason}"]
    if results.get("skipped"):
        lines.append("")
    for name, render in RENDERERS.items():
        section = results["sections"].get(name)
        if section is None:
            continue
        if "error" in section:
            lines += [f"### {name}", "", f"failed: {section['error']}", ""]
            continue
        lines += render(section)
    return "\n".join(lines).rstrip() + "\n"
