"""
The control plane as the operator surfaces (HTTP API, CLI, console) see it.

L{IControlPlane} is the one seam between the operator-facing code and the
server's state (store, sessions, rule lifecycle).  The API module turns
requests into calls on it and its results (or L{PortunusError}s) into JSON;
the server's composition root provides the real implementation, tests a
fake.  Every method but L{IControlPlane.subscribe_stats} and
L{IControlPlane.advertised_override} returns a L{Deferred}; refusals fail
it with a L{portunus.errors.PortunusError} carrying a stable code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from zope.interface import Interface

from portunus.model import Rule

__all__ = [
    "ClientView",
    "EnrollmentView",
    "IControlPlane",
    "RuleView",
    "StatsCallback",
]

#: Told each stats entry a rule's client reports (as L{IControlPlane.rule_stats}
#: answers it), and C{None} once when the rule is removed.
StatsCallback = Callable[[dict[str, Any] | None], object]


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

    def list_clients() -> Any:
        """C{Deferred[list[ClientView]]}, ordered by name then id."""

    def get_client(client_id: str) -> Any:
        """C{Deferred[ClientView]}; C{client_not_found}."""

    def enroll_client(name: str, address: str | None, ttl_secs: int) -> Any:
        """
        C{Deferred[EnrollmentView]} for a new client called C{name};
        C{address} is the host the client will dial (None: the advertised
        endpoint).  C{invalid_name}, C{invalid_client_address},
        C{invalid_enrollment_ttl}.
        """

    def reenroll_client(client_id: str, address: str | None, ttl_secs: int) -> Any:
        """
        C{Deferred[EnrollmentView]}: a new code for an existing client;
        its earlier unconsumed codes are superseded.  C{client_not_found}.
        """

    def rename_client(client_id: str, name: str) -> Any:
        """C{Deferred[ClientView]}; C{client_not_found}, C{invalid_name}."""

    def revoke_client(client_id: str) -> Any:
        """
        C{Deferred[ClientView]}: the token stops working and the live
        session is closed at once.  Idempotent.  C{client_not_found}.
        """

    def delete_client(client_id: str) -> Any:
        """
        C{Deferred[None]}: only a revoked client may be deleted
        (C{client_not_revoked}); its rules go with it.
        """

    def push_rule(
        client_id: str,
        rule: Rule,
        ack_timeout: float,
        owner_user_id: str | None = None,
        grant_id: str | None = None,
    ) -> Any:
        """
        C{Deferred[RuleView]} once the client has activated the rule.
        C{rule.id} is ignored: the server assigns one.  The rule is stamped
        with C{owner_user_id} and the C{grant_id} that allowed it (a grant
        revoked meanwhile refuses the push with C{client_not_granted}).
        Refusals:
        C{client_not_found}, C{client_not_connected}, C{port_in_use},
        C{unsupported_protocol} / C{*_unsupported_by_client},
        C{activation_failed} (the reason in the message and a C{reason}
        field), C{ack_timeout} (the rule stays pending).
        """

    def list_rules(client_id: str | None, owner_user_id: str | None = None) -> Any:
        """
        C{Deferred[list[RuleView]]} ordered by id, optionally of one client
        and/or one owner.
        """

    def get_rule(rule_id: int) -> Any:
        """C{Deferred[RuleView]}; C{rule_not_found}."""

    def remove_rule(rule_id: int) -> Any:
        """
        C{Deferred[None]}: deleted server-side at once, the client told to
        stop accepting and drain.  C{rule_not_found}.
        """

    def forget_rules(records: list[Any]) -> Any:
        """
        C{Deferred[None]}: rules already deleted from the store (a user's or
        a grant's cascade) are dropped from the caches and their clients
        told to stop them.
        """

    def rule_stats(rule_id: int) -> Any:
        """
        C{Deferred[dict]}: the last stats the client reported for the rule
        (the JSON of L{portunus.dataplane.stats.RuleStats} with
        C{per_port} and C{per_target} lists, plus C{updated_at}), or zeros
        with C{updated_at: None} before the first report.  C{rule_not_found}.
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

    def set_advertised_override(endpoint: str | None) -> Any:
        """
        C{Deferred[None]}: store C{endpoint} (a checked C{host:port}, or
        C{None} to clear it) in the server settings; enrollment URIs issued
        from then on name it instead of the configured endpoint.
        """
