"""
The edge's rule keeper: applies what the server pushes to a L{Forwarder}.

It outlives control connections.  Unlike Portunus, which tears every
listener down when the control stream drops, the agent keeps forwarding its
rules while the server is unreachable; on reconnect the server replays its
Active rules and L{EdgeAgent.replay_done} removes whatever the server no
longer has (server state wins).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from portunus.client.forwarding import EdgeForwarder
from portunus.control.commands import MAX_HELLO_ADDRESSES
from portunus.errors import PortunusError
from portunus.model import Rule
from portunus.rulejson import RuleDecodeError, rule_from_dict
from portunus.targetpolicy import find_local_target, find_self_target

__all__ = ["ACTIVATED", "FAILED", "REMOVED", "EdgeAgent"]

log = Logger()

ACTIVATED = "activated"
FAILED = "failed"
REMOVED = "removed"


def failure_reason(rule: Rule, error: PortunusError) -> str:
    """C{port_in_use}, or C{port_in_use:<port>} for a port of a range (Portunus)."""
    port = error.fields.get("port")
    if port is not None and len(rule.listen) > 1:
        return f"{error.code}:{port}"
    return error.code


class EdgeAgent:
    """Installs, replaces and removes pushed rules; reports their counters."""

    def __init__(
        self,
        forwarder: EdgeForwarder,
        drain_timeout: float = 30.0,
        local: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        """
        @param local: this host's interface addresses now: a pushed rule
            whose target reaches its own listener through one is refused,
            as is a local target a rule may not reach.
        """
        self.forwarder = forwarder
        self.drain_timeout = drain_timeout
        self._local = local
        self._rules: dict[int, Rule] = {}
        self._pushed_this_session: set[int] = set()

    @property
    def rules(self) -> dict[int, Rule]:
        return dict(self._rules)

    def hello_addresses(self) -> list[str]:
        """The addresses Hello reports, sorted, at most what the server keeps."""
        return sorted(self._local())[:MAX_HELLO_ADDRESSES]

    def begin_session(self) -> None:
        """A new control session: start tracking what the server replays."""
        self._pushed_this_session = set()

    def push(self, rule_data: Any) -> tuple[str, str | None]:
        """Apply one pushed rule; the outcome is what the bind really did."""
        try:
            rule = rule_from_dict(rule_data)
        except RuleDecodeError as e:
            log.error(
                "server pushed a rule this client cannot read: {detail}",
                event="rule.decode_failed",
                detail=str(e),
            )
            return FAILED, "rule_unreadable"
        self._pushed_this_session.add(rule.id)
        own = self._local()
        refusal = find_self_target(rule, own)
        if refusal is None and not rule.allow_local_targets:
            refusal = find_local_target(rule, own)
        if refusal is not None:
            log.error(
                "rule {rule_id} refused: {detail}",
                event="rule.failed",
                rule_id=str(rule.id),
                rule=rule.name,
                reason=refusal.code,
                detail=f"{refusal.field()}: {refusal.message}",
            )
            return FAILED, refusal.code
        current = self._rules.get(rule.id)
        if current == rule:
            return ACTIVATED, None
        inherited = None
        if current is not None:
            # A changed rule: the old one stops accepting and drains, and
            # the new one listens on the same sockets where their ports
            # match, so those ports never close.
            inherited = self.forwarder.inherit(rule.id)
            self._remove(rule.id, "replaced")
        try:
            bound = self.forwarder.bind(rule, inherited)
            # Activation can refuse too: an SNI pattern that clashes with a
            # rule already routed on the same port (conflict.sni_route_duplicate).
            self.forwarder.activate(bound)
        except PortunusError as e:
            reason = failure_reason(rule, e)
            log.error(
                "rule {rule_id} failed to activate: {reason}",
                event="rule.failed",
                rule_id=str(rule.id),
                rule=rule.name,
                reason=reason,
                detail=e.message,
            )
            return FAILED, reason
        self._rules[rule.id] = rule
        return ACTIVATED, None

    def remove(self, rule_id: int) -> str:
        """Stop accepting for C{rule_id} now; in-flight connections drain."""
        self._pushed_this_session.discard(rule_id)
        if rule_id in self._rules:
            self._remove(rule_id, "removed")
        return REMOVED

    def replay_done(self) -> list[int]:
        """Remove every rule the server did not replay; return their ids."""
        stale = sorted(set(self._rules) - self._pushed_this_session)
        for rule_id in stale:
            self._remove(rule_id, "not_on_server")
        return stale

    def stop_all(self, reason: str) -> None:
        """Stop forwarding everything (the server revoked this client)."""
        for rule_id in list(self._rules):
            self._remove(rule_id, reason)

    def _remove(self, rule_id: int, reason: str) -> None:
        rule = self._rules.pop(rule_id)
        log.info(
            "rule {rule_id} removed ({reason}); draining its connections",
            event="rule.removing",
            rule_id=str(rule_id),
            rule=rule.name,
            reason=reason,
        )
        # The Forwarder logs rule.removed with how many connections the
        # drain deadline cut.
        d = self.forwarder.remove(rule_id, self.drain_timeout)
        d.addErrback(lambda f: log.failure("draining rule {rule_id}", f, rule_id=rule_id))

    def stats_entries(self) -> list[dict[str, Any]]:
        """
        One JSON-ready entry per rule: cumulative counters, per port (rules
        on several ports) and per target (rules with several targets).
        """
        entries = []
        for rule_id, stats in self.forwarder.stats().items():
            if rule_id not in self._rules:
                continue
            listen = self._rules[rule_id].listen
            if len(listen) > 1:
                for port in listen:  # every port reported, traffic or not
                    stats.for_port(port)
            entry: dict[str, Any] = {"rule_id": rule_id}
            entry.update(stats.snapshot(per_port=len(listen) > 1))
            targets = self.forwarder.target_states(rule_id)
            if targets is not None:
                entry["per_target"] = targets
            entries.append(entry)
        return entries

    def stop(self) -> Deferred[Any]:
        """Drain everything (the client process is stopping)."""
        self._rules.clear()
        return self.forwarder.stop(self.drain_timeout)
