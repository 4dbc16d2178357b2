"""
TCP throughput through each variant, measured with iperf3.

One persistent iperf3 server is the target of every variant.  Per round,
case and variant the client runs

    iperf3 -c 127.0.0.1 -p PORT -t SECS -O 1 -J --connect-timeout 3000 [-P 4]

(client to server only; the first second is omitted as warm-up) and the
figure is the receiver's rate, C{end.sum_received.bits_per_second}, in
Gbit/s.  Sender retransmits are kept in the raw results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import Settings, Trial, run_rounds, summarize
from iperf import IperfServer, client, iperf_server
from proxies import Proxy, running

CASES = {"1 stream": [], "4 streams": ["-P", "4"]}
METRICS = ("gbps", "retransmits")


def measure(
    server: IperfServer,
    proxy: Proxy,
    secs: int,
    extra: list[str],
    prefix: Sequence[str] = (),
) -> dict[str, float]:
    """One run through C{proxy}; C{prefix} runs the client elsewhere (a namespace)."""
    proxy.check()
    report = client(server, proxy.port, secs, extra, omit=1, host=proxy.host, prefix=prefix)
    end = report["end"]
    return {
        "gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "retransmits": float(end["sum_sent"].get("retransmits", 0)),
        "attempts": float(report["attempts"]),
    }


def run(settings: Settings, variants: list[str]) -> dict[str, Any]:
    with (
        iperf_server(settings.workdir) as server,
        running(variants, server.port, settings.workdir) as proxies,
    ):

        def one(case: str, variant: str) -> dict[str, float]:
            return measure(server, proxies[variant], settings.tcp_secs, CASES[case])

        trials: list[Trial] = run_rounds(settings.rounds, list(CASES), variants, one)
        modes = {k: p.relay_mode() for k, p in proxies.items() if p.relay_mode()}
    return {
        "trials": trials,
        "summary": summarize(trials, METRICS),
        "relay_modes": modes,
        "seconds": settings.tcp_secs,
    }
