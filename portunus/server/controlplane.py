"""
The server's control plane: enrollment, client identity, the rule lifecycle
and the sessions that carry rules to clients.

It provides L{IControlPlane} to the operator surfaces and L{ISessionHost} to
the control connections.  A rule push follows Portunus (reference §3.4):

    validate -> client known -> connected? -> capability gate -> overlap
    -> persist Pending -> PushRule -> wait ack_timeout
       activated -> Active (answer)   failed -> Failed(reason) (activation_failed)
       no answer -> stays Pending (ack_timeout); a late answer still lands

On (re)connect: Welcome, then every Active rule replayed in id order, then
ReplayDone so the client drops what the server no longer has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portunus import __version__
from portunus.addresses import format_host_port
from portunus.conflicts import Claim, find_conflict
from portunus.control.commands import AuthFailed, EnrollmentRefused
from portunus.control.enrollment import (
    format_enroll_uri,
    hash_secret,
    new_secret,
    parse_endpoint,
)
from portunus.errors import PortunusError
from portunus.model import Protocol, Rule
from portunus.server.clientspec import (
    check_client_address,
    check_client_name,
    check_enrollment_ttl,
)
from portunus.server.metrics import RuleMetricsRow
from portunus.server.plane import (
    ClientView,
    EnrollmentView,
    IControlPlane,
    RuleView,
    StatsCallback,
    StatsEntry,
)
from portunus.server.sessions import (
    EnrollAnswer,
    ISessionHost,
    ServerSession,
    SessionRegistry,
    WelcomeValues,
)
from portunus.server.settings import parse_advertised_endpoint
from portunus.server.store import ClientRecord, RuleRecord, RuleState, Store
from portunus.targetpolicy import find_local_target, find_self_target

__all__ = ["ADVERTISED_ENDPOINT_SETTING", "ControlPlane", "PlaneSettings"]

#: The C{server_settings} key of the advertised endpoint set through the API.
ADVERTISED_ENDPOINT_SETTING = "advertised_endpoint"

log = Logger()

#: Feature a client must declare in Hello for a rule that uses it.
_GATES: tuple[tuple[str, Callable[[Rule], bool], str], ...] = (
    ("udp", lambda r: r.protocol is Protocol.UDP, "unsupported_protocol"),
    ("multi_target", lambda r: len(r.targets) > 1, "multi_target_unsupported_by_client"),
    ("sni", lambda r: r.sni_pattern is not None or r.sni_fallback, "sni_unsupported_by_client"),
    (
        "proxy_protocol",
        lambda r: any(t.proxy_protocol is not None for t in r.targets),
        "proxy_protocol_unsupported_by_client",
    ),
    ("rate_limit", lambda r: r.rate_limit is not None, "rate_limit_unsupported_by_client"),
    (
        "local_target_policy",
        lambda r: not r.allow_local_targets and any(not t.is_ip_literal for t in r.targets),
        "local_target_policy_unsupported_by_client",
    ),
)


@attrs.frozen
class PlaneSettings:
    """What the control plane needs from the server's configuration."""

    #: C{host:port} clients dial when an enrollment names no address.
    advertised_endpoint: str
    #: SHA-256 of the server certificate, lowercase hex.
    cert_fingerprint: str
    control_port: int
    udp_flow_idle_secs: int = 60
    udp_max_flows_per_rule: int = 1024
    range_rule_max_ports: int = 1024
    #: Default wait for a client's answer to a push (API callers may override).
    ack_timeout_secs: float = 2.0


def _is_sni(rule: Rule) -> bool:
    return rule.sni_pattern is not None or rule.sni_fallback


def refuse_overlaps(rule: Rule, others: Sequence[RuleRecord]) -> None:
    """
    Refuse C{rule} if it conflicts with one of C{others} (the client's
    rules of its protocol overlapping its ports), as L{portunus.conflicts}
    decides: C{port_in_use} or an SNI conflict code.  Rules on disjoint
    listen addresses, and distinct SNI routes on one port, coexist.
    """
    claim = Claim.of(rule)
    for other in others:
        conflict = find_conflict(claim, Claim.of(other.rule))
        if conflict is not None:
            raise PortunusError(
                conflict.code,
                conflict.message(f"rule {other.rule_id} ({other.state})"),
                port=conflict.port,
                rule_id=other.rule_id,
            )


def refuse_targets(rule: Rule, own: frozenset[str], allow_local_targets: bool) -> Rule:
    """
    The rule as it goes to the edge, once its targets pass what the server
    can judge (L{portunus.targetpolicy}) with the addresses the edge
    reported: never the rule's own listener, and no local target unless
    allowed.  A rule that may not reach local targets says so, so the edge
    refuses the local addresses a name resolves to as well.

    @raise PortunusError: C{validation.target_is_listener},
        C{local_target_not_granted}.
    """
    refusal = find_self_target(rule, own)
    if refusal is None and not allow_local_targets:
        refusal = find_local_target(rule, own)
    if refusal is not None:
        raise refusal.error()
    if not allow_local_targets:
        rule = attrs.evolve(rule, allow_local_targets=False)
    return rule


def _removal_unanswered(failure: Failure, rule_id: int) -> None:
    log.warn(
        "client did not confirm removal of rule {rule_id}: {why}",
        event="rule.remove_unanswered",
        rule_id=str(rule_id),
        why=failure.getErrorMessage(),
    )


@implementer(IControlPlane, ISessionHost)
class ControlPlane:
    """The one owner of clients, enrollments, rules and live sessions."""

    def __init__(self, store: Store, settings: PlaneSettings, clock: IReactorTime) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.sessions = SessionRegistry()
        #: rule id -> last stats entry from its client, with C{updated_at}.
        self._stats: dict[int, StatsEntry] = {}
        #: rule id -> client id, for the rules sent to a client this run:
        #: a client's stats are believed only for its own rules.
        self._owners: dict[int, str] = {}
        #: rule id -> record, for the rules in C{_owners}: the metrics' rows.
        self._live_rules: dict[int, RuleRecord] = {}
        #: Told the reason of every refused control connection (metrics).
        self.auth_failure_observer: Callable[[str], object] = lambda reason: None
        #: rule id -> who follows its stats (the API's live streams).
        self._stats_subscribers: dict[int, list[StatsCallback]] = {}
        #: C{host:port} set through the API; wins over the configured endpoint.
        self._advertised_override: str | None = None

    # -- clients ---------------------------------------------------------

    def _client_view(self, record: ClientRecord) -> ClientView:
        session = self.sessions.get(record.client_id)
        if record.revoked_at is not None:
            state = "revoked"
        elif session is not None:
            state = "connected"
        else:
            state = "disconnected"
        return ClientView(
            client_id=record.client_id,
            name=record.name,
            state=state,
            remote_addr=session.remote_addr if session else None,
            connected_at=session.connected_at if session else None,
            created_at=record.created_at,
            revoked_at=record.revoked_at,
            client_version=session.client_version if session else None,
            features=tuple(sorted(session.features)) if session else (),
        )

    async def list_clients(self) -> list[ClientView]:
        records = await self.store.list_clients()
        views = [self._client_view(r) for r in records]
        return sorted(views, key=lambda v: (v.name, v.client_id))

    async def get_client(self, client_id: str) -> ClientView:
        record = await self.store.get_client(client_id)
        return self._client_view(record)

    def _endpoint_for(self, address: str | None) -> str:
        if address is None:
            return self.advertised_endpoint
        return format_host_port(address, self.settings.control_port)

    async def _new_enrollment(
        self, record: ClientRecord, address: str | None, ttl_secs: int
    ) -> EnrollmentView:
        endpoint = self._endpoint_for(address)
        code = new_secret()
        now = self.clock.seconds()
        await self.store.create_enrollment(
            client_id=record.client_id,
            code_hash=hash_secret(code),
            issued_at=now,
            expires_at=now + ttl_secs,
            advertised_endpoint=endpoint,
            address=address,
        )
        host, port = parse_endpoint(endpoint)
        uri = format_enroll_uri(host, port, self.settings.cert_fingerprint, code)
        log.info(
            "enrollment code issued for client {client_name} ({client_id}), "
            "valid {ttl_secs}s, dialing {endpoint}",
            event="client.enrollment_issued",
            client_id=record.client_id,
            client_name=record.name,
            ttl_secs=ttl_secs,
            endpoint=endpoint,
        )
        return EnrollmentView(
            client_id=record.client_id,
            client_name=record.name,
            uri=uri,
            expires_at=now + ttl_secs,
        )

    async def enroll_client(self, name: str, address: str | None, ttl_secs: int) -> EnrollmentView:
        name = check_client_name(name)
        ttl_secs = check_enrollment_ttl(ttl_secs)
        address = check_client_address(address)
        record = await self.store.create_client(name, address, self.clock.seconds())
        return await self._new_enrollment(record, address, ttl_secs)

    async def reenroll_client(
        self, client_id: str, address: str | None, ttl_secs: int
    ) -> EnrollmentView:
        ttl_secs = check_enrollment_ttl(ttl_secs)
        address = check_client_address(address)
        record = await self.store.get_client(client_id)
        return await self._new_enrollment(record, address, ttl_secs)

    async def rename_client(self, client_id: str, name: str) -> ClientView:
        name = check_client_name(name)
        record = await self.store.rename_client(client_id, name)
        return self._client_view(record)

    async def revoke_client(self, client_id: str) -> ClientView:
        record = await self.store.revoke_client(client_id, self.clock.seconds())
        if self.sessions.disconnect(client_id, "token_revoked"):
            log.info(
                "client {client_id} revoked; its session was closed",
                event="client.revoked",
                client_id=client_id,
            )
        return self._client_view(record)

    async def delete_client(self, client_id: str) -> None:
        rules = await self.store.list_rules(client_id)
        await self.store.delete_client(client_id)
        for record in rules:
            self._stats.pop(record.rule_id, None)
            self._live_rules.pop(record.rule_id, None)
            self._stats_ended(record.rule_id)
        self.sessions.disconnect(client_id, "client_deleted")
        log.info("client {client_id} deleted", event="client.deleted", client_id=client_id)

    # -- rules -----------------------------------------------------------

    def _rule_view(self, record: RuleRecord) -> RuleView:
        return RuleView(
            rule=record.rule,
            client_id=record.client_id,
            client_name=record.client_name,
            state=str(record.state),
            state_reason=record.state_reason,
            created_at=record.created_at,
            updated_at=record.updated_at,
            owner_user_id=record.owner_user_id,
            grant_id=record.grant_id,
        )

    def _gate(self, session: ServerSession, rule: Rule) -> None:
        for feature, applies, code in _GATES:
            if applies(rule) and feature not in session.features:
                raise PortunusError(
                    code,
                    f"client {session.client_name} (version {session.client_version}) "
                    f"cannot apply this rule: it lacks '{feature}'; upgrade the client",
                    feature=feature,
                )

    def _fill_defaults(self, rule: Rule) -> Rule:
        if rule.protocol is Protocol.UDP:
            if rule.udp_flow_idle_secs == 60:
                rule = attrs.evolve(rule, udp_flow_idle_secs=self.settings.udp_flow_idle_secs)
            if rule.udp_max_flows == 1024:
                rule = attrs.evolve(rule, udp_max_flows=self.settings.udp_max_flows_per_rule)
        return rule

    async def push_rule(
        self,
        client_id: str,
        rule: Rule,
        ack_timeout: float,
        owner_user_id: str | None = None,
        grant_id: str | None = None,
        allow_local_targets: bool = True,
    ) -> RuleView:
        if len(rule.listen) > self.settings.range_rule_max_ports:
            raise PortunusError(
                "exceeds_cap",
                f"a rule may span at most {self.settings.range_rule_max_ports} ports "
                f"(range_rule_max_ports); this one spans {len(rule.listen)}",
                field="listen",
            )
        client = await self.store.get_client(client_id)
        if client.revoked_at is not None:
            raise PortunusError(
                "client_revoked",
                f"client {client.name} is revoked; enroll a new client to push rules",
                client_id=client_id,
            )
        session = self.sessions.get(client_id)
        if session is None:
            raise PortunusError(
                "client_not_connected",
                f"client {client.name} ({client_id}) is not connected; start "
                "portunus-client on the edge and retry",
                client_id=client_id,
            )
        rule = refuse_targets(rule, session.addresses, allow_local_targets)
        self._gate(session, rule)
        rule = self._fill_defaults(rule)
        record = await self.store.insert_rule(
            client_id,
            rule,
            self.clock.seconds(),
            check=lambda others: refuse_overlaps(rule, others),
            owner_user_id=owner_user_id,
            grant_id=grant_id,
        )
        log.info(
            "rule {rule_id} pushed to client {client_name}",
            event="rule.pushed",
            rule_id=str(record.rule_id),
            client_id=client_id,
            client_name=client.name,
        )
        self._owners[record.rule_id] = client_id
        self._live_rules[record.rule_id] = record
        outcome = await self._push_and_wait(session, record.rule, ack_timeout)
        if outcome is None:
            raise PortunusError(
                "ack_timeout",
                f"client {client.name} did not confirm rule {record.rule_id} within "
                f"{ack_timeout:g}s; it stays pending (list-rules shows when it lands)",
                rule_id=record.rule_id,
            )
        state, reason = outcome
        if state != "activated":
            raise PortunusError(
                "activation_failed",
                f"client {client.name} could not activate rule {record.rule_id}: {reason}; "
                "remove the rule, free the port or pick another, and push again",
                rule_id=record.rule_id,
                reason=reason,
            )
        updated = await self.store.get_rule(record.rule_id)
        return self._rule_view(updated)

    def _push_and_wait(
        self, session: ServerSession, rule: Rule, ack_timeout: float
    ) -> Deferred[tuple[str, str | None] | None]:
        """
        Push and record the outcome whenever it comes; fire with it, or
        with C{None} if C{ack_timeout} passes first.
        """
        waiter: Deferred[tuple[str, str | None] | None] = Deferred()
        pushed = session.push_rule(rule)
        pushed.addCallback(
            lambda outcome: Deferred.fromCoroutine(self._record_outcome(outcome, rule.id))
        )

        def answered(outcome: tuple[str, str | None]) -> tuple[str, str | None]:
            if not waiter.called:
                timer.cancel()
                waiter.callback(outcome)
            return outcome

        def lost(failure: Failure) -> None:
            log.warn(
                "rule {rule_id}: no answer from the client ({why})",
                event="rule.push_unanswered",
                rule_id=str(rule.id),
                why=failure.getErrorMessage(),
            )
            if not waiter.called:
                timer.cancel()
                waiter.callback(None)

        def timed_out() -> None:
            if not waiter.called:
                waiter.callback(None)

        timer = self.clock.callLater(ack_timeout, timed_out)
        pushed.addCallbacks(answered, lost)
        return waiter

    async def _record_outcome(
        self, outcome: tuple[str, str | None], rule_id: int
    ) -> tuple[str, str | None]:
        state, reason = outcome
        kind = "active" if state == "activated" else "failed"
        try:
            await self.store.set_rule_state(rule_id, kind, reason, self.clock.seconds())
        except PortunusError:
            pass  # removed meanwhile
        else:
            log.info(
                "rule {rule_id} is {kind}{why}",
                event="rule.state_changed",
                rule_id=str(rule_id),
                kind=kind,
                reason=reason,
                why=f" ({reason})" if reason else "",
            )
        return outcome

    async def list_rules(
        self, client_id: str | None, owner_user_id: str | None = None
    ) -> list[RuleView]:
        if client_id is not None:
            await self.store.get_client(client_id)
        records = await self.store.list_rules(client_id, owner_user_id)
        return [self._rule_view(r) for r in records]

    async def get_rule(self, rule_id: int) -> RuleView:
        record = await self.store.get_rule(rule_id)
        return self._rule_view(record)

    async def remove_rule(self, rule_id: int) -> None:
        record = await self.store.delete_rule(rule_id)
        await self.forget_rules([record])

    async def forget_rules(self, records: Sequence[RuleRecord]) -> None:
        for record in records:
            rule_id = record.rule_id
            self._stats.pop(rule_id, None)
            self._owners.pop(rule_id, None)
            self._live_rules.pop(rule_id, None)
            self._stats_ended(rule_id)
            log.info("rule {rule_id} removed", event="rule.removed", rule_id=str(rule_id))
            session = self.sessions.get(record.client_id)
            if session is not None:
                session.remove_rule(rule_id).addErrback(_removal_unanswered, rule_id)

    async def rule_stats(self, rule_id: int) -> StatsEntry:
        record = await self.store.get_rule(rule_id)
        entry = self._stats.get(rule_id)
        if entry is None:
            return {"rule_id": rule_id, "client_id": record.client_id, "updated_at": None}
        return dict(entry, client_id=record.client_id)

    # -- sessions --------------------------------------------------------

    async def redeem_enrollment(self, code: str) -> EnrollAnswer:
        token = new_secret()
        try:
            redemption = await self.store.redeem_enrollment(
                hash_secret(code), self.clock.seconds(), hash_secret(token)
            )
        except PortunusError as e:
            # Counted and logged, aggregated, by the control port's gate.
            raise EnrollmentRefused(e.code) from None
        client = redemption.client
        endpoint = redemption.enrollment.advertised_endpoint
        if self.sessions.disconnect(client.client_id, "enrollment_rotated"):
            log.info(
                "client {client_id} re-enrolled; its old session was closed",
                event="client.enrollment_rotated",
                client_id=client.client_id,
            )
        log.info(
            "client {client_name} ({client_id}) enrolled",
            event="client.enrolled",
            client_id=client.client_id,
            client_name=client.name,
        )
        return {
            "client_id": client.client_id,
            "client_name": client.name,
            "server_endpoint": endpoint or self.advertised_endpoint,
            "token": token,
        }

    async def authenticate(self, token: str) -> tuple[str, str]:
        reason = None
        record = None
        if not token:
            reason = "missing_token"
        else:
            record = await self.store.client_for_token_hash(
                hash_secret(token), include_revoked=True
            )
            if record is None:
                reason = "token_not_found"
            elif record.revoked_at is not None:
                reason = "token_revoked"
        if reason is not None:
            log.warn("control connection refused: {reason}", event="auth.failure", reason=reason)
            self.auth_failure_observer(reason)
            raise AuthFailed(reason)
        assert record is not None
        return record.client_id, record.name

    def welcome_values(self) -> WelcomeValues:
        return {
            "server_version": __version__,
            "server_time_ms": int(self.clock.seconds() * 1000),
            "udp_flow_idle_secs": self.settings.udp_flow_idle_secs,
            "udp_max_flows_per_rule": self.settings.udp_max_flows_per_rule,
        }

    def session_started(self, session: ServerSession) -> None:
        self.sessions.register(session)

        def replay() -> None:
            # Runs after the Welcome (the Hello answer) has been written.
            if session.lost or self.sessions.get(session.client_id or "") is not session:
                return
            Deferred.fromCoroutine(self.replay(session)).addErrback(
                lambda f: log.failure(
                    "replay to {client_id} failed", f, client_id=session.client_id
                )
            )

        self.clock.callLater(0, replay)

    async def replay(self, session: ServerSession) -> int:
        """Push every Active rule of the session's client, then ReplayDone."""
        assert session.client_id is not None
        active = await self.store.rules_in_state(session.client_id, RuleState.ACTIVE)
        for record in active:
            try:
                self._gate(session, record.rule)
            except PortunusError as e:
                await self.store.set_rule_state(
                    record.rule_id, "failed", e.code, self.clock.seconds()
                )
                continue
            self._owners[record.rule_id] = session.client_id
            self._live_rules[record.rule_id] = record
            outcome = await session.push_rule(record.rule, replay=True)
            await self._record_outcome(outcome, record.rule_id)
        removed = await session.replay_done(len(active))
        log.info(
            "replayed {count} active rule(s) to {client_name}",
            event="client.replayed",
            client_id=session.client_id,
            client_name=session.client_name,
            count=len(active),
            removed_on_client=removed,
        )
        return len(active)

    def session_ended(self, session: ServerSession, reason: str) -> None:
        if self.sessions.unregister(session):
            log.info(
                "client {client_name} ({client_id}) disconnected: {reason}",
                event="client.disconnected",
                client_id=session.client_id,
                client_name=session.client_name,
                reason=reason,
            )

    def stats_received(self, session: ServerSession, sent_at_ms: int, stats: object) -> None:
        updated_at = self.clock.seconds()
        for entry in stats if isinstance(stats, list) else ():
            if not isinstance(entry, dict) or not isinstance(entry.get("rule_id"), int):
                continue
            if self._owners.get(entry["rule_id"]) != session.client_id:
                continue
            self._stats[entry["rule_id"]] = dict(
                entry, updated_at=updated_at, sent_at_ms=sent_at_ms
            )
            self._publish_stats(entry["rule_id"], session.client_id)

    # -- live stats and the advertised endpoint ----------------------------

    def subscribe_stats(self, rule_id: int, callback: StatsCallback) -> Callable[[], None]:
        self._stats_subscribers.setdefault(rule_id, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._stats_subscribers.get(rule_id, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._stats_subscribers.pop(rule_id, None)

        return unsubscribe

    def _tell(self, rule_id: int, callbacks: list[StatsCallback], entry: StatsEntry | None) -> None:
        for callback in callbacks:
            try:
                callback(entry)
            except Exception:
                log.failure("a stats subscriber of rule {rule_id} failed", rule_id=str(rule_id))

    def _publish_stats(self, rule_id: int, client_id: str | None) -> None:
        callbacks = self._stats_subscribers.get(rule_id)
        if callbacks:
            entry = dict(self._stats[rule_id], client_id=client_id)
            self._tell(rule_id, list(callbacks), entry)

    def _stats_ended(self, rule_id: int) -> None:
        self._tell(rule_id, self._stats_subscribers.pop(rule_id, []), None)

    @property
    def advertised_endpoint(self) -> str:
        """What enrollment URIs name: the API's override, else the configured one."""
        return self._advertised_override or self.settings.advertised_endpoint

    def advertised_override(self) -> str | None:
        return self._advertised_override

    async def set_advertised_override(self, endpoint: str | None) -> None:
        await self.store.set_setting(ADVERTISED_ENDPOINT_SETTING, endpoint)
        self._advertised_override = endpoint
        log.info(
            "advertised endpoint override {what}",
            event="advertised.override_set",
            what=f"set to {endpoint}" if endpoint else "cleared",
            endpoint=endpoint,
        )

    async def load_advertised_override(self) -> str | None:
        """
        Read the override from the store (at startup).  A value that no
        longer parses is ignored with a warning rather than handed to edges.
        """
        value = await self.store.get_setting(ADVERTISED_ENDPOINT_SETTING)
        if value is not None:
            try:
                parsed = parse_advertised_endpoint(value)
            except ValueError as e:
                log.warn(
                    "ignoring the stored advertised endpoint override: {why}",
                    event="advertised.override_invalid",
                    why=str(e),
                )
                value = None
            else:
                value = parsed.with_port(self.settings.control_port)
        self._advertised_override = value
        return value

    # -- metrics ---------------------------------------------------------

    def metrics_snapshot(self) -> list[RuleMetricsRow]:
        """
        One row per live rule (sent to its client during this run and not
        removed since) with its last reported counters; read at each scrape.
        """
        rows = []
        for rule_id, record in sorted(self._live_rules.items()):
            rule = record.rule
            rows.append(
                RuleMetricsRow(
                    rule_id=rule_id,
                    client_id=record.client_id,
                    client_name=record.client_name,
                    owner=record.owner_user_id or "",
                    protocol=rule.protocol.value,
                    multi_target=len(rule.targets) > 1,
                    sni=_is_sni(rule),
                    stats=self._stats.get(rule_id, {}),
                )
            )
        return rows

    def connected_clients(self) -> int:
        return len(self.sessions)

    def stop(self) -> None:
        for session in self.sessions.all():
            session.close("server_stopping")
