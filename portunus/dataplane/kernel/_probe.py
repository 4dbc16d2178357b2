"""
Can this process forward in the kernel here?  The capability and sysctl probes.

Kernel mode needs C{CAP_NET_ADMIN} (to program nftables), IP forwarding
for the target's family (C{net.ipv4.ip_forward}, or
C{net.ipv6.conf.all.forwarding}; without it translated packets are
dropped, not routed) and the C{nft} command.  L{Availability.from_readings}
is pure, so the decision is tested on any machine; L{probe_host} reads the
files of the process's own network namespace.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from portunus.dataplane.kernel._runner import find_command
from portunus.errors import PortunusError

__all__ = ["CAP_NET_ADMIN", "UNAVAILABLE_REASONS", "Availability", "probe_host"]

CAP_NET_ADMIN = 12

#: Why kernel mode cannot run here, and what to do about it.
UNAVAILABLE_REASONS: dict[str, str] = {
    "no_cap_net_admin": "run as root or grant CAP_NET_ADMIN (systemd: AmbientCapabilities=)",
    "ip_forward_off": "enable IPv4 forwarding: sysctl -w net.ipv4.ip_forward=1",
    "ipv6_forwarding_off": "enable IPv6 forwarding: sysctl -w net.ipv6.conf.all.forwarding=1",
    "nft_missing": "install nftables (apt-get install nftables)",
    "table_not_owned": "another program owns a table of that name; pick another kernel table name",
    "nft_failed": "nft refused the change; see the message (kernel without nf_tables NAT?)",
}

_SYSCTL = Path("/proc/sys/net")


def _cap_eff(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _on(value: str | None) -> bool:
    return value is not None and value.strip() not in ("", "0")


@attrs.frozen
class Availability:
    """What the kernel-mode prerequisites looked like when probed."""

    cap_net_admin: bool
    ipv4_forwarding: bool
    ipv6_forwarding: bool
    nft: str | None

    @classmethod
    def from_readings(
        cls,
        status: str,
        ipv4_forward: str | None,
        ipv6_forward: str | None,
        nft: str | None,
    ) -> Availability:
        """
        @param status: the text of C{/proc/self/status} (its C{CapEff} line).
        @param ipv4_forward: C{net.ipv4.ip_forward}, None if unreadable.
        @param ipv6_forward: C{net.ipv6.conf.all.forwarding}, None if unreadable.
        @param nft: the path of the nft command, None if missing.
        """
        return cls(
            cap_net_admin=bool(_cap_eff(status) & (1 << CAP_NET_ADMIN)),
            ipv4_forwarding=_on(ipv4_forward),
            ipv6_forwarding=_on(ipv6_forward),
            nft=nft,
        )

    def problem(self, version: int | None = None) -> tuple[str, str] | None:
        """
        (reason, message) why a rule whose target is IPv C{version} (or, for
        None, any rule at all) cannot be forwarded by the kernel; None if
        it can.
        """
        if not self.cap_net_admin:
            return "no_cap_net_admin", "this process lacks CAP_NET_ADMIN"
        if self.nft is None:
            return "nft_missing", "the nft command is not installed"
        if version == 4 and not self.ipv4_forwarding:
            return "ip_forward_off", "IPv4 forwarding is off (net.ipv4.ip_forward = 0)"
        if version == 6 and not self.ipv6_forwarding:
            return (
                "ipv6_forwarding_off",
                "IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0)",
            )
        return None

    def refuse_unless_available(self, version: int | None = None, **fields: object) -> None:
        """@raise PortunusError: C{kernel_mode_unavailable} naming the reason."""
        problem = self.problem(version)
        if problem is not None:
            reason, message = problem
            raise PortunusError(
                "kernel_mode_unavailable",
                f"{message}; {UNAVAILABLE_REASONS[reason]}",
                reason=reason,
                **fields,
            )


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def probe_host() -> Availability:
    """The prerequisites as this process sees them, in its own network namespace."""
    return Availability.from_readings(
        status=_read(Path("/proc/self/status")) or "",
        ipv4_forward=_read(_SYSCTL / "ipv4" / "ip_forward"),
        ipv6_forward=_read(_SYSCTL / "ipv6" / "conf" / "all" / "forwarding"),
        nft=find_command("nft"),
    )
