"""
An in-memory L{IControlPlane} for testing the operator surfaces.

It keeps clients and rules in dicts, answers at once (its coroutines
never wait), records every call, and can be told to fail the next call of a
method with any exception (a L{PortunusError} to test the envelope, any
other to test the 500 path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from zope.interface import implementer

from portunus.errors import PortunusError
from portunus.model import Rule
from portunus.server.plane import (
    ClientView,
    EnrollmentView,
    IControlPlane,
    RuleView,
    StatsCallback,
    StatsEntry,
)
from portunus.server.store import RuleRecord

PIN = "sha256:" + "ab" * 32


@implementer(IControlPlane)
class FakePlane:
    def __init__(self) -> None:
        self.clients: dict[str, ClientView] = {}
        self.rules: dict[int, RuleView] = {}
        self.stats: dict[int, StatsEntry] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.failures: dict[str, BaseException] = {}
        #: Rule ids dropped by forget_rules (cascades).
        self.forgotten: list[int] = []
        #: rule id -> stats subscribers (see emit_stats).
        self.subscribers: dict[int, list[StatsCallback]] = {}
        self.advertised: str | None = None
        self._next_client = 1
        self._next_rule = 1
        self.now = 1_700_000_000.0

    # -- test helpers ------------------------------------------------------

    def add_client(self, name: str, state: str = "connected", **kw: Any) -> ClientView:
        client_id = f"01HCLIENT{self._next_client:017d}"
        self._next_client += 1
        view = ClientView(client_id=client_id, name=name, state=state, created_at=self.now, **kw)
        self.clients[client_id] = view
        return view

    def emit_stats(self, rule_id: int, **counters: Any) -> dict[str, Any]:
        """A stats report for C{rule_id}: cached, and told to its subscribers."""
        view = self._rule(rule_id)
        entry = {"rule_id": rule_id, "client_id": view.client_id, "updated_at": self.now}
        entry.update(counters)
        self.stats[rule_id] = entry
        for callback in list(self.subscribers.get(rule_id, [])):
            callback(dict(entry))
        return entry

    def _removed(self, rule_id: int) -> None:
        for callback in self.subscribers.pop(rule_id, []):
            callback(None)

    def fail_next(self, method: str, error: BaseException) -> None:
        self.failures[method] = error

    def _call(self, method: str, *args: Any) -> None:
        """Record the call; raise the failure C{fail_next} set for it, if any."""
        self.calls.append((method, args))
        error = self.failures.pop(method, None)
        if error is not None:
            raise error

    def _client(self, client_id: str) -> ClientView:
        try:
            return self.clients[client_id]
        except KeyError:
            raise PortunusError(
                "client_not_found", f"no client {client_id}", client_id=client_id
            ) from None

    def _rule(self, rule_id: int) -> RuleView:
        try:
            return self.rules[rule_id]
        except KeyError:
            raise PortunusError("rule_not_found", f"no rule {rule_id}", rule_id=rule_id) from None

    def _enrollment(self, view: ClientView, address: str | None, ttl: int) -> EnrollmentView:
        host = address or "control.example.net"
        return EnrollmentView(
            client_id=view.client_id,
            client_name=view.name,
            uri=f"portunus://{host}:7443/enroll?pin={PIN}&code=c0de{len(self.calls)}",
            expires_at=self.now + ttl,
        )

    # -- IControlPlane -------------------------------------------------------

    async def list_clients(self) -> list[ClientView]:
        self._call("list_clients")
        return sorted(self.clients.values(), key=lambda c: (c.name, c.client_id))

    async def get_client(self, client_id: str) -> ClientView:
        self._call("get_client", client_id)
        return self._client(client_id)

    async def enroll_client(self, name: str, address: str | None, ttl_secs: int) -> EnrollmentView:
        self._call("enroll_client", name, address, ttl_secs)
        view = self.add_client(name, state="disconnected")
        return self._enrollment(view, address, ttl_secs)

    async def reenroll_client(
        self, client_id: str, address: str | None, ttl_secs: int
    ) -> EnrollmentView:
        self._call("reenroll_client", client_id, address, ttl_secs)
        return self._enrollment(self._client(client_id), address, ttl_secs)

    async def rename_client(self, client_id: str, name: str) -> ClientView:
        self._call("rename_client", client_id, name)
        view = attrs.evolve(self._client(client_id), name=name)
        self.clients[client_id] = view
        return view

    async def revoke_client(self, client_id: str) -> ClientView:
        self._call("revoke_client", client_id)
        view = attrs.evolve(self._client(client_id), state="revoked", revoked_at=self.now)
        self.clients[client_id] = view
        return view

    async def delete_client(self, client_id: str) -> None:
        self._call("delete_client", client_id)
        view = self._client(client_id)
        if view.state != "revoked":
            raise PortunusError("client_not_revoked", "revoke it first")
        del self.clients[client_id]

    async def push_rule(
        self,
        client_id: str,
        rule: Rule,
        ack_timeout: float,
        owner_user_id: str | None = None,
        grant_id: str | None = None,
        allow_local_targets: bool = True,
    ) -> RuleView:
        self._call("push_rule", client_id, rule, ack_timeout)
        client = self._client(client_id)
        rule = attrs.evolve(rule, id=self._next_rule, allow_local_targets=allow_local_targets)
        self._next_rule += 1
        view = RuleView(
            rule=rule,
            client_id=client_id,
            client_name=client.name,
            state="active",
            created_at=self.now,
            updated_at=self.now,
            owner_user_id=owner_user_id,
            grant_id=grant_id,
        )
        self.rules[rule.id] = view
        return view

    async def list_rules(
        self, client_id: str | None, owner_user_id: str | None = None
    ) -> list[RuleView]:
        self._call("list_rules", client_id)
        return [
            view
            for _, view in sorted(self.rules.items())
            if (client_id is None or view.client_id == client_id)
            and (owner_user_id is None or view.owner_user_id == owner_user_id)
        ]

    async def forget_rules(self, records: Sequence[RuleRecord]) -> None:
        for record in records:
            self.rules.pop(record.rule_id, None)
            self.forgotten.append(record.rule_id)
            self._removed(record.rule_id)

    async def get_rule(self, rule_id: int) -> RuleView:
        self._call("get_rule", rule_id)
        return self._rule(rule_id)

    async def remove_rule(self, rule_id: int) -> None:
        self._call("remove_rule", rule_id)
        self._rule(rule_id)
        del self.rules[rule_id]
        self._removed(rule_id)

    async def rule_stats(self, rule_id: int) -> StatsEntry:
        self._call("rule_stats", rule_id)
        view = self._rule(rule_id)
        default: StatsEntry = {
            "rule_id": rule_id,
            "client_id": view.client_id,
            "bytes_in": 0,
            "bytes_out": 0,
            "active_connections": 0,
            "dns_failures": 0,
            "target_failovers_total": 0,
            "per_port": [],
            "per_target": [],
            "updated_at": None,
        }
        # As the real plane: the rule's client and updated_at, whatever the cache holds.
        stored = self.stats.get(rule_id, default)
        return {"updated_at": None, **stored, "client_id": view.client_id}

    def subscribe_stats(self, rule_id: int, callback: StatsCallback) -> Callable[[], None]:
        self.subscribers.setdefault(rule_id, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self.subscribers.get(rule_id, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self.subscribers.pop(rule_id, None)

        return unsubscribe

    def advertised_override(self) -> str | None:
        return self.advertised

    async def set_advertised_override(self, endpoint: str | None) -> None:
        self._call("set_advertised_override", endpoint)
        self.advertised = endpoint
