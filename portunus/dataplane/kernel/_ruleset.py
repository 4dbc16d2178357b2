"""
The pure builder: plain rules in, nftables JSON commands out.

Everything lives in one table of our own, C{inet portunus} by default, so
IPv4 and IPv6 share it and nothing else on the host is touched::

    table inet portunus
      counter portunus_owner         comment "portunus-owner instance=... pid=..."
      chain prerouting  (nat, dstnat)  per rule and family: match the listen
                                       port(s) and address(es), dnat to the target
      chain postrouting (nat, srcnat)  per rule: the rule's translated
                                       connections -> masquerade (the egress address)
      chain forward     (filter)       per rule: its connections -> jump r<ID>
      chain r<ID>                      the rule's limits, then its counters
      counter r<ID>_in, r<ID>_out      bytes and packets, client->target and back
      counter r<ID>_conns              connections (UDP: flows) admitted
      counter r<ID>_rejects            connections refused by a limit
      quota r<ID>_quota                optional: drop once the rule moved N bytes

A rule's connections are recognised after translation by their conntrack
tuple: translated (C{ct status dnat}), arriving on the rule's listen
port(s) (and address(es) when not the wildcard), answered by the target.
That needs no packet or connection mark, which other software may own.

Only the per-rule chain holds state (the token bucket of a C{limit}, the
connection list of a C{ct count}), and only the rule's own install, replace
or removal rewrites it.  The three base chains hold nothing but matches, so
every change flushes and rewrites them whole, in the same atomic batch:
that needs no rule handles, and the base chains always say exactly what the
desired rules say.  Counters are named objects, so rewriting chains never
resets them.

The ownership marker is a named counter, not the table's comment: nftables
1.0.6 (Debian 12) neither reads nor prints table comments in JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from portunus.dataplane.kernel._eligibility import (
    check_eligible,
    listen_addresses_for,
    target_address,
)
from portunus.model import PortRange, Protocol, Rule

__all__ = [
    "BASE_CHAINS",
    "COUNTERS",
    "DEFAULT_TABLE",
    "FAMILY",
    "OWNER_COUNTER",
    "OWNER_PREFIX",
    "Command",
    "KernelRule",
    "Ruleset",
    "owner_marker",
    "rule_id_of",
]

Command = dict[str, Any]
Expr = dict[str, Any]

DEFAULT_TABLE = "portunus"
FAMILY = "inet"
OWNER_COUNTER = "portunus_owner"
OWNER_PREFIX = "portunus-owner"
#: Base chains: name -> (type, hook, priority).
BASE_CHAINS: dict[str, tuple[str, str, int]] = {
    "prerouting": ("nat", "prerouting", -100),
    "postrouting": ("nat", "postrouting", 100),
    "forward": ("filter", "forward", 0),
}
#: The counters every rule has, by suffix.
COUNTERS = ("in", "out", "conns", "rejects")
#: nftables keeps comments to 128 bytes.
_COMMENT_MAX = 128
_RULE_OBJECT = re.compile(r"^r(\d+)(?:_(in|out|conns|rejects|quota))?$")
_FAMILY = {
    4: {"nfproto": "ipv4", "nat": "ip", "payload": "ip", "ct": "ip"},
    6: {"nfproto": "ipv6", "nat": "ip6", "payload": "ip6", "ct": "ip6"},
}


def owner_marker(instance: str, pid: int) -> str:
    """The comment of the table's ownership counter."""
    return f"{OWNER_PREFIX} instance={instance} pid={pid}"


def rule_id_of(name: str) -> int | None:
    """The rule id of a per-rule chain or object name (C{r<ID>[_suffix]}), else None."""
    found = _RULE_OBJECT.match(name)
    return int(found.group(1)) if found else None


def _comment(text: str) -> str:
    """Printable, quote-free, at most 128 bytes: nft's text listing stays readable."""
    clean = "".join(c if c.isprintable() and c not in '"\\' else "_" for c in text)
    return clean.encode("utf-8")[:_COMMENT_MAX].decode("utf-8", "ignore")


# -- expressions ----------------------------------------------------------------


def _match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _ports(ports: PortRange) -> Any:
    return ports.start if len(ports) == 1 else {"range": [ports.start, ports.end]}


def _addresses(addresses: Sequence[str]) -> Any:
    return addresses[0] if len(addresses) == 1 else {"set": list(addresses)}


def _ct(key: str, direction: str | None = None) -> Expr:
    ct: dict[str, str] = {"key": key}
    if direction is not None:
        ct["dir"] = direction
    return {"ct": ct}


_CT_NEW = _match(_ct("state"), "new", op="in")


@attrs.frozen
class KernelRule:
    """
    One plain rule as the kernel forwards it.

    @ivar quota_bytes: optional budget of bytes (both directions together)
        after which the rule's packets are dropped; kept in a C{quota}
        object whose use L{Ruleset} reads back.
    """

    rule: Rule
    quota_bytes: int | None = None

    def __attrs_post_init__(self) -> None:
        why = check_eligible(self.rule)
        if why is not None:
            raise ValueError(why.message)
        if self.quota_bytes is not None and self.quota_bytes < 1:
            raise ValueError(f"quota_bytes must be at least 1, got {self.quota_bytes}")

    @property
    def id(self) -> int:
        return self.rule.id

    @property
    def chain(self) -> str:
        return f"r{self.rule.id}"

    def counter(self, suffix: str) -> str:
        return f"r{self.rule.id}_{suffix}"

    @property
    def quota(self) -> str:
        return f"r{self.rule.id}_quota"

    @property
    def l4(self) -> str:
        return self.rule.protocol.value

    @property
    def version(self) -> int:
        address = target_address(self.rule)
        assert address is not None  # eligible rules have an IP target
        return address.version

    @property
    def target(self) -> str:
        return str(target_address(self.rule))

    @property
    def target_ports(self) -> PortRange:
        return self.rule.targets[0].ports

    @property
    def listen_addresses(self) -> tuple[str, ...] | None:
        """None for every local address of the target's family."""
        return listen_addresses_for(self.rule, self.version)

    def comment(self) -> str:
        return _comment(f"portunus rule {self.rule.id} {self.rule.name}")

    # -- the expressions of its rules --------------------------------------

    def _family(self, key: str) -> str:
        return _FAMILY[self.version][key]

    def _dnat(self) -> Expr:
        dnat: dict[str, Any] = {"family": self._family("nat"), "addr": self.target}
        listen, target = self.rule.listen, self.target_ports
        if target != listen:
            if len(target) == 1:
                dnat["port"] = target.start
            else:
                pairs = [
                    [port, self.rule.target_port(self.rule.targets[0], port)] for port in listen
                ]
                key = {"payload": {"protocol": self.l4, "field": "dport"}}
                dnat["port"] = {"map": {"key": key, "data": {"set": pairs}}}
        return {"dnat": dnat}

    def prerouting(self) -> list[Expr]:
        """Arriving on a listen port of a local (or the listed) address: to the target."""
        expr = [
            _match({"meta": {"key": "nfproto"}}, self._family("nfproto")),
            _match({"payload": {"protocol": self.l4, "field": "dport"}}, _ports(self.rule.listen)),
        ]
        listen = self.listen_addresses
        if listen is None:
            expr.append(_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"))
        else:
            daddr = {"payload": {"protocol": self._family("payload"), "field": "daddr"}}
            expr.append(_match(daddr, _addresses(listen)))
        return [*expr, self._dnat()]

    def connection(self) -> list[Expr]:
        """This rule's translated connections, in either direction."""
        ct_family = self._family("ct")
        expr = [
            _match({"meta": {"key": "nfproto"}}, self._family("nfproto")),
            _match({"meta": {"key": "l4proto"}}, self.l4),
            _match(_ct("status"), "dnat", op="in"),
            _match(_ct("proto-dst", "original"), _ports(self.rule.listen)),
        ]
        listen = self.listen_addresses
        if listen is not None:
            expr.append(_match(_ct(f"{ct_family} daddr", "original"), _addresses(listen)))
        expr.append(_match(_ct(f"{ct_family} saddr", "reply"), self.target))
        expr.append(_match(_ct("proto-src", "reply"), _ports(self.target_ports)))
        return expr

    def _refused_if(self, *test: Expr) -> list[Expr]:
        """
        Count, then refuse what passes C{test}: with a TCP reset for TCP (the
        client learns at once; nftables rejects only what it knows is TCP),
        else by dropping the datagram.
        """
        if self.rule.protocol is Protocol.TCP:
            tcp = _match({"meta": {"key": "l4proto"}}, "tcp")
            refuse: list[Expr] = [{"reject": {"type": "tcp reset"}}]
            return [tcp, *test, {"counter": self.counter("rejects")}, *refuse]
        return [*test, {"counter": self.counter("rejects")}, {"drop": None}]

    def chain_rules(self) -> list[list[Expr]]:
        """The rule's own chain: limits first, then the counters of what passed."""
        rules: list[list[Expr]] = []
        limit = self.rule.rate_limit
        if limit is not None and limit.new_connections_per_sec is not None:
            rate = limit.new_connections_per_sec
            burst = limit.new_connections_burst or rate
            bucket = {"rate": rate, "burst": burst, "per": "second", "inv": True}
            rules.append(self._refused_if(_CT_NEW, {"limit": bucket}))
        cap = self.concurrency_cap()
        if cap is not None:
            rules.append(self._refused_if(_CT_NEW, {"ct count": {"val": cap, "inv": True}}))
        rules.append([_CT_NEW, {"counter": self.counter("conns")}])
        if limit is not None:
            bandwidths = (
                ("original", limit.bandwidth_in_bps, limit.bandwidth_in_burst),
                ("reply", limit.bandwidth_out_bps, limit.bandwidth_out_burst),
            )
            for direction, byte_rate, byte_burst in bandwidths:
                if byte_rate is None:
                    continue
                bucket = {
                    "rate": byte_rate,
                    "rate_unit": "bytes",
                    "burst": byte_burst or byte_rate,
                    "burst_unit": "bytes",
                    "per": "second",
                    "inv": True,
                }
                rules.append(
                    [_match(_ct("direction"), direction), {"limit": bucket}, {"drop": None}]
                )
        if self.quota_bytes is not None:
            rules.append([{"quota": self.quota}, {"drop": None}])
        rules.append([_match(_ct("direction"), "original"), {"counter": self.counter("in")}])
        rules.append([_match(_ct("direction"), "reply"), {"counter": self.counter("out")}])
        return rules

    def concurrency_cap(self) -> int | None:
        """
        The most connections (UDP: flows) open at once: the rule's
        C{concurrent_connections}, and for UDP also its C{udp_max_flows}.
        """
        caps = []
        if self.rule.rate_limit is not None and self.rule.rate_limit.concurrent_connections:
            caps.append(self.rule.rate_limit.concurrent_connections)
        if self.rule.protocol is Protocol.UDP:
            caps.append(self.rule.udp_max_flows)
        return min(caps) if caps else None


class Ruleset:
    """Builds the commands for one table; holds no state but its name."""

    def __init__(self, table: str = DEFAULT_TABLE) -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", table):
            raise ValueError(f"table name {table!r}: use a letter then up to 31 of A-Z a-z 0-9 _")
        self.table = table

    def _ref(self, **fields: Any) -> dict[str, Any]:
        return {"family": FAMILY, "table": self.table, **fields}

    def table_ref(self) -> dict[str, Any]:
        return {"family": FAMILY, "name": self.table}

    # -- whole table ---------------------------------------------------------

    def create(self, marker: str, rules: Iterable[KernelRule]) -> list[Command]:
        """A fresh table with its marker, base chains and every rule in C{rules}."""
        rules = list(rules)
        commands: list[Command] = [
            {"add": {"table": self.table_ref()}},
            {"add": {"counter": self._ref(name=OWNER_COUNTER, comment=_comment(marker))}},
        ]
        for name, (kind, hook, prio) in BASE_CHAINS.items():
            chain = self._ref(name=name, type=kind, hook=hook, prio=prio, policy="accept")
            commands.append({"add": {"chain": chain}})
        for rule in rules:
            commands += self.put_rule(rule, None)
        return commands + self.base_rules(rules)

    def delete(self) -> list[Command]:
        return [{"delete": {"table": self.table_ref()}}]

    def replace_table(self, marker: str, rules: Iterable[KernelRule]) -> list[Command]:
        """Delete the existing table and create it afresh, in one batch."""
        return self.delete() + self.create(marker, rules)

    # -- rules -----------------------------------------------------------------

    def base_rules(self, rules: Iterable[KernelRule]) -> list[Command]:
        """Flush the base chains and write every rule's entries in them."""
        return self.flush_base() + self.base_entries(rules)

    def flush_base(self) -> list[Command]:
        return [{"flush": {"chain": self._ref(name=name)}} for name in BASE_CHAINS]

    def base_entries(self, rules: Iterable[KernelRule]) -> list[Command]:
        """Every rule's entries in the (flushed) base chains, by rule id."""
        commands: list[Command] = []
        for rule in sorted(rules, key=lambda r: r.id):
            comment = rule.comment()
            connection = rule.connection()
            entries = (
                ("prerouting", rule.prerouting()),
                ("postrouting", [*connection, {"masquerade": None}]),
                ("forward", [*connection, {"jump": {"target": rule.chain}}]),
            )
            for chain, expr in entries:
                commands.append(
                    {"add": {"rule": self._ref(chain=chain, expr=expr, comment=comment)}}
                )
        return commands

    def put_rule(self, rule: KernelRule, old: KernelRule | None) -> list[Command]:
        """
        Create (C{old} None) or rewrite a rule's own chain and objects.
        Counters carry over a rewrite; the quota does too unless its size
        changed.  The base chains must be rewritten in the same batch.
        """
        chain = self._ref(name=rule.chain)
        commands: list[Command] = [
            {"add": {"chain": chain}},
            {"flush": {"chain": chain}},
        ]
        if old is not None and old.quota_bytes is not None and old.quota_bytes != rule.quota_bytes:
            commands.append({"delete": {"quota": self._ref(name=old.quota)}})
        for suffix in COUNTERS:
            commands.append({"add": {"counter": self._ref(name=rule.counter(suffix))}})
        if rule.quota_bytes is not None:
            quota = self._ref(name=rule.quota, bytes=rule.quota_bytes, inv=True)
            commands.append({"add": {"quota": quota}})
        for expr in rule.chain_rules():
            commands.append({"add": {"rule": self._ref(chain=rule.chain, expr=expr)}})
        return commands

    def drop_rule(self, rule_id: int, quota: bool) -> list[Command]:
        """
        Delete a rule's own chain and objects; the base chains must be
        rewritten without it earlier in the same batch.
        """
        counters = [f"r{rule_id}_{suffix}" for suffix in COUNTERS]
        quotas = [f"r{rule_id}_quota"] if quota else []
        return self.drop_names([f"r{rule_id}"], counters, quotas)

    def drop_names(
        self, chains: Sequence[str], counters: Sequence[str], quotas: Sequence[str]
    ) -> list[Command]:
        """Delete these chains (flushed first: deleting needs them empty) and objects."""
        commands: list[Command] = []
        for name in chains:
            chain = self._ref(name=name)
            commands += [{"flush": {"chain": chain}}, {"delete": {"chain": chain}}]
        for kind, names in (("counter", counters), ("quota", quotas)):
            commands += [{"delete": {kind: self._ref(name=name)}} for name in names]
        return commands

    # -- reading back ------------------------------------------------------------

    def list_objects(self) -> list[Command]:
        """The commands that list this table's counters and quotas."""
        table = {"family": FAMILY, "table": self.table}
        return [{"list": {"counters": table}}, {"list": {"quotas": table}}]
