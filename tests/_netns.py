"""
A three-host topology in network namespaces: client, edge, target.

    client c0 ---- e0 edge e1 ---- t0 target
    198.18.0.1/24  198.18.0.2/24   198.18.1.2/24  198.18.1.1/24
    2001:2::1/64   2001:2::2/64    2001:2:0:1::2/64  2001:2:0:1::1/64

Addresses come from the benchmarking ranges (198.18.0.0/15, 2001:2::/48)
and live only inside namespaces this module creates, under names unique to
the run.  The edge forwards (IPv4 and IPv6); client and target route
through it, so "direct" traffic from client to target crosses the edge
without translation.  Used by the kernel-mode tests and by the
benchmark's netns section (contrib/bench/netns.py).

Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2's C{ip}.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Sequence

from portunus.dataplane.kernel import Availability, find_command

__all__ = [
    "CLIENT_V4",
    "EDGE_V4",
    "EDGE_V6",
    "TARGET_V4",
    "TARGET_V6",
    "Topology",
    "kernel_availability",
    "missing",
    "read_in",
]

CLIENT_V4, EDGE_V4, EDGE_TARGET_SIDE_V4, TARGET_V4 = (
    "198.18.0.1",
    "198.18.0.2",
    "198.18.1.2",
    "198.18.1.1",
)
CLIENT_V6, EDGE_V6, EDGE_TARGET_SIDE_V6, TARGET_V6 = (
    "2001:2::1",
    "2001:2::2",
    "2001:2:0:1::2",
    "2001:2:0:1::1",
)


def missing(*tools: str) -> str | None:
    """Why namespaces cannot be made here (and C{tools} run in them), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", *tools):
        if find_command(tool) is None:
            return f"{tool} is not installed"
    probe = f"portunus-probe-{secrets.token_hex(4)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def read_in(namespace: str, path: str) -> str | None:
    """The text of C{path} (a /proc/sys file, say) as seen inside C{namespace}."""
    argv = ["ip", "netns", "exec", namespace, "cat", path]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return done.stdout if done.returncode == 0 else None


def kernel_availability(namespace: str) -> Availability:
    """Kernel-mode prerequisites for programming C{namespace} from this process."""
    with open("/proc/self/status") as status:
        return Availability.from_readings(
            status.read(),
            read_in(namespace, "/proc/sys/net/ipv4/ip_forward"),
            read_in(namespace, "/proc/sys/net/ipv6/conf/all/forwarding"),
            find_command("nft"),
        )


class Topology:
    """The three namespaces; L{create} them, always L{destroy} them."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or secrets.token_hex(4)
        self.client = f"portunus-{tag}-client"
        self.edge = f"portunus-{tag}-edge"
        self.target = f"portunus-{tag}-target"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client, self.edge, self.target)

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def exec(self, namespace: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs C{argv} inside C{namespace}."""
        return ["ip", "netns", "exec", namespace, *argv]

    def sysctl(self, namespace: str, **values: str | int) -> None:
        """Set sysctls (dots written as double underscores) inside C{namespace}."""
        pairs = [f"{key.replace('__', '.')}={value}" for key, value in values.items()]
        self.run(self.exec(namespace, ["sysctl", "-q", "-w", *pairs]))

    def read(self, namespace: str, path: str) -> str | None:
        return read_in(namespace, path)

    def create(self) -> None:
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise

    def _create(self) -> None:
        for ns in self.namespaces:
            self.run(["ip", "netns", "add", ns])
            self.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        links = ((self.client, "c0", self.edge, "e0"), (self.edge, "e1", self.target, "t0"))
        for ns_a, a, ns_b, b in links:
            veth = ["type", "veth", "peer", "name", b, "netns", ns_b]
            self.run(["ip", "link", "add", a, "netns", ns_a, *veth])
        addresses = (
            (self.client, "c0", CLIENT_V4, 24, CLIENT_V6),
            (self.edge, "e0", EDGE_V4, 24, EDGE_V6),
            (self.edge, "e1", EDGE_TARGET_SIDE_V4, 24, EDGE_TARGET_SIDE_V6),
            (self.target, "t0", TARGET_V4, 24, TARGET_V6),
        )
        for ns, dev, v4, prefix, v6 in addresses:
            self.run(["ip", "-n", ns, "addr", "add", f"{v4}/{prefix}", "dev", dev])
            self.run(["ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad"])
            self.run(["ip", "-n", ns, "link", "set", dev, "up"])
        for ns, via4, via6 in (
            (self.client, EDGE_V4, EDGE_V6),
            (self.target, EDGE_TARGET_SIDE_V4, EDGE_TARGET_SIDE_V6),
        ):
            self.run(["ip", "-n", ns, "route", "add", "default", "via", via4])
            self.run(["ip", "-n", ns, "-6", "route", "add", "default", "via", via6])
        self.sysctl(self.edge, net__ipv4__ip_forward=1, net__ipv6__conf__all__forwarding=1)

    def pids(self) -> list[int]:
        """Processes still running inside any of the namespaces."""
        found: list[int] = []
        for ns in self.namespaces:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            found += [int(p) for p in out.stdout.split()]
        return found

    def destroy(self) -> None:
        """Kill what still runs inside, then delete the namespaces (and their links)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
