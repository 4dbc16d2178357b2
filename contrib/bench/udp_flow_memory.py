"""
UDP flow memory: how much RSS a forwarder process gains per idle UDP flow.

Starts a forwarder as a child process with one UDP rule (listen on
127.0.0.1, target a UDP echo socket in this process, flow cap 65,535, idle
timeout one hour so nothing is reaped), opens flows from distinct source
sockets, each confirmed by its echoed reply, and reads the child's VmRSS
from /proc.  A warm-up of 100 flows comes first so one-off allocations
(code paths, the reactor's first resizes) are not charged to the flows.

Each flow costs the forwarder one upstream socket (one descriptor) and this
process one client socket, so both raise RLIMIT_NOFILE's soft limit to the
hard one; 10,000 flows need a hard limit above ~10,300.

    .venv/bin/python contrib/bench/udp_flow_memory.py [--counts 1000,10000]
        [--upstream socket|twisted-port] [--output FILE]

Prints one JSON object and a Markdown table line per count.
``--upstream twisted-port`` measures the alternative the data plane does
not use: a C{reactor.listenUDP} port per flow, connected to the target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
WARMUP_FLOWS = 100
#: Flows being opened at once: keeps every socket buffer far from full.
WINDOW = 200
RESEND_AFTER_SECS = 1.0
DEADLINE_SECS = 120.0


# -- the forwarder (child process) -----------------------------------------


def serve(listen_port: int, target_port: int, upstream: str) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol
    from twisted.logger import LogLevel, globalLogBeginner

    from portunus.dataplane.listeners import bind_datagram_sockets
    from portunus.dataplane.udp import MAX_DATAGRAM, UdpFlow, UdpRuntime, UpstreamOpener
    from portunus.logging import make_observer
    from portunus.model import PortRange, Protocol, Rule, Target

    # As twistd does: without an observer Twisted buffers every event.
    globalLogBeginner.beginLoggingTo(
        [make_observer("json", LogLevel.warn, sys.stderr)], redirectStandardIO=False
    )
    rule = Rule(
        name="bench",
        protocol=Protocol.UDP,
        listen=PortRange.single(listen_port),
        targets=(Target(LOOPBACK, PortRange.single(target_port)),),
        listen_addresses=(LOOPBACK,),
        udp_max_flows=65535,
        udp_flow_idle_secs=3600,
    )
    opener: UpstreamOpener | None = None
    if upstream == "twisted-port":

        class _PortLeg(DatagramProtocol):
            noisy = False

            def __init__(self, flow: UdpFlow) -> None:
                self.flow = flow

            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                self.flow.reply_received(datagram)

            def send(self, datagram: bytes) -> None:
                assert self.transport is not None
                self.transport.write(datagram)

            def close(self) -> None:
                assert self.transport is not None
                self.transport.stopListening()  # type: ignore[attr-defined]

        def open_port(address: str, port: int, flow: UdpFlow) -> Any:
            leg = _PortLeg(flow)
            listening: Any = reactor.listenUDP(  # type: ignore[attr-defined]
                0, leg, interface="0.0.0.0", maxPacketSize=MAX_DATAGRAM
            )
            listening.connect(address, port)
            return leg

        opener = open_port
    runtime = UdpRuntime(reactor, rule, open_upstream=opener)
    runtime.serve(bind_datagram_sockets(rule.listen_addresses, rule.listen))
    print("ready", flush=True)
    reactor.run()  # type: ignore[attr-defined]


# -- the clients and the echo target (this process) ------------------------


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Flows:
    """Opens flows from distinct client sockets and echoes at the target."""

    def __init__(self, listen_port: int, echo: socket.socket) -> None:
        self.listen_port = listen_port
        self.echo = echo
        self.clients: list[socket.socket] = []
        self.resent = 0
        self.selector = selectors.DefaultSelector()
        self.selector.register(echo, selectors.EVENT_READ)

    def _echo(self) -> None:
        while True:
            try:
                data, addr = self.echo.recvfrom(65535)
            except BlockingIOError:
                return
            self.echo.sendto(data, addr)

    def open(self, count: int) -> None:
        """Open C{count} more flows, each confirmed by its reply."""
        outstanding: dict[socket.socket, float] = {}
        created = done = 0
        deadline = time.monotonic() + DEADLINE_SECS
        while done < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {count} flows answered")
            while len(outstanding) < WINDOW and created < count:
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind((LOOPBACK, 0))
                client.setblocking(False)
                client.sendto(b"flow %d" % len(self.clients), (LOOPBACK, self.listen_port))
                self.clients.append(client)
                self.selector.register(client, selectors.EVENT_READ)
                outstanding[client] = time.monotonic()
                created += 1
            for key, _ in self.selector.select(timeout=0.2):
                sock: Any = key.fileobj
                if sock is self.echo:
                    self._echo()
                    continue
                try:
                    sock.recv(65535)
                except BlockingIOError:
                    continue
                self.selector.unregister(sock)
                del outstanding[sock]
                done += 1
            now = time.monotonic()
            for client, sent in list(outstanding.items()):
                if now - sent > RESEND_AFTER_SECS:
                    client.sendto(b"again", (LOOPBACK, self.listen_port))
                    outstanding[client] = now
                    self.resent += 1

    def close(self) -> None:
        for client in self.clients:
            client.close()


def settled_rss(pid: int) -> int:
    """VmRSS once the child has finished with the last replies."""
    time.sleep(0.5)
    samples = []
    for _ in range(3):
        samples.append(vm_rss(pid))
        time.sleep(0.2)
    return samples[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1000,10000", help="flow counts to measure at")
    parser.add_argument("--upstream", choices=("socket", "twisted-port"), default="socket")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--serve", nargs=2, type=int, metavar=("LISTEN", "TARGET"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], args.upstream)
        return

    counts = sorted(int(c) for c in args.counts.split(","))
    limit = raise_nofile()
    if limit < counts[-1] + WARMUP_FLOWS + 256:
        sys.exit(f"open-file limit {limit} is too low for {counts[-1]} flows")

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    echo.bind((LOOPBACK, 0))
    echo.setblocking(False)
    listen_port = free_udp_port()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--upstream",
            args.upstream,
            "--serve",
            str(listen_port),
            str(echo.getsockname()[1]),
        ],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=raise_nofile,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        },
    )
    flows = Flows(listen_port, echo)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            sys.exit("the forwarder did not start")
        flows.open(WARMUP_FLOWS)
        base_rss = settled_rss(child.pid)
        base_fds = open_fds(child.pid)
        results = []
        for count in counts:
            flows.open(count - (len(flows.clients) - WARMUP_FLOWS))
            rss = settled_rss(child.pid)
            results.append(
                {
                    "flows": count,
                    "rss_bytes": rss,
                    "rss_growth_bytes": rss - base_rss,
                    "bytes_per_flow": round((rss - base_rss) / count),
                    "upstream_fds": open_fds(child.pid) - base_fds,
                }
            )
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
        flows.close()
        echo.close()

    report = {
        "benchmark": "udp_flow_memory",
        "upstream": args.upstream,
        "baseline_rss_bytes": base_rss,
        "warmup_flows": WARMUP_FLOWS,
        "results": results,
        "resent_datagrams": flows.resent,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    print()
    print("| upstream | flows | RSS growth | bytes per flow |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(
            f"| {args.upstream} | {r['flows']:,} | {r['rss_growth_bytes'] / 1048576:.1f} MiB "
            f"| {r['bytes_per_flow']:,} |"
        )


if __name__ == "__main__":
    main()
