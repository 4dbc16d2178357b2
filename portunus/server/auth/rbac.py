"""
What a user (not a superadmin) may do with rules and clients: the grant
checks run on every push, and the ownership check on every rule read or
change.  Superadmins bypass both.
"""

from __future__ import annotations

from collections.abc import Iterable

from portunus.errors import PortunusError
from portunus.server.auth.principal import Principal
from portunus.server.store import GrantRecord

__all__ = ["covering_grant", "granted_client_ids", "require_owner"]


def covering_grant(
    grants: Iterable[GrantRecord], client_id: str, protocol: str, start: int, end: int
) -> GrantRecord:
    """
    The grant that allows a push of C{protocol} ports C{start..end} on
    C{client_id}: one grant must match the client and the protocol and
    cover the whole range (two grants side by side do not add up).
    Refusals in Portunus's order: C{client_not_granted},
    C{protocol_not_granted}, C{port_outside_grant}.
    """
    on_client = [g for g in grants if g.client_id in ("*", client_id)]
    if not on_client:
        raise PortunusError(
            "client_not_granted",
            "you have no grant on this client; ask a superadmin for one",
            client_id=client_id,
        )
    with_protocol = [g for g in on_client if protocol in g.protocols]
    if not with_protocol:
        raise PortunusError(
            "protocol_not_granted",
            f"your grants on this client do not cover {protocol}; ask a superadmin",
            client_id=client_id,
            protocol=protocol,
        )
    for grant in with_protocol:
        if grant.covers(client_id, protocol, start, end):
            return grant
    ranges = ", ".join(f"{g.listen_port_start}-{g.listen_port_end}" for g in with_protocol)
    ports = str(start) if start == end else f"{start}-{end}"
    raise PortunusError(
        "port_outside_grant",
        f"listen port(s) {ports} are not inside one of your granted ranges ({ranges})",
        client_id=client_id,
        granted=[[g.listen_port_start, g.listen_port_end] for g in with_protocol],
    )


def granted_client_ids(grants: Iterable[GrantRecord]) -> set[str] | None:
    """The client ids a user's grants name; C{None} means every client (C{*})."""
    ids = {g.client_id for g in grants}
    return None if "*" in ids else ids


def require_owner(principal: Principal, owner_user_id: str | None, rule_id: int) -> None:
    """C{not_owner} unless C{principal} is a superadmin or owns the rule."""
    if principal.is_superadmin or owner_user_id == principal.user_id:
        return
    raise PortunusError("not_owner", f"rule {rule_id} belongs to another user", rule_id=rule_id)
