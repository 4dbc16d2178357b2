"""
Memory per idle proxied TCP connection, and per idle UDP flow.

TCP: a holder process (this file with C{--hold PORT}) accepts connections
and keeps them open without reading or writing.  For each variant and round
a fresh relay towards the holder is started; this process opens 100 warm-up
connections through it, waits until the holder has accepted all of them
(so every one is relayed end to end), reads the relay's RSS (VmRSS from
/proc/PID/status, summed over its process tree: for HAProxy its one
process), then opens more connections until 1,000 and 10,000 are held past
the warm-up, reading RSS again at each step after a short settle.  The
figure is the RSS growth over the warm-up reading divided by the number of
connections.  Each relayed connection also costs two descriptors and two
kernel sockets in the relay, which RSS does not include.  Connections are
opened 500 at a time, each batch fully accepted by the holder before the
next; no byte ever flows, so the forwarder never sets up a splice pipe.

Everyone's open-file limit is raised first (to 65,536 when running as root,
otherwise soft to hard): 10,000 relayed connections need about 20,000
descriptors in the relay.

UDP: runs C{udp_flow_memory.py --counts ...} (see that file) once and
keeps its JSON.
"""

from __future__ import annotations

import json
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import Settings, Trial, summarize
from procs import (
    HERE,
    LOOPBACK,
    BenchError,
    free_port,
    log,
    open_fds,
    raise_nofile,
    spawn,
    stop,
    tree_rss,
    wait_bound,
    wait_until,
)
from proxies import start

VARIANTS = ["standalone", "standalone-userspace", "haproxy"]
WARMUP = 100
BATCH = 500
METRICS = ("rss_growth_bytes", "bytes_per_conn")
UDP_FLOWS_TIMEOUT_SECS = 600


# -- the holder (child process) --------------------------------------------


def hold(port: int) -> None:
    """Accept connections on C{port} and keep them until the peer closes."""
    raise_nofile()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((LOOPBACK, port))
    server.listen(4096)
    server.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            sock: Any = key.fileobj
            if sock is server:
                _accept_all(server, selector)
            elif not _recv_or_zero(sock):
                selector.unregister(sock)
                sock.close()


def _accept_all(server: socket.socket, selector: selectors.BaseSelector) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)


def _recv_or_zero(sock: socket.socket) -> int:
    try:
        return len(sock.recv(4096))
    except BlockingIOError:
        return 1
    except OSError:
        return 0


# -- the measurement (this process) ----------------------------------------


def settled_rss(pid: int) -> int:
    time.sleep(1.0)
    return tree_rss(pid)


class Clients:
    """Idle client connections to a relay, checked at the holder."""

    def __init__(self, port: int, holder_pid: int) -> None:
        self.port = port
        self.holder_pid = holder_pid
        self.base_fds = open_fds(holder_pid)
        self.socks: list[socket.socket] = []

    def held(self) -> int:
        return open_fds(self.holder_pid) - self.base_fds

    def grow_to(self, total: int) -> None:
        while len(self.socks) < total:
            for _ in range(min(BATCH, total - len(self.socks))):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex((LOOPBACK, self.port))
                self.socks.append(sock)
            self._wait_held(len(self.socks))

    def _wait_held(self, count: int) -> None:
        def done() -> bool:
            return self.held() >= count

        wait_until(done, f"{count} held connections", 60)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def one_trial(variant: str, counts: tuple[int, ...], workdir: Path) -> list[dict[str, Any]]:
    holder_port = free_port()
    holder = spawn([sys.executable, __file__, "--hold", str(holder_port)], cwd=workdir)
    proxy = None
    clients = None
    try:
        wait_bound(holder_port, holder)
        proxy = start(variant, holder_port, workdir)
        clients = Clients(proxy.port, holder.pid)
        clients.grow_to(WARMUP)
        base = settled_rss(proxy.pid)
        rows = []
        for count in counts:
            clients.grow_to(WARMUP + count)
            rss = settled_rss(proxy.pid)
            rows.append(
                {
                    "connections": count,
                    "baseline_rss_bytes": base,
                    "rss_bytes": rss,
                    "rss_growth_bytes": rss - base,
                    "bytes_per_conn": (rss - base) / count,
                    "relay_fds": open_fds(proxy.pid),
                }
            )
        return rows
    finally:
        if clients is not None:
            clients.close()
        if proxy is not None:
            proxy.stop()
        stop(holder)


def tcp_rounds(settings: Settings, variants: list[str], counts: tuple[int, ...]) -> list[Trial]:
    trials: list[Trial] = []
    for round_no in range(1, settings.rounds + 1):
        for variant in variants:
            base: Trial = {"round": round_no, "variant": variant}
            try:
                rows = one_trial(variant, counts, settings.workdir)
            except BenchError as e:
                log(f"  ! idle TCP / {variant}: {e}")
                rows = [{"connections": c, "error": str(e)} for c in counts]
            for row in rows:
                trials.append({**base, "case": f"{row['connections']:,} connections", **row})
                if "error" not in row:
                    per = row["bytes_per_conn"]
                    log(f"  {round_no} {row['connections']} conns / {variant}: {per:.0f} B/conn")
    return trials


def udp_flows(settings: Settings) -> dict[str, Any]:
    """Run udp_flow_memory.py in its own session, so that L{stop} also ends
    the forwarder it starts if it has to be cut short."""
    output = settings.workdir / "udp_flow_memory.json"
    errors = settings.workdir / "udp_flow_memory.err"
    counts = ",".join(str(c) for c in settings.udp_flow_counts)
    argv = [sys.executable, str(HERE / "udp_flow_memory.py"), "--counts", counts]
    with errors.open("wb") as err:
        proc = spawn([*argv, "--output", str(output)], cwd=settings.workdir, stderr=err)
    try:
        status = proc.wait(timeout=UDP_FLOWS_TIMEOUT_SECS)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"udp_flow_memory.py took over {UDP_FLOWS_TIMEOUT_SECS}s") from e
    finally:
        stop(proc)
    if status != 0:
        tail = " / ".join(errors.read_text(errors="replace").strip().splitlines()[-3:])
        raise BenchError(f"udp_flow_memory.py exited {status}: {tail}")
    report: dict[str, Any] = json.loads(output.read_text())
    return report


def fitting_counts(wanted: tuple[int, ...], nofile: int) -> tuple[int, ...]:
    """C{wanted}, with counts the relay's descriptors cannot hold replaced by
    the largest multiple of 1,000 that fits (2 per connection, plus slack)."""
    most = (nofile - 256) // 2 - WARMUP
    fitting = {c if c <= most else most // 1000 * 1000 for c in wanted}
    return tuple(sorted(c for c in fitting if c > 0))


def run(settings: Settings) -> dict[str, Any]:
    soft, hard = raise_nofile()
    counts = fitting_counts(settings.tcp_counts, soft)
    result: dict[str, Any] = {"nofile": [soft, hard], "counts": list(counts)}
    if counts != settings.tcp_counts:
        result["note"] = (
            f"the open-file limit here is {soft:,} (hard {hard:,}, and it cannot be raised), "
            f"which holds about {(soft - 256) // 2 - WARMUP:,} relayed connections per process; "
            f"measured {', '.join(f'{c:,}' for c in counts)} instead of "
            f"{', '.join(f'{c:,}' for c in settings.tcp_counts)}"
        )
        log(f"  note: {result['note']}")
    trials = tcp_rounds(settings, settings.pick(VARIANTS), counts) if counts else []
    result.update(trials=trials, summary=summarize(trials, METRICS))
    try:
        result["udp_flows"] = udp_flows(settings)
    except BenchError as e:
        log(f"  ! udp_flow_memory.py: {e}")
        result["udp_flows"] = {"error": str(e)}
    return result


if __name__ == "__main__" and sys.argv[1:2] == ["--hold"]:
    hold(int(sys.argv[2]))
