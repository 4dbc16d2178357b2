"""
Relay CPU use at a paced 1 Gbit/s TCP stream, for the forwarder with and
without splice, HAProxy and socat.

One iperf3 server is the target.  Per round and variant the client runs

    iperf3 -c 127.0.0.1 -p PORT -t SECS -J --connect-timeout 3000 -b 1G

(one stream, paced by iperf3 to 1 Gbit/s), and the relay's CPU time --
utime + stime from /proc/PID/stat, summed over its process tree, plus the
cutime + cstime of children that exited (socat forks one per connection) --
is read just before and just after.  The figure is that CPU time divided by the test
duration iperf3 reports, in percent of one core (100 % = one core busy);
the rate actually delivered is reported alongside.  Kernel work done in
softirq context on the relay's behalf (loopback delivery) is not charged to
the relay process and so is not included, for any variant.
"""

from __future__ import annotations

from typing import Any

from common import Settings, Trial, run_rounds, summarize
from iperf import IperfServer, client, iperf_server
from procs import tree_cpu_seconds
from proxies import Proxy, running

VARIANTS = ["standalone", "standalone-userspace", "haproxy", "socat"]
CASE = "1 stream paced at 1 Gbit/s"
METRICS = ("cpu_pct", "gbps")


def measure(server: IperfServer, proxy: Proxy, secs: int) -> dict[str, float]:
    proxy.check()
    before = tree_cpu_seconds(proxy.pid)
    report = client(server, proxy.port, secs, ["-b", "1G"])
    end = report["end"]
    used = tree_cpu_seconds(proxy.pid) - before
    duration = end["sum_received"]["seconds"]
    return {
        "cpu_pct": 100.0 * used / duration,
        "cpu_secs": used,
        "gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "attempts": float(report["attempts"]),
    }


def run(settings: Settings) -> dict[str, Any]:
    variants = settings.pick(VARIANTS)
    with (
        iperf_server(settings.workdir) as server,
        running(variants, server.port, settings.workdir) as proxies,
    ):

        def one(case: str, variant: str) -> dict[str, float]:
            return measure(server, proxies[variant], settings.cpu_secs)

        trials: list[Trial] = run_rounds(settings.rounds, [CASE], variants, one)
        modes = {k: p.relay_mode() for k, p in proxies.items() if p.relay_mode()}
    return {
        "trials": trials,
        "summary": summarize(trials, METRICS),
        "relay_modes": modes,
        "seconds": settings.cpu_secs,
    }
