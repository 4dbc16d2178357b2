"""
UDP through each variant: delivered rate and loss at fixed offered rates,
and packets per second with small datagrams.

The target is one iperf3 server.  iperf3 sets up a UDP test over a TCP
control connection to the same port, so every relay forwards both: the
forwarder gets a TCP and a UDP rule on one listen port, socat runs as a TCP
and a UDP relay (C{socat -T 30 UDP4-LISTEN:P,bind=127.0.0.1,fork,reuseaddr
UDP4:127.0.0.1:T}).  Per round, case and variant:

    iperf3 -c 127.0.0.1 -p PORT -t SECS -J -u -w 4M -l 1400 -b RATE   (500M, 1G, 2G)
    iperf3 -c 127.0.0.1 -p PORT -t SECS -J -u -w 4M -l 64 -b 0   (as fast as it can)
    iperf3 ... -l 64 -b 0 -P 4   (the same over 4 flows, for the 2-worker forwarder)

C{-w 4M} gives iperf3's own sockets 4 MiB buffers (the forwarder's UDP
listener has the same), so the measuring endpoints are not what drops.
Figures, from the server's side as the client reports it
(C{end.sum_received}): delivered Mbit/s, loss % (datagrams the client sent
that the server never got) and delivered datagrams per second.  The offered
rate the client actually achieved (C{end.sum_sent}) is kept too: at 2 Gbit/s
and with -b 0 the single-threaded iperf3 client may not reach it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import Settings, Trial, run_rounds, summarize
from iperf import IperfServer, client, iperf_server
from proxies import Proxy, running

VARIANTS = ["direct", "standalone", "standalone-2w", "socat"]
CASES = {
    "1400 B @ 500 Mbit/s": ["-l", "1400", "-b", "500M"],
    "1400 B @ 1 Gbit/s": ["-l", "1400", "-b", "1G"],
    "1400 B @ 2 Gbit/s": ["-l", "1400", "-b", "2G"],
    "64 B, unlimited": ["-l", "64", "-b", "0"],
    # Four flows (four source ports): what lets SO_REUSEPORT spread them
    # over workers; one flow always stays in one worker.
    "64 B, 4 flows, unlimited": ["-l", "64", "-b", "0", "-P", "4"],
}
METRICS = ("offered_mbps", "delivered_mbps", "loss_pct", "delivered_pps")


def measure(
    server: IperfServer,
    proxy: Proxy,
    secs: int,
    extra: list[str],
    prefix: Sequence[str] = (),
) -> dict[str, float]:
    """One run through C{proxy}; C{prefix} runs the client elsewhere (a namespace)."""
    proxy.check()
    report = client(
        server, proxy.port, secs, ["-u", "-w", "4M", *extra], host=proxy.host, prefix=prefix
    )
    end = report["end"]
    sent, got = end["sum_sent"], end["sum_received"]
    delivered = got["packets"] - got["lost_packets"]
    return {
        "offered_mbps": sent["bits_per_second"] / 1e6,
        "delivered_mbps": got["bits_per_second"] / 1e6,
        "loss_pct": float(got["lost_percent"]),
        "delivered_pps": delivered / got["seconds"] if got["seconds"] else 0.0,
        "sent_packets": float(sent["packets"]),
        "attempts": float(report["attempts"]),
    }


def run(settings: Settings) -> dict[str, Any]:
    variants = settings.pick(VARIANTS)
    with (
        iperf_server(settings.workdir, udp=True) as server,
        running(variants, server.port, settings.workdir, udp=True) as proxies,
    ):

        def one(case: str, variant: str) -> dict[str, float]:
            return measure(server, proxies[variant], settings.udp_secs, CASES[case])

        trials: list[Trial] = run_rounds(settings.rounds, list(CASES), variants, one)
    return {"trials": trials, "summary": summarize(trials, METRICS), "seconds": settings.udp_secs}
