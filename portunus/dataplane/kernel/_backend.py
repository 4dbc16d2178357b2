"""
The kernel forwarder: plain rules programmed into our nftables table.

Its life, as the service that owns it drives it::

    kernel = KernelForwarder(reactor, NftRunner(reactor), probe_host())
    yield kernel.start()            # reconcile: a stale table of ours is replaced
    yield kernel.install(rule)      # one atomic batch per change
    yield kernel.replace(new_rule)
    counters = yield kernel.read_counters()
    yield kernel.reconcile()        # on reload: repair what drifted
    yield kernel.remove(rule.id)
    yield kernel.close()            # on SIGTERM: the table goes

Every change is one nftables transaction, so a refused change leaves the
kernel as it was, and this object's view moves only when the kernel's did.
Changes run one at a time, in the order they were asked for.

Removal stops new connections at once.  Connections already translated
keep flowing until they end: their translation lives in the kernel's
connection tracking, not in our rules.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks, succeed
from twisted.logger import Logger

from portunus.dataplane.kernel._conntrack import ConntrackReader, Flow, active_counts
from portunus.dataplane.kernel._eligibility import refuse_unless_eligible
from portunus.dataplane.kernel._probe import UNAVAILABLE_REASONS, Availability
from portunus.dataplane.kernel._ruleset import (
    COUNTERS,
    DEFAULT_TABLE,
    FAMILY,
    OWNER_COUNTER,
    OWNER_PREFIX,
    KernelRule,
    Ruleset,
    owner_marker,
    rule_id_of,
)
from portunus.dataplane.kernel._runner import INftRunner, NftError
from portunus.dataplane.stats import RuleStats
from portunus.errors import PortunusError
from portunus.model import Protocol, Rule

__all__ = ["KernelCounters", "KernelForwarder", "Reconciled"]

log = Logger()
T = TypeVar("T")


@attrs.frozen
class KernelCounters:
    """
    A kernel-forwarded rule's counters, as nftables counts them.

    Bytes are whole IP packets (headers included), not the payload the
    relay counts; packets are IP packets, so for UDP they are datagrams.
    """

    bytes_in: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    packets_out: int = 0
    #: Connections (UDP: flows) admitted since the rule was installed.
    connections: int = 0
    #: Connections (UDP: first datagrams of flows) refused by a limit.
    rejects: int = 0
    #: Bytes counted against the rule's quota, None without one.
    quota_used: int | None = None
    #: Connections (UDP: flows) open now, from conntrack; None if not read.
    active: int | None = None

    def apply(self, stats: RuleStats, protocol: Protocol) -> RuleStats:
        """Copy the figures into C{stats}, the relay's counters for the same rule."""
        stats.bytes_in = self.bytes_in
        stats.bytes_out = self.bytes_out
        stats.total_connections = self.connections
        stats.rate_limit_rejects = self.rejects
        if protocol is Protocol.UDP:
            stats.datagrams_in = self.packets_in
            stats.datagrams_out = self.packets_out
            if self.active is not None:
                stats.active_flows = self.active
        elif self.active is not None:
            stats.active_connections = self.active
        return stats


@attrs.frozen
class Reconciled:
    """What a reconciliation changed: rule ids whose objects it removed or restored."""

    removed: tuple[int, ...] = ()
    restored: tuple[int, ...] = ()
    #: The table was missing (or stale, at start) and was created afresh.
    recreated: bool = False
    #: At start: the marker of the stale table that was replaced, if any.
    replaced_marker: str | None = None


def _failed(e: NftError, **fields: object) -> PortunusError:
    return PortunusError(
        "kernel_mode_unavailable",
        f"nft refused the change: {e.message}; {UNAVAILABLE_REASONS['nft_failed']}",
        reason="nft_failed",
        **fields,
    )


class KernelForwarder:
    """
    Installs, replaces, removes and reports on kernel-forwarded rules.

    @param runner: applies nftables batches (L{NftRunner} in production).
    @param availability: the prerequisites as probed where the rules are
        programmed (L{probe_host} for this process's own namespace).
    @param table: the name of our table in family C{inet}; one forwarder per
        name and network namespace.
    @param instance: this forwarder's id in the ownership marker (random
        by default).
    @param conntrack: reads open connections for L{read_counters}; without
        one (or when it fails) L{KernelCounters.active} stays None.
    """

    def __init__(
        self,
        runner: INftRunner,
        availability: Availability,
        table: str = DEFAULT_TABLE,
        instance: str | None = None,
        pid: int | None = None,
        conntrack: ConntrackReader | None = None,
    ) -> None:
        self._runner = runner
        self._conntrack = conntrack
        self._conntrack_failed = False
        self.availability = availability
        self.ruleset = Ruleset(table)
        self.marker = owner_marker(instance or secrets.token_hex(8), pid or os.getpid())
        self._rules: dict[int, KernelRule] = {}
        #: Rule ids installed, or whose install is under way: what
        #: L{install} refuses twice and L{remove} and L{replace} accept.
        self._claimed: set[int] = set()
        self._lock = DeferredLock()
        self._started = False
        #: The counters of the last L{read_counters}, by rule id.
        self.counters: dict[int, KernelCounters] = {}

    @property
    def table(self) -> str:
        return self.ruleset.table

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(k.rule for k in self._rules.values())

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._rules

    def _serially(self, work: Callable[[], Deferred[T]]) -> Deferred[T]:
        return self._lock.run(work)

    def _apply(self, commands: Sequence[dict[str, Any]], **fields: object) -> Deferred[Any]:
        def refused(failure: Any) -> Any:
            failure.trap(NftError)
            raise _failed(failure.value, **fields)

        return self._runner.run(commands).addErrback(refused)

    # -- start and stop ----------------------------------------------------------

    def start(self) -> Deferred[Reconciled]:
        """
        Take our table over: a table of this name left by an earlier
        instance (killed before it could remove it) is deleted and the
        table created afresh, with the rules installed so far, in one batch.

        @raise PortunusError: C{kernel_mode_unavailable} when the
            capability or nft is missing (reason C{no_cap_net_admin},
            C{nft_missing}); a failing Deferred with C{table_not_owned} when a
            table of that name lacks our marker (it is left alone), or
            C{nft_failed}.
        """
        self.availability.refuse_unless_available(None)
        return self._serially(self._start)

    @inlineCallbacks
    def _start(self) -> Any:
        previous = yield self._owned_marker()
        rules = list(self._rules.values())
        if previous is None:
            commands = self.ruleset.create(self.marker, rules)
        else:
            commands = self.ruleset.replace_table(self.marker, rules)
        yield self._apply(commands)
        self._started = True
        if previous is not None:
            log.info(
                "kernel table {table}: removed the stale table of an earlier instance ({previous})",
                event="kernel.stale_table_removed",
                table=self.table,
                previous=previous,
            )
        log.info(
            "kernel table inet {table} created ({marker})",
            event="kernel.table_created",
            table=self.table,
            marker=self.marker,
        )
        return Reconciled(recreated=True, replaced_marker=previous)

    def _table_exists(self) -> Deferred[bool]:
        """Is there a table of our name (ours or not)?  Other tables are only listed."""

        def find(tables: list[dict[str, Any]]) -> bool:
            ours = {"family": FAMILY, "name": self.table}
            return any({k: t.get("table", {}).get(k) for k in ours} == ours for t in tables)

        return self._apply([{"list": {"tables": None}}]).addCallback(find)

    @inlineCallbacks
    def _owned_marker(self) -> Any:
        """
        The marker of the existing table of our name, None if there is no
        such table; fails with C{table_not_owned} if it is not ours.
        """
        exists = yield self._table_exists()
        if not exists:
            return None
        objects = yield self._apply(self.ruleset.list_objects())
        for counter in _objects(objects, "counter", self.table):
            if counter.get("name") == OWNER_COUNTER:
                comment = str(counter.get("comment", ""))
                if comment.startswith(OWNER_PREFIX):
                    return comment
        raise PortunusError(
            "kernel_mode_unavailable",
            f"table {FAMILY} {self.table} exists but has no {OWNER_COUNTER} counter, so "
            f"it is not ours; {UNAVAILABLE_REASONS['table_not_owned']}",
            reason="table_not_owned",
            table=self.table,
        )

    def close(self) -> Deferred[None]:
        """
        Delete our table (every rule at once); nothing to do if never
        started, or if the table is gone already.
        """
        return self._serially(self._close)

    @inlineCallbacks
    def _close(self) -> Any:
        if not self._started:
            return
        self._started = False
        self._rules.clear()
        self._claimed.clear()
        exists = yield self._table_exists()
        if exists:
            yield self._apply(self.ruleset.delete())
        log.info(
            "kernel table inet {table} removed", event="kernel.table_removed", table=self.table
        )

    # -- rules ---------------------------------------------------------------------

    def _check(self, rule: Rule, quota_bytes: int | None) -> KernelRule:
        if not self._started:
            raise RuntimeError("start() the kernel forwarder first")
        refuse_unless_eligible(rule)
        kernel = KernelRule(rule, quota_bytes)
        self.availability.refuse_unless_available(kernel.version, rule=rule.name)
        return kernel

    def install(self, rule: Rule, quota_bytes: int | None = None) -> Deferred[None]:
        """
        Program C{rule}.

        @raise PortunusError: before anything is tried: C{rule_exists},
            C{kernel_mode_unsupported} (with the reason the rule needs the
            relay), C{kernel_mode_unavailable} (forwarding off for the
            target's family).  The Deferred fails with
            C{kernel_mode_unavailable} (C{nft_failed}) if nft refused.
        """
        if rule.id in self._claimed:
            raise PortunusError(
                "rule_exists", f"rule {rule.name!r} is already installed", rule=rule.name
            )
        kernel = self._check(rule, quota_bytes)
        self._claimed.add(rule.id)

        def unclaim(failure: Any) -> Any:
            if rule.id not in self._rules:
                self._claimed.discard(rule.id)
            return failure

        return self._serially(lambda: self._put(kernel, None)).addErrback(unclaim)

    def replace(self, rule: Rule, quota_bytes: int | None = None) -> Deferred[None]:
        """
        Replace the installed rule with C{rule}'s id by C{rule}, in one
        batch: its counters carry over; its limits start afresh.

        @raise PortunusError: as L{install}, and C{rule_not_found}.
        """
        if rule.id not in self._claimed:
            raise PortunusError("rule_not_found", f"no rule with id {rule.id} is installed")
        kernel = self._check(rule, quota_bytes)

        def work() -> Deferred[None]:
            if rule.id not in self._claimed:  # removed while this waited its turn
                return succeed(None)
            return self._put(kernel, self._rules.get(rule.id))

        return self._serially(work)

    def _put(self, kernel: KernelRule, old: KernelRule | None) -> Deferred[None]:
        wanted = {**self._rules, kernel.id: kernel}
        commands = self.ruleset.put_rule(kernel, old) + self.ruleset.base_rules(wanted.values())

        def applied(_: object) -> None:
            self._rules[kernel.id] = kernel  # a removal queued behind this undoes it

        return self._apply(commands, rule=kernel.rule.name).addCallback(applied)

    def remove(self, rule_id: int) -> Deferred[None]:
        """
        Stop forwarding new connections of rule C{rule_id} and delete its
        chain and counters.

        @raise PortunusError: C{rule_not_found}.
        """
        if rule_id not in self._claimed:
            raise PortunusError("rule_not_found", f"no rule with id {rule_id} is installed")
        self._claimed.discard(rule_id)

        def work() -> Deferred[None]:
            kernel = self._rules.get(rule_id)
            if kernel is None:  # its install failed while this waited its turn
                return succeed(None)
            rest = [k for k in self._rules.values() if k.id != rule_id]
            commands = self.ruleset.base_rules(rest) + self.ruleset.drop_rule(
                rule_id, quota=kernel.quota_bytes is not None
            )

            def applied(_: object) -> None:
                self._rules.pop(rule_id, None)
                self.counters.pop(rule_id, None)

            return self._apply(commands, rule=kernel.rule.name).addCallback(applied)

        return self._serially(work)

    # -- reconciling ---------------------------------------------------------------

    def reconcile(self) -> Deferred[Reconciled]:
        """
        Make the kernel's table say what this forwarder holds, in one batch:
        recreate the table if it went missing, delete the chains and objects
        of rules not installed here, restore those of installed rules that
        went missing, and rewrite the base chains.  Rules whose chain is
        intact keep their state (limits, connection lists).
        """
        if not self._started:
            raise RuntimeError("start() the kernel forwarder first")
        return self._serially(self._reconcile)

    @inlineCallbacks
    def _reconcile(self) -> Any:
        exists = yield self._table_exists()
        if not exists:
            yield self._apply(self.ruleset.create(self.marker, self._rules.values()))
            log.warn(
                "kernel table inet {table} was missing; created it again",
                event="kernel.table_recreated",
                table=self.table,
            )
            return Reconciled(restored=tuple(sorted(self._rules)), recreated=True)
        listing = yield self._apply([{"list": {"table": self.ruleset.table_ref()}}])
        present = _present(listing, self.table)
        if OWNER_COUNTER not in present.counters:
            raise PortunusError(
                "kernel_mode_unavailable",
                f"table {FAMILY} {self.table} lost its {OWNER_COUNTER} counter; "
                f"{UNAVAILABLE_REASONS['table_not_owned']}",
                reason="table_not_owned",
                table=self.table,
            )
        stale = sorted(present.rule_ids() - set(self._rules))
        missing = sorted(
            rule_id for rule_id, kernel in self._rules.items() if not present.complete(kernel)
        )
        commands = self.ruleset.flush_base()
        for rule_id in stale:
            commands += present.drop(self.ruleset, rule_id)
        for rule_id in missing:
            commands += self.ruleset.put_rule(self._rules[rule_id], None)
        commands += self.ruleset.base_entries(self._rules.values())
        yield self._apply(commands)
        if stale or missing:
            log.warn(
                "kernel table inet {table} reconciled: removed {removed}, restored {restored}",
                event="kernel.table_reconciled",
                table=self.table,
                removed=[str(r) for r in stale],
                restored=[str(r) for r in missing],
            )
        return Reconciled(removed=tuple(stale), restored=tuple(missing))

    # -- counters ----------------------------------------------------------------------

    def read_counters(self) -> Deferred[dict[int, KernelCounters]]:
        """
        Read every rule's counters (one nft run); also kept in L{counters}.
        Fails with C{kernel_mode_unavailable} (C{nft_failed}) if nft does.
        """

        def parse(objects: list[dict[str, Any]]) -> dict[int, KernelCounters]:
            self.counters = _counters(objects, self.table, self._rules)
            return self.counters

        def work() -> Deferred[dict[int, KernelCounters]]:
            if not self._started:
                return succeed({})
            read = self._apply(self.ruleset.list_objects()).addCallback(parse)
            if self._conntrack is not None and self._rules:
                read.addCallback(self._with_active, self._conntrack)
            return read

        return self._serially(work)

    def _with_active(
        self, counters: dict[int, KernelCounters], conntrack: ConntrackReader
    ) -> Deferred[dict[int, KernelCounters]]:
        rules = list(self._rules.values())

        def counted(flows: list[Flow]) -> dict[int, KernelCounters]:
            active = active_counts(flows, rules)
            self._conntrack_failed = False
            self.counters = {
                rule_id: attrs.evolve(c, active=active.get(rule_id))
                for rule_id, c in counters.items()
            }
            return self.counters

        def failed(failure: Any) -> dict[int, KernelCounters]:
            if not self._conntrack_failed:  # once per outage, not every reading
                self._conntrack_failed = True
                log.warn(
                    "kernel table {table}: cannot read open connections: {error}",
                    event="kernel.conntrack_failed",
                    table=self.table,
                    error=str(getattr(failure.value, "subFailure", failure).value),
                )
            return counters

        return conntrack.read({rule.version for rule in rules}).addCallbacks(counted, failed)


def _objects(listing: list[dict[str, Any]], kind: str, table: str) -> list[dict[str, Any]]:
    """The objects of C{kind} in C{table} (nft 1.0.6 lists every table's quotas)."""
    return [
        o[kind]
        for o in listing
        if kind in o and o[kind].get("table") == table and o[kind].get("family") == FAMILY
    ]


_SUFFIX_FIELDS = {
    "in": ("bytes_in", "packets_in"),
    "out": ("bytes_out", "packets_out"),
    "conns": (None, "connections"),
    "rejects": (None, "rejects"),
}


def _counters(
    listing: list[dict[str, Any]], table: str, rules: dict[int, KernelRule]
) -> dict[int, KernelCounters]:
    fields: dict[int, dict[str, Any]] = {rule_id: {} for rule_id in rules}
    for counter in _objects(listing, "counter", table):
        name = str(counter.get("name", ""))
        rule_id = rule_id_of(name)
        if rule_id not in fields:
            continue
        suffix = name.rpartition("_")[2]
        bytes_field, packets_field = _SUFFIX_FIELDS.get(suffix, (None, None))
        if bytes_field is not None:
            fields[rule_id][bytes_field] = int(counter.get("bytes", 0))
        if packets_field is not None:
            fields[rule_id][packets_field] = int(counter.get("packets", 0))
    for quota in _objects(listing, "quota", table):
        rule_id = rule_id_of(str(quota.get("name", "")))
        if rule_id in fields and rules[rule_id].quota_bytes is not None:
            fields[rule_id]["quota_used"] = int(quota.get("used", 0))
    return {rule_id: KernelCounters(**values) for rule_id, values in fields.items()}


@attrs.frozen
class _Present:
    """The per-rule chains and objects found in our table."""

    chains: frozenset[str]
    counters: frozenset[str]
    quotas: frozenset[str]

    def rule_ids(self) -> set[int]:
        ids = set()
        for name in self.chains | self.counters | self.quotas:
            rule_id = rule_id_of(name)
            if rule_id is not None:
                ids.add(rule_id)
        return ids

    def complete(self, kernel: KernelRule) -> bool:
        names = {kernel.counter(suffix) for suffix in COUNTERS}
        if kernel.quota_bytes is not None and kernel.quota not in self.quotas:
            return False
        return kernel.chain in self.chains and names <= self.counters

    def drop(self, ruleset: Ruleset, rule_id: int) -> list[dict[str, Any]]:
        """Delete whatever of rule C{rule_id}'s chain and objects is there."""

        def of_rule(names: frozenset[str]) -> list[str]:
            return sorted(n for n in names if rule_id_of(n) == rule_id)

        return ruleset.drop_names(
            of_rule(self.chains), of_rule(self.counters), of_rule(self.quotas)
        )


def _present(listing: list[dict[str, Any]], table: str) -> _Present:
    def names(kind: str) -> frozenset[str]:
        return frozenset(str(o.get("name", "")) for o in _objects(listing, kind, table))

    return _Present(chains=names("chain"), counters=names("counter"), quotas=names("quota"))
