"""
The control plane as the operator surfaces (HTTP API, CLI, console) see it.

L{IControlPlane} is the one seam between the operator-facing code and the
server's state (store, sessions, rule lifecycle).  The API module turns
requests into calls on it and its results (or L{PortunusError}s) into JSON;
the server's composition root provides the real implementation, tests a
fake.  Every method but L{IControlPlane.subscribe_stats} and
L{IControlPlane.advertised_override} is a coroutine (the API's handlers
await it; elsewhere C{Deferred.fromCoroutine} makes it a L{Deferred});
refusals raise a L{portunus.errors.PortunusError} carrying a stable code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from zope.interface import Interface

from portunus.model import Rule
from portunus.server.store import RuleRecord

__all__ = [
    "ClientView",
    "EnrollmentView",
    "IControlPlane",
    "RuleView",
    "StatsCallback",
    "StatsEntry",
]

#: One rule's stats: the JSON object its client last reported (the
#: counters of L{portunus.dataplane.stats.RuleStats}, its C{ports} and
#: C{per_target}), with C{rule_id}, C{client_id} and C{updated_at} (unix
#: seconds, C{None} before the first report) set by the server.  The
#: counters are the client's JSON: the server passes them on unchecked, so
#: their values are C{object} until a reader checks them.
StatsEntry = dict[str, object]

#: Told each stats entry a rule's client reports (as L{IControlPlane.rule_stats}
#: answers it), and C{None} once when the rule is removed.
StatsCallback = Callable[[StatsEntry | None], object]


@attrs.frozen
class ClientView:
    """One enrolled (or enrolling) edge client."""

    client_id: str
    name: str
    #: C{connected}, C{disconnected} or C{revoked}.
    state: str
    #: Peer address of the live session, C{None} when not connected.
    remote_addr: str | None = None
    #: Unix seconds the live session started, C{None} when not connected.
    connected_at: float | None = None
    created_at: float | None = None
    revoked_at: float | None = None
    client_version: str | None = None
    #: Feature names the client declared in its last Hello.
    features: tuple[str, ...] = ()


@attrs.frozen
class EnrollmentView:
    """A freshly minted enrollment code, shown once."""

    client_id: str
    client_name: str
    #: C{portunus://HOST:PORT/enroll?pin=sha256:<hex>&code=<code>}
    uri: str
    #: Unix seconds after which the code is refused.
    expires_at: float


@attrs.frozen
class RuleView:
    """A rule as the server holds it, with where it stands on its client."""

    rule: Rule
    client_id: str
    client_name: str
    #: C{pending}, C{active} or C{failed}.
    state: str
    #: Why a rule is C{failed} (C{port_in_use:18080} ...), else C{None}.
    state_reason: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    #: Who pushed the rule (C{None} for rules from before accounts existed).
    owner_user_id: str | None = None
    #: The grant the push was allowed under; C{None} for superadmins' rules.
    grant_id: str | None = None


class IControlPlane(Interface):
    """What operators can ask of the server."""

    async def list_clients() -> list[ClientView]:
        """Every client, ordered by name then id."""

    async def get_client(client_id: str) -> ClientView:
        """The client; C{client_not_found}."""

    async def enroll_client(name: str, address: str | None, ttl_secs: int) -> EnrollmentView:
        """
        A new client called C{name} and its first code; C{address} is the
        host the client will dial (None: the advertised endpoint).
        C{invalid_name}, C{invalid_client_address}, C{invalid_enrollment_ttl}.
        """

    async def reenroll_client(client_id: str, address: str | None, ttl_secs: int) -> EnrollmentView:
        """
        A new code for an existing client; its earlier unconsumed codes are
        superseded.  C{client_not_found}.
        """

    async def rename_client(client_id: str, name: str) -> ClientView:
        """The renamed client; C{client_not_found}, C{invalid_name}."""

    async def revoke_client(client_id: str) -> ClientView:
        """
        The revoked client: the token stops working and the live session is
        closed at once.  Idempotent.  C{client_not_found}.
        """

    async def delete_client(client_id: str) -> None:
        """
        Only a revoked client may be deleted (C{client_not_revoked}); its
        rules go with it.
        """

    async def push_rule(
        client_id: str,
        rule: Rule,
        ack_timeout: float,
        owner_user_id: str | None = None,
        grant_id: str | None = None,
        allow_local_targets: bool = True,
    ) -> RuleView:
        """
        The rule, once the client has activated it.
        Without C{allow_local_targets} (a tenant whose grant does not allow
        them) a target on loopback, link-local or the edge's own addresses
        is refused (C{local_target_not_granted}), and the edge is told to
        refuse such addresses a name resolves to.  A target that is the
        rule's own listener is refused (C{validation.target_is_listener}).
        C{rule.id} is ignored: the server assigns one.  The rule is stamped
        with C{owner_user_id} and the C{grant_id} that allowed it (a grant
        revoked meanwhile refuses the push with C{client_not_granted}).
        Refusals:
        C{client_not_found}, C{client_not_connected}, C{port_in_use},
        C{unsupported_protocol} / C{*_unsupported_by_client},
        C{activation_failed} (the reason in the message and a C{reason}
        field), C{ack_timeout} (the rule stays pending).
        """

    async def list_rules(client_id: str | None, owner_user_id: str | None = None) -> list[RuleView]:
        """The rules ordered by id, optionally of one client and/or one owner."""

    async def get_rule(rule_id: int) -> RuleView:
        """The rule; C{rule_not_found}."""

    async def remove_rule(rule_id: int) -> None:
        """
        Deleted server-side at once, the client told to stop accepting and
        drain.  C{rule_not_found}.
        """

    async def forget_rules(records: Sequence[RuleRecord]) -> None:
        """
        Rules already deleted from the store (a user's or a grant's cascade)
        are dropped from the caches and their clients told to stop them.
        """

    async def rule_stats(rule_id: int) -> StatsEntry:
        """
        The last stats the client reported for the rule (with C{per_port}
        and C{per_target} lists, plus C{updated_at}), or only the rule and
        client ids with C{updated_at: None} before the first report.
        C{rule_not_found}.
        """

    def subscribe_stats(rule_id: int, callback: StatsCallback) -> Callable[[], None]:
        """
        Call C{callback} with every stats entry the rule's client reports
        from now on (the dict L{rule_stats} would answer), and with C{None}
        once when the rule is removed, which ends the subscription.  Returns
        the function that ends it sooner (calling it twice is harmless).
        Synchronous: it does not check that the rule exists.
        """

    def advertised_override() -> str | None:
        """The C{host:port} set through the API for enrollment URIs, or C{None}."""

    async def set_advertised_override(endpoint: str | None) -> None:
        """
        Store C{endpoint} (a checked C{host:port}, or C{None} to clear it)
        in the server settings; enrollment URIs issued from then on name it
        instead of the configured endpoint.
        """
