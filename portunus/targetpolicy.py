"""
What a rule's targets may be, on a host that forwards for several tenants.

  - Never the rule's own listener: a target that reaches one of the rule's
    listen ports on the same host (through loopback, the unspecified
    address, one of the host's own addresses, or a name resolving to one)
    would loop every connection back into itself until descriptors run out:
    C{validation.target_is_listener}.
  - Local addresses (loopback, link-local, the host's own) only when
    allowed: a tenant could otherwise publish services that listen on
    loopback only, such as the server's operator API or the cloud metadata
    service: C{local_target_not_granted}.

The server asks before it stores a push (with the addresses the edge
reported in its Hello), the edge again when it activates the rule (with its
own addresses, authoritative), and the standalone parser for every rule of
its file.  A host name is judged here only when it is C{localhost} (or a
name under it) or when the caller resolved it; otherwise the data plane
judges the addresses it resolves to when it dials.

A leaf module: it imports nothing from the server, client or data plane.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence

import attrs

from portunus.addresses import (
    format_host_port,
    is_local_address,
    is_local_name,
    local_form,
    reaches_listener,
)
from portunus.errors import PortunusError
from portunus.model import PortRange, Rule, Target

__all__ = [
    "LOCAL_TARGET_NOT_GRANTED",
    "TARGET_IS_LISTENER",
    "TargetRefusal",
    "find_local_target",
    "find_self_target",
    "local_kind",
]

TARGET_IS_LISTENER = "validation.target_is_listener"
LOCAL_TARGET_NOT_GRANTED = "local_target_not_granted"

#: What C{localhost} resolves to everywhere.
_LOCALHOST = ("127.0.0.1", "::1")


def local_kind(address: str, own: Collection[str] = ()) -> str:
    """How a message names the local address C{address}."""
    form = local_form(address)
    if form is not None and form.is_loopback:
        unspecified = address.partition("%")[0] in ("0.0.0.0", "::")
        return "the unspecified address (this host)" if unspecified else "a loopback address"
    if form is not None and form.is_link_local:
        return "a link-local address"
    return "one of the host's own addresses"


@attrs.frozen
class TargetRefusal:
    """Why one target of a rule is refused."""

    code: str
    #: The target's place in the rule's list.
    index: int
    target: Target
    #: The address at fault: the target's host, or what its name resolved to.
    address: str
    message: str

    def field(self, prefix: str = "targets") -> str:
        """The target's field name, C{targets[0]}."""
        return f"{prefix}[{self.index}]"

    def error(self, prefix: str = "targets") -> PortunusError:
        """The refusal as the API and the CLI answer it."""
        field = self.field(prefix)
        return PortunusError(
            self.code,
            f"{field}: {self.message}",
            field=field,
            target=self.target.display(),
            address=self.address,
        )


def _candidates(
    target: Target, resolved: Mapping[str, Sequence[str]]
) -> Iterator[tuple[str, bool]]:
    """The addresses a target's host stands for, each with whether it was a name."""
    if local_form(target.host) is not None:
        yield target.host, False
    elif is_local_name(target.host):
        for address in _LOCALHOST:
            yield address, True
    else:
        for address in resolved.get(target.host, ()):
            yield address, True


def _target_ports(rule: Rule, target: Target) -> PortRange:
    """Every port the target is dialled on, one per listen port."""
    start = target.ports.start
    return PortRange(start, start + len(rule.listen) - 1)


def find_self_target(
    rule: Rule, own: Collection[str] = (), resolved: Mapping[str, Sequence[str]] = {}
) -> TargetRefusal | None:
    """
    The first target of C{rule} that reaches the rule's own listener on
    this host, or C{None}.

    @param own: the host's interface addresses (as L{local_form} writes them).
    @param resolved: addresses the caller resolved host names to.
    """
    for index, target in enumerate(rule.targets):
        ports = _target_ports(rule, target)
        if not ports.overlaps(rule.listen):
            continue
        port = max(ports.start, rule.listen.start)
        for address, named in _candidates(target, resolved):
            if not reaches_listener(address, rule.listen_addresses, own):
                continue
            via = f" ({target.host} resolves to {address})" if named else ""
            listens = ", ".join(rule.listen_addresses)
            return TargetRefusal(
                TARGET_IS_LISTENER,
                index,
                target,
                address,
                f"{format_host_port(target.host, port)}{via} is this rule's own listener "
                f"(it listens on {listens} port {port} of the same host), so every "
                "connection would loop back into it; pick another target or listen port",
            )
    return None


def find_local_target(rule: Rule, own: Collection[str] = ()) -> TargetRefusal | None:
    """
    The first target of C{rule} whose host is local (an IP literal on
    loopback, link-local, the unspecified address or one of C{own}, or
    C{localhost}), or C{None}.  Other host names are judged when resolved.
    """
    for index, target in enumerate(rule.targets):
        for address, named in _candidates(target, {}):
            if not is_local_address(address, own):
                continue
            what = "a name for the loopback address" if named else local_kind(target.host, own)
            return TargetRefusal(
                LOCAL_TARGET_NOT_GRANTED,
                index,
                target,
                target.host,
                f"{target.host} is {what}; your grant does not allow local targets "
                "(loopback, link-local and the edge's own addresses): ask a superadmin for "
                "a grant with allow_local_targets",
            )
    return None
