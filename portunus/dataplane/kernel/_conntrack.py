"""
Live connection counts of kernel-forwarded rules, from connection tracking.

nftables counts what passed, not what is open now, so the open
connections (UDP: flows) of each rule are read from the kernel's
connection tracking with the C{conntrack} command (conntrack-tools):

    conntrack -L --dst-nat -f ipv4     (and -f ipv6 when IPv6 rules exist)

Each translated connection is matched to a rule the way the rule's own
nftables match does: protocol, original destination port (and address,
for rules with listen addresses), and the target that answers.  TCP
connections in TIME_WAIT or CLOSE are over and not counted.  The parser
and the matching are pure; L{ConntrackReader} only runs the command.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults

from portunus.dataplane.kernel._ruleset import KernelRule
from portunus.dataplane.kernel._runner import DEFAULT_TIMEOUT_SECS, run_command

__all__ = ["ConntrackReader", "Flow", "active_counts", "parse_flows"]

#: TCP states of a connection that has ended.
_OVER = frozenset({"TIME_WAIT", "CLOSE"})


@attrs.frozen
class Flow:
    """One tracked, translated connection as conntrack lists it."""

    l4: str
    state: str | None
    original_dst: str
    original_dport: int
    reply_src: str
    reply_sport: int

    @property
    def open(self) -> bool:
        return self.state not in _OVER


def parse_flows(text: str) -> list[Flow]:
    """
    The flows in C{conntrack -L} output, one per line::

        tcp 6 431999 ESTABLISHED src=A dst=B sport=P dport=Q src=T dst=E sport=R dport=P ...
        udp 17 28 src=A dst=B sport=P dport=Q [UNREPLIED] src=T dst=E sport=R dport=P ...

    The first src/dst/sport/dport are the original direction's, the second
    the reply's.  Lines of other protocols or that do not parse are skipped.
    """
    flows = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4 or words[0] not in ("tcp", "udp"):
            continue
        state = words[3] if "=" not in words[3] and not words[3].startswith("[") else None
        seen: dict[str, list[str]] = {}
        for word in words:
            key, sep, value = word.partition("=")
            if sep:
                seen.setdefault(key, []).append(value)
        try:
            flows.append(
                Flow(
                    l4=words[0],
                    state=state,
                    original_dst=seen["dst"][0],
                    original_dport=int(seen["dport"][0]),
                    reply_src=seen["src"][1],
                    reply_sport=int(seen["sport"][1]),
                )
            )
        except (KeyError, IndexError, ValueError):
            continue
    return flows


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def active_counts(flows: Iterable[Flow], rules: Iterable[KernelRule]) -> dict[int, int]:
    """Open connections (UDP: flows) of each rule, by rule id; 0 for a rule with none."""
    rules = list(rules)
    counts = dict.fromkeys((r.id for r in rules), 0)
    keyed = [
        (
            rule,
            ipaddress.ip_address(rule.target),
            None
            if rule.listen_addresses is None
            else {ipaddress.ip_address(a) for a in rule.listen_addresses},
        )
        for rule in rules
    ]
    for flow in flows:
        if not flow.open:
            continue
        target, listen = _address(flow.reply_src), _address(flow.original_dst)
        for rule, rule_target, rule_listen in keyed:
            if (
                flow.l4 == rule.l4
                and target == rule_target
                and flow.reply_sport in rule.target_ports
                and flow.original_dport in rule.rule.listen
                and (rule_listen is None or listen in rule_listen)
            ):
                counts[rule.id] += 1
                break
    return counts


class ConntrackReader:
    """
    Lists translated connections with C{conntrack -L --dst-nat}.

    @param command: the argv that starts conntrack (C{("conntrack",)}, or
        with a namespace prefix as for L{NftRunner}).
    """

    def __init__(
        self,
        reactor: Any,
        command: Sequence[str] = ("conntrack",),
        timeout: float = DEFAULT_TIMEOUT_SECS,
    ) -> None:
        self._reactor = reactor
        self.command = tuple(command)
        self._timeout = timeout

    def read(self, versions: Iterable[int]) -> Deferred[list[Flow]]:
        """The translated flows of the given IP versions (one run per version)."""
        runs = [
            run_command(
                self._reactor,
                [*self.command, "-L", "--dst-nat", "-f", f"ipv{version}"],
                b"",
                self._timeout,
                name="conntrack",
            )
            for version in sorted(set(versions))
        ]

        def parse(outputs: list[bytes]) -> list[Flow]:
            return [f for out in outputs for f in parse_flows(out.decode("utf-8", "replace"))]

        return gatherResults(runs, consumeErrors=True).addCallback(parse)
