"""
Three hosts in network namespaces: a client, an edge that forwards, a target.

The topology is tests/_netns.py: client 198.18.0.1 -- 198.18.0.2 edge
198.18.1.2 -- 198.18.1.1 target, veth pairs, the edge routing between
them.  Unlike the loopback sections, the forwarder sits on a host of its
own, so the kernel's forwarding path (and kernel mode) can be compared:

    direct        client -> target, routed through the edge, no translation
    kernel        portunus.dataplane.kernel programs the edge: DNAT to the
                  target, masquerade (contrib/bench/kernel_rule.py); the
                  table exists only during this variant's trials, so no
                  other variant pays for connection tracking
    standalone    ip netns exec EDGE twistd -n portunus-standalone (splice)
    standalone-2w the same with --workers 2
    haproxy       ip netns exec EDGE haproxy (mode tcp, splice)

Every relay listens on 198.18.0.2 and forwards to 198.18.1.1.  Loads:

    tcp    ip netns exec CLIENT iperf3 -c HOST -p PORT -t SECS -O 1 [-P 4],
           server: ip netns exec TARGET iperf3 -s -B 198.18.1.1
    conns  ip netns exec CLIENT connbench load PORT N SECS MAX HOST (1 and
           8 clients), target: ip netns exec TARGET connbench serve PORT 2
           198.18.1.1
    udp    iperf3 -u -w 4M -l 1400 -b 1G and -l 64 -b 0 (HAProxy has no UDP)

Short connections between namespaces are distorted by TIME_WAIT and
connection tracking unless tuned.  Linux keeps TIME_WAIT for a fixed 60 s,
so its length cannot be lowered; its weight can: in every namespace
C{net.ipv4.tcp_max_tw_buckets=256} (sockets past that close at once
instead of waiting), C{tcp_tw_reuse=1}, C{tcp_tw_reuse_delay=1} (ms, where
the kernel has it), C{tcp_fin_timeout=1} and the full ephemeral range
C{ip_local_port_range=1024 65535}; in the edge
C{nf_conntrack_tcp_timeout_time_wait=1}, C{..._close=1},
C{..._fin_wait=5}, C{..._last_ack=5}.  Before every trial the run waits
until no TCP socket in any namespace is still opening or closing and at
least 1.5 s have passed (more than the conntrack TIME_WAIT timeout), at
most 30 s; each trial records the wait, the sockets left in TIME_WAIT and
the entries the edge's conntrack still counts.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import conns
import tcp
import udp
from common import Settings, Trial, run_rounds, summarize
from iperf import iperf_server
from procs import HERE, VENV_BIN, BenchError, free_port, log, run_tool
from proxies import Placement, Proxy, running, start

from tests._netns import EDGE_V4, TARGET_V4, Topology, missing

VARIANTS = ("direct", "kernel", "standalone", "standalone-2w", "haproxy")
LABELS = {
    "direct": "direct (routed by the edge)",
    "kernel": "Portunus kernel mode (nftables)",
    "standalone": "Portunus standalone, splice",
    "standalone-2w": "Portunus standalone, 2 workers, splice",
    "haproxy": "HAProxy, mode tcp, splice",
}
TCP_CASES = {"1 stream": [], "4 streams": ["-P", "4"]}
CONN_CASES = {"1 client": 1, "8 clients": 8}
UDP_CASES = {
    "1400 B @ 1 Gbit/s": ["-l", "1400", "-b", "1G"],
    "64 B, unlimited": ["-l", "64", "-b", "0"],
}
#: Longer than the edge's nf_conntrack_tcp_timeout_time_wait (1 s).
SETTLE_MIN_SECS = 1.5
SETTLE_TIMEOUT_SECS = 30.0
#: Socket states that are no trace of a connection still in flight.
_SETTLED = ("LISTEN", "TIME-WAIT", "UNCONN")
EVERYWHERE = {
    "net.ipv4.tcp_tw_reuse": "1",
    "net.ipv4.tcp_fin_timeout": "1",
    "net.ipv4.tcp_max_tw_buckets": "256",
    "net.ipv4.ip_local_port_range": "1024 65535",
}
#: Newer kernels only (6.x); set where present.
OPTIONAL = {"net.ipv4.tcp_tw_reuse_delay": "1"}
EDGE_CONNTRACK = {
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": "1",
    "net.netfilter.nf_conntrack_tcp_timeout_close": "1",
    "net.netfilter.nf_conntrack_tcp_timeout_fin_wait": "5",
    "net.netfilter.nf_conntrack_tcp_timeout_last_ack": "5",
}


def available() -> str | None:
    """Why this section cannot run here, or None."""
    return missing("nft", "iperf3", "haproxy")


def _sysctl(topology: Topology, namespace: str, values: dict[str, str]) -> None:
    argv = ["sysctl", "-q", "-w", *(f"{key}={value}" for key, value in values.items())]
    topology.run(topology.exec(namespace, argv))


def tune(topology: Topology) -> None:
    for namespace in topology.namespaces:
        _sysctl(topology, namespace, EVERYWHERE)
        for key, value in OPTIONAL.items():
            if topology.read(namespace, "/proc/sys/" + key.replace(".", "/")) is not None:
                _sysctl(topology, namespace, {key: value})
    _sysctl(topology, topology.edge, EDGE_CONNTRACK)


def _sockets(topology: Topology, namespace: str) -> tuple[int, int]:
    """(sockets in TIME_WAIT, sockets still opening or closing) in C{namespace}."""
    out = topology.run(topology.exec(namespace, ["ss", "-Htan"]))
    states = [line.split()[0] for line in out.splitlines() if line.strip()]
    time_wait = states.count("TIME-WAIT")
    busy = sum(1 for state in states if state not in _SETTLED)
    return time_wait, busy


def _tracked(topology: Topology) -> int:
    text = topology.read(topology.edge, "/proc/sys/net/netfilter/nf_conntrack_count")
    return int(text) if text else 0


def settle(topology: Topology) -> dict[str, float]:
    """
    Wait until no TCP socket of an earlier trial is still opening or closing
    in any namespace, and at least L{SETTLE_MIN_SECS} (longer than the
    edge's conntrack TIME_WAIT timeout) have passed; record the wait, the
    sockets left in TIME_WAIT (bounded by tcp_max_tw_buckets) and the
    entries the edge still tracks (expired ones linger until conntrack's
    garbage collector passes; lookups skip them).
    """
    started = time.monotonic()
    while True:
        counts = [_sockets(topology, ns) for ns in topology.namespaces]
        waited = time.monotonic() - started
        busy = sum(b for _, b in counts)
        if (busy == 0 and waited >= SETTLE_MIN_SECS) or waited > SETTLE_TIMEOUT_SECS:
            return {
                "settle_secs": round(waited, 2),
                "unsettled": float(busy),
                "time_wait": float(max(t for t, _ in counts)),
                "tracked": float(_tracked(topology)),
            }
        time.sleep(0.25)


class Edge:
    """The variants, placed in the edge namespace of C{topology}."""

    def __init__(self, topology: Topology, workdir: Path) -> None:
        self.topology = topology
        self.workdir = workdir
        self.where = Placement(tuple(topology.exec(topology.edge, [])), EDGE_V4, TARGET_V4)
        self.client = topology.exec(topology.client, [])
        self.target = topology.exec(topology.target, [])

    def running(
        self, keys: Sequence[str], target: int, udp: bool = False
    ) -> contextlib.AbstractContextManager[dict[str, Proxy]]:
        return running(keys, target, self.workdir, udp, self.where, self._start)

    @staticmethod
    def _start(key: str, target: int, workdir: Path, udp: bool, where: Placement) -> Proxy:
        """The kernel variant is programmed per trial (L{programmed}); others start here."""
        if key == "kernel":
            return Proxy("kernel", free_port(udp_too=udp), where.listen)
        return start(key, target, workdir, udp, where)

    @contextlib.contextmanager
    def programmed(self, proxy: Proxy, target: int, udp: bool) -> Iterator[None]:
        """For the kernel variant: its table exists only inside this block."""
        if proxy.key != "kernel":
            yield
            return
        argv = [str(VENV_BIN / "python"), str(HERE / "kernel_rule.py"), self.topology.edge]
        argv += [EDGE_V4, str(proxy.port), TARGET_V4, str(target)] + (["--udp"] if udp else [])
        run_tool(argv, timeout=60)
        try:
            yield
        finally:
            delete = ["nft", "delete", "table", "inet", "portunus"]
            run_tool(self.topology.exec(self.topology.edge, delete), timeout=30)

    def trial(
        self, proxy: Proxy, target: int, udp: bool, measure: Callable[[], dict[str, float]]
    ) -> dict[str, float]:
        proxy.check()
        settled = settle(self.topology)
        with self.programmed(proxy, target, udp):
            return {**measure(), **settled}


def _run_iperf(
    edge: Edge, settings: Settings, variants: list[str], udp_too: bool
) -> dict[str, Any]:
    """The TCP (or, C{udp_too}, the UDP) iperf3 cases through every variant."""
    module, cases, secs = (
        (udp, UDP_CASES, settings.udp_secs)
        if udp_too
        else (
            tcp,
            TCP_CASES,
            settings.tcp_secs,
        )
    )
    with (
        iperf_server(settings.workdir, udp=udp_too, host=TARGET_V4, prefix=edge.target) as server,
        edge.running(variants, server.port, udp=udp_too) as proxies,
    ):

        def one(case: str, variant: str) -> dict[str, float]:
            proxy, extra = proxies[variant], cases[case]
            return edge.trial(
                proxy,
                server.port,
                udp_too,
                lambda: module.measure(server, proxy, secs, extra, edge.client),
            )

        trials: list[Trial] = run_rounds(settings.rounds, list(cases), variants, one)
    return {"trials": trials, "summary": summarize(trials, module.METRICS)}


def run_tcp(edge: Edge, settings: Settings, variants: list[str]) -> dict[str, Any]:
    return _run_iperf(edge, settings, variants, udp_too=False)


def run_udp(edge: Edge, settings: Settings, variants: list[str]) -> dict[str, Any]:
    """HAProxy has no UDP: it sits this one out."""
    return _run_iperf(edge, settings, [v for v in variants if v != "haproxy"], udp_too=True)


def run_conns(edge: Edge, settings: Settings, variants: list[str]) -> dict[str, Any]:
    binary = settings.connbench
    if binary is None:
        raise BenchError("connbench was not built")
    with (
        conns.target(binary, edge.workdir, TARGET_V4, edge.target) as port,
        edge.running(variants, port) as proxies,
    ):

        def one(case: str, variant: str) -> dict[str, float]:
            proxy = proxies[variant]
            clients, secs, limit = CONN_CASES[case], settings.conn_secs, settings.conn_max

            def measure() -> dict[str, float]:
                return conns.load(binary, proxy.port, clients, secs, limit, proxy.host, edge.client)

            return edge.trial(proxy, port, False, measure)

        trials: list[Trial] = run_rounds(settings.rounds, list(CONN_CASES), variants, one)
    return {"trials": trials, "summary": summarize(trials, conns.METRICS)}


def run(settings: Settings) -> dict[str, Any]:
    why = available()
    if why is not None:
        raise BenchError(f"the netns section cannot run here: {why}")
    variants = settings.pick(VARIANTS)
    if not settings.workers_available:
        variants = [v for v in variants if v != "standalone-2w"]
    topology = Topology(f"bench{secrets.token_hex(3)}")
    topology.create()
    try:
        tune(topology)
        edge = Edge(topology, settings.workdir)
        result: dict[str, Any] = {
            "seconds": {"tcp": settings.tcp_secs, "conns": settings.conn_secs},
            "udp_seconds": settings.udp_secs,
        }
        for name, section in (("tcp", run_tcp), ("conns", run_conns), ("udp", run_udp)):
            log(f"-- netns {name}")
            try:
                result[name] = section(edge, settings, variants)
            except BenchError as e:
                result[name] = {"error": str(e)}
        return result
    finally:
        topology.destroy()
