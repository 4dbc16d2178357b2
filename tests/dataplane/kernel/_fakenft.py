"""
An in-memory nftables for the kernel backend's unit tests.

It keeps tables of chains (with their rules), counters and quotas, applies
a batch of JSON commands all or nothing as nft does, refuses what the
kernel refuses (deleting what is missing, a chain that still has rules or
is jumped to, an object a rule still names) and answers C{list} commands
with the JSON objects nft prints.  Enough of nft to pin what the backend
asks for and how it reads the answers, deterministically.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from portunus.dataplane.kernel import NftError

Key = tuple[str, str]  # (family, table)


@attrs.define
class _Table:
    chains: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    rules: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict)
    counters: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    quotas: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def objects(self, kind: str) -> dict[str, dict[str, Any]]:
        return {"counter": self.counters, "quota": self.quotas}[kind]


def _names(value: Any, key: str) -> list[str]:
    """Every value of C{key} anywhere inside C{value} (counter/quota/jump names)."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key and isinstance(v, str):
                found.append(v)
            elif k == "jump" and key == "jump" and isinstance(v, dict):
                found.append(v["target"])
            else:
                found += _names(v, key)
    elif isinstance(value, list):
        for item in value:
            found += _names(item, key)
    return found


class FakeNft:
    """L{INftRunner} over an in-memory ruleset."""

    def __init__(self) -> None:
        self.tables: dict[Key, _Table] = {}
        #: Every batch run, in order, as the JSON text nft would read.
        self.batches: list[list[dict[str, Any]]] = []
        #: Set to make the next batch fail with this message.
        self.refuse_next: str | None = None
        #: Unanswered runs, when C{hold} is set.
        self.held: list[tuple[Deferred[list[dict[str, Any]]], list[dict[str, Any]]]] = []
        self.hold = False

    # -- INftRunner ----------------------------------------------------------------

    def run(self, commands: Sequence[dict[str, Any]]) -> Deferred[list[dict[str, Any]]]:
        batch = json.loads(json.dumps(list(commands)))  # what crosses the pipe
        self.batches.append(batch)
        if self.hold:
            d: Deferred[list[dict[str, Any]]] = Deferred()
            self.held.append((d, batch))
            return d
        return self._answer(batch)

    def release(self) -> None:
        """Answer the held runs, in order."""
        held, self.held = self.held, []
        for d, batch in held:
            self._answer(batch).chainDeferred(d)

    def _answer(self, batch: list[dict[str, Any]]) -> Deferred[list[dict[str, Any]]]:
        if self.refuse_next is not None:
            message, self.refuse_next = self.refuse_next, None
            return fail(NftError(message))
        saved = copy.deepcopy(self.tables)
        output: list[dict[str, Any]] = []
        try:
            for command in batch:
                ((verb, body),) = command.items()
                output += getattr(self, f"_{verb}")(body)
        except NftError as e:
            self.tables = saved
            return fail(e)
        return succeed(output)

    # -- helpers for tests ----------------------------------------------------------

    def table(self, name: str = "portunus", family: str = "inet") -> _Table:
        return self.tables[(family, name)]

    def count(self, counter: str, packets: int, size: int, table: str = "portunus") -> None:
        """Traffic: add to a counter as the kernel would."""
        c = self.table(table).counters[counter]
        c["packets"] += packets
        c["bytes"] += size

    def rules_of(self, chain: str, table: str = "portunus") -> list[list[dict[str, Any]]]:
        return [r["expr"] for r in self.table(table).rules[chain]]

    # -- verbs -----------------------------------------------------------------------------

    def _get(self, body: dict[str, Any]) -> _Table:
        key = (body["family"], body.get("table", body.get("name")))
        if key not in self.tables:
            raise NftError(f"Error: No such file or directory; table {key[0]} {key[1]}")
        return self.tables[key]

    def _add(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ((kind, spec),) = body.items()
        if kind == "table":
            self.tables.setdefault((spec["family"], spec["name"]), _Table())
            return []
        table = self._get(spec)
        if kind == "chain":
            if spec["name"] not in table.chains:
                table.chains[spec["name"]] = dict(spec)
                table.rules[spec["name"]] = []
        elif kind == "rule":
            if spec["chain"] not in table.chains:
                raise NftError(f"Error: No such file or directory; chain {spec['chain']}")
            for name in _names(spec["expr"], "counter"):
                if name not in table.counters:
                    raise NftError(f"Error: Could not process rule: counter {name}")
            for name in _names(spec["expr"], "quota"):
                if name not in table.quotas:
                    raise NftError(f"Error: Could not process rule: quota {name}")
            for name in _names(spec["expr"], "jump"):
                if name not in table.chains:
                    raise NftError(f"Error: Could not process rule: chain {name}")
            table.rules[spec["chain"]].append(dict(spec))
        elif kind == "counter":
            table.counters.setdefault(spec["name"], {**spec, "packets": 0, "bytes": 0})
        elif kind == "quota":
            table.quotas.setdefault(spec["name"], {**spec, "used": 0})
        else:
            raise NftError(f"fake nft: cannot add {kind}")
        return []

    def _flush(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ((kind, spec),) = body.items()
        table = self._get(spec)
        if kind != "chain" or spec["name"] not in table.chains:
            raise NftError(f"Error: No such file or directory; {kind} {spec.get('name')}")
        table.rules[spec["name"]] = []
        return []

    def _delete(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ((kind, spec),) = body.items()
        if kind == "table":
            self._get(spec)
            del self.tables[(spec["family"], spec["name"])]
            return []
        table = self._get(spec)
        name = spec["name"]
        every_rule = [r for rules in table.rules.values() for r in rules]
        if kind == "chain":
            if name not in table.chains:
                raise NftError(f"Error: No such file or directory; chain {name}")
            if table.rules[name] or any(name in _names(r, "jump") for r in every_rule):
                raise NftError(f"Error: Device or resource busy; chain {name}")
            del table.chains[name], table.rules[name]
        elif kind in ("counter", "quota"):
            objects = table.objects(kind)
            if name not in objects:
                raise NftError(f"Error: No such file or directory; {kind} {name}")
            if any(name in _names(r["expr"], kind) for r in every_rule):
                raise NftError(f"Error: Device or resource busy; {kind} {name}")
            del objects[name]
        else:
            raise NftError(f"fake nft: cannot delete {kind}")
        return []

    def _list(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ((kind, spec),) = body.items()
        if kind == "tables":
            return [{"table": {"family": f, "name": n, "handle": 1}} for f, n in self.tables]
        if kind in ("counters", "quotas"):
            # As nft 1.0.6 does for quotas: every table's, whatever the filter.
            singular = kind[:-1]
            return [
                {singular: {**o, "family": f, "table": n}}
                for (f, n), table in sorted(self.tables.items())
                for o in table.objects(singular).values()
                if kind == "quotas" or (f, n) == (spec["family"], spec["table"])
            ]
        if kind == "table":
            table = self._get(spec)
            family, name = spec["family"], spec["name"]
            out: list[dict[str, Any]] = [{"table": {"family": family, "name": name}}]
            out += [{"counter": dict(c)} for c in table.counters.values()]
            out += [{"quota": dict(q)} for q in table.quotas.values()]
            out += [{"chain": dict(c)} for c in table.chains.values()]
            out += [{"rule": dict(r)} for rules in table.rules.values() for r in rules]
            return out
        raise NftError(f"fake nft: cannot list {kind}")
