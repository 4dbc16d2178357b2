"""
C{/v1/settings/advertised-endpoint} (superadmins): the C{host:port}
enrollment URIs name, read and overridden at run time.

The rules of resolution and the certificate check are in
L{portunus.server.advertised}; the plane stores the override and uses it
for every enrollment issued after the C{PUT}.
"""

from __future__ import annotations

from typing import Any

from portunus.control.tls import certificate_hosts
from portunus.errors import PortunusError
from portunus.server.advertised import CertificateNames, check_override, describe
from portunus.server.api.app import ApiContext
from portunus.server.api.request import Call, read_json

__all__ = ["install"]

_KEY = "advertised_endpoint"


def _requested(body: dict[str, Any]) -> str | None:
    """The value a PUT body asks for; C{None} clears the override."""
    for key in body:
        if key != _KEY:
            raise PortunusError(
                "validation_failed",
                f'unknown key {key!r}; the body is {{{_KEY!r}: "host:port" or null}}',
                field=f"body.{key}",
            )
    if _KEY not in body:
        raise PortunusError(
            "validation_failed",
            f'send {{"{_KEY}": "host:port"}}, or null or "" to clear the override',
            field=_KEY,
        )
    value = body[_KEY]
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PortunusError(
            "endpoint_invalid",
            f"{_KEY} must be a string such as edge.example.com:7443, or null",
            field=_KEY,
        )
    return value


def install(ctx: ApiContext, *, cert_pem: bytes, seed: str | None, control_port: int) -> None:
    """
    Add the settings routes to C{ctx.app}.

    @param cert_pem: the server certificate (its SANs bound the overrides).
    @param seed: the configured C{host:port} (server.toml, environment or
        flag, with the control port filled in), C{None} when none is.
    @param control_port: the port a bare host gets.
    """
    plane = ctx.plane
    names = CertificateNames(*certificate_hosts(cert_pem))

    def current() -> dict[str, Any]:
        return describe(plane.advertised_override(), seed, control_port, names)

    @ctx.route("/v1/settings/advertised-endpoint", "GET", "superadmin")
    async def show(call: Call) -> object:
        return current()

    @ctx.route(
        "/v1/settings/advertised-endpoint",
        "PUT",
        "superadmin",
        action="settings.advertised_endpoint",
    )
    async def change(call: Call) -> object:
        text = _requested(read_json(call.request))
        call.note("setting", _KEY)
        endpoint = None if text is None else check_override(text, control_port, names)
        call.note(endpoint=endpoint)
        await plane.set_advertised_override(endpoint)
        return current()
