"""
The control protocol: AMP commands between the server and its edge clients.

One TLS connection per client carries everything.  The client speaks first:

    client                                  server
    Enroll(code)                    ->      (only on an enrollment connection)
    Hello(token, version, features) ->      Welcome (the answer)
                                    <-      PushRule(rule) ... (replay of Active rules)
                                    <-      ReplayDone(count)
    StatsReport(stats) every 5 s    ->
                                    <-      PushRule / RemoveRule (operator changes)

Every command but Enroll and Hello is refused until Hello succeeds.  A rule
travels as the JSON of L{portunus.rulejson.rule_to_dict}, so a field added to
L{portunus.model.Rule} reaches the client without a protocol change.
Compatibility is additive, as in Portunus: new optional arguments and new
commands only; a client declares what it can do in Hello's C{features} and
the server refuses to send what a client cannot apply.

AMP caps one value at 65,535 bytes; L{chunk_stats} splits a stats report
into several commands when a client carries many rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from twisted.protocols import amp

__all__ = [
    "FEATURES",
    "MAX_HELLO_ADDRESSES",
    "PROTOCOL_VERSION",
    "AuthFailed",
    "Enroll",
    "EnrollmentRefused",
    "Hello",
    "Json",
    "NotAuthenticated",
    "PushRule",
    "RemoveRule",
    "ReplayDone",
    "StatsReport",
    "chunk_stats",
]

#: Bumped only for incompatible changes (none yet).
PROTOCOL_VERSION = "1.0.0"

#: What this code's client can apply; sent in Hello.
FEATURES: tuple[str, ...] = (
    "tcp",
    "udp",
    "multi_target",
    "sni",
    "proxy_protocol",
    "rate_limit",
    "dns_targets",
    "balance",
    "accept_proxy_protocol",
    # Refuses local addresses a target's name resolves to when the rule
    # says so (allow_local_targets = false), and sends its addresses in Hello.
    "local_target_policy",
)

#: The most interface addresses a Hello carries (and the server keeps).
MAX_HELLO_ADDRESSES = 256

#: Stay well below AMP's 65,535-byte value limit.
MAX_VALUE_BYTES = 60_000


class Json(amp.Argument):
    """Any JSON value, UTF-8 encoded (one AMP value: at most 65,535 bytes)."""

    def toString(self, inObject: Any) -> bytes:
        return json.dumps(inObject, separators=(",", ":"), sort_keys=True).encode("utf-8")

    def fromString(self, inString: bytes) -> Any:
        return json.loads(inString.decode("utf-8"))


class AuthFailed(Exception):
    """The token was missing, unknown or revoked; the message is the reason."""


class NotAuthenticated(Exception):
    """A command other than Enroll/Hello arrived before a successful Hello."""


class EnrollmentRefused(Exception):
    """
    The code is unknown, expired or already used; the message is the stable
    code (C{enrollment_invalid}, C{enrollment_expired}, C{enrollment_used}).
    """


_AUTH_ERRORS = {AuthFailed: b"AUTH_FAILED", NotAuthenticated: b"NOT_AUTHENTICATED"}


class Enroll(amp.Command):
    """Redeem an enrollment code for a client identity and token."""

    arguments = [(b"code", amp.Unicode())]
    response = [
        (b"client_id", amp.Unicode()),
        (b"client_name", amp.Unicode()),
        (b"server_endpoint", amp.Unicode()),
        (b"token", amp.Unicode()),
    ]
    errors = {EnrollmentRefused: b"ENROLLMENT_REFUSED"}


class Hello(amp.Command):
    """Authenticate and describe the client; the answer is the Welcome."""

    arguments = [
        (b"token", amp.Unicode()),
        (b"protocol_version", amp.Unicode()),
        (b"client_version", amp.Unicode()),
        (b"features", amp.ListOf(amp.Unicode())),
        # The edge's interface addresses, for the server's target checks.
        (b"addresses", amp.ListOf(amp.Unicode(), optional=True)),
    ]
    response = [
        (b"server_version", amp.Unicode()),
        (b"server_time_ms", amp.Integer()),
        (b"client_id", amp.Unicode()),
        (b"client_name", amp.Unicode()),
        (b"udp_flow_idle_secs", amp.Integer()),
        (b"udp_max_flows_per_rule", amp.Integer()),
    ]
    errors = {AuthFailed: b"AUTH_FAILED"}


class PushRule(amp.Command):
    """
    Install (or replace) one rule.  The answer is the client's real bind
    outcome: C{activated}, or C{failed} with a reason such as
    C{port_in_use:18080}.
    """

    arguments = [
        (b"request_id", amp.Unicode()),
        (b"rule", Json()),
        (b"replay", amp.Boolean(optional=True)),
    ]
    response = [
        (b"outcome", amp.Unicode()),
        (b"reason", amp.Unicode(optional=True)),
    ]
    errors = dict(_AUTH_ERRORS)


class RemoveRule(amp.Command):
    """Stop accepting for a rule and drain it; the answer is C{removed}."""

    arguments = [
        (b"request_id", amp.Unicode()),
        (b"rule_id", amp.Integer()),
    ]
    response = [(b"outcome", amp.Unicode())]
    errors = dict(_AUTH_ERRORS)


class ReplayDone(amp.Command):
    """
    The server has replayed all C{count} Active rules of this client.  Any
    rule the client still runs that was not pushed in this session is gone
    from the server (removed while the link was down): the client removes
    it.  Server state wins.
    """

    arguments = [(b"count", amp.Integer())]
    response = [(b"removed", amp.ListOf(amp.Integer()))]
    errors = dict(_AUTH_ERRORS)


class StatsReport(amp.Command):
    """Cumulative per-rule counters, sent every few seconds by the client."""

    arguments = [
        (b"sent_at_ms", amp.Integer()),
        (b"stats", Json()),
    ]
    requiresAnswer = False
    errors = dict(_AUTH_ERRORS)


#: What an oversized stats entry sheds, in this order.
_DROPPABLE_DETAIL = ("ports", "per_target")


def chunk_stats(
    entries: Sequence[dict[str, Any]], limit: int = MAX_VALUE_BYTES
) -> Iterator[list[dict[str, Any]]]:
    """
    Split per-rule stats entries into lists whose JSON fits one AMP value.
    An entry larger than C{limit} on its own loses its per-port detail
    (C{ports}), then its per-target detail (C{per_target}), rather than
    the whole report.
    """
    chunk: list[dict[str, Any]] = []
    size = 2
    for entry in entries:
        encoded = len(json.dumps(entry, separators=(",", ":")))
        for detail in _DROPPABLE_DETAIL:
            if encoded + 1 <= limit:
                break
            entry = {k: v for k, v in entry.items() if k != detail}
            encoded = len(json.dumps(entry, separators=(",", ":")))
        if chunk and size + encoded + 1 > limit:
            yield chunk
            chunk, size = [], 2
        chunk.append(entry)
        size += encoded + 1
    if chunk:
        yield chunk
