"""
One registry of stable error codes.

Every refusal the product makes carries a code from this registry, with the
HTTP status the API answers, the exit code the CLI returns and a message
that tells the operator what to do.  Codes and numbers follow Portunus
(reference inventory §1.5, §5.3) so its documentation stays true here.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = [
    "ERRORS",
    "ErrorCode",
    "PortunusError",
    "lookup",
]


@attrs.frozen
class ErrorCode:
    """A stable error code and how each surface reports it."""

    code: str
    http_status: int
    exit_code: int
    hint: str


def _registry(*codes: ErrorCode) -> Mapping[str, ErrorCode]:
    return {c.code: c for c in codes}


ERRORS: Mapping[str, ErrorCode] = _registry(
    # Configuration and validation.
    ErrorCode("config_invalid", 400, 2, "fix the listed fields and run --check again"),
    ErrorCode("validation_failed", 400, 3, "fix the named field and retry"),
    # Binding listeners.
    ErrorCode(
        "port_in_use",
        409,
        5,
        "another process (or rule) holds this port; stop it or pick a free port",
    ),
    ErrorCode(
        "permission_denied",
        422,
        6,
        "ports below 1024 need root or CAP_NET_BIND_SERVICE; use a higher port or grant it",
    ),
    ErrorCode("bind_failed", 422, 6, "the address could not be bound; check it exists here"),
    ErrorCode(
        "protocol_unsupported",
        422,
        3,
        'this build cannot forward that protocol yet; use protocol = "tcp"',
    ),
    # TLS SNI routing (codes as Portunus spells them).
    ErrorCode(
        "validation.sni_pattern_malformed",
        400,
        3,
        "use an exact host name or a single-label wildcard such as *.example.com",
    ),
    ErrorCode(
        "validation.sni_on_unsupported_rule",
        400,
        3,
        "SNI routing needs a single-port TCP rule",
    ),
    ErrorCode(
        "conflict.sni_route_duplicate",
        409,
        5,
        "another rule on this port already routes that pattern; remove one",
    ),
    ErrorCode(
        "conflict.sni_fallback_duplicate",
        409,
        5,
        "a port has at most one SNI fallback rule; remove one",
    ),
    ErrorCode(
        "conflict.legacy_to_sni_unsupported",
        409,
        5,
        "a port is either SNI-routed or plain; move the plain rule to another port",
    ),
    # Rule lifecycle.
    ErrorCode("rule_not_found", 404, 8, "list the rules to find the right name or id"),
    ErrorCode("rule_exists", 409, 5, "rule names are unique; remove the old rule or rename"),
)


def lookup(code: str) -> ErrorCode:
    """Return the registered code; unknown codes are a programming error."""
    return ERRORS[code]


class PortunusError(Exception):
    """
    A refusal with a stable code, a human message and optional structured
    fields (port, rule, field ...) for logs and API bodies.
    """

    def __init__(self, code: str, message: str, **fields: object) -> None:
        self.error = lookup(code)
        self.code = code
        self.message = message
        self.fields = fields
        super().__init__(f"{code}: {message}")

    @property
    def hint(self) -> str:
        return self.error.hint

    def to_json(self) -> dict[str, object]:
        """The API error envelope body."""
        body: dict[str, object] = {"code": self.code, "message": self.message}
        body.update(self.fields)
        return {"error": body}
