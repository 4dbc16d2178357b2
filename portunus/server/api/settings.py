"""
C{/v1/settings/advertised-endpoint} (superadmins): the C{host:port}
enrollment URIs name, read and overridden at run time.

The rules of resolution and the certificate check are in
L{portunus.server.advertised}; the plane stores the override and uses it
for every enrollment issued after the C{PUT}.
"""

from __future__ import annotations

from typing import Any

import attrs

from portunus.control.tls import certificate_hosts
from portunus.errors import PortunusError
from portunus.server.advertised import CertificateNames, check_override, describe
from portunus.server.api.request import Call, read_json
from portunus.server.api.route import Routes

__all__ = ["ROUTES", "AdvertisedSettings"]

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


@attrs.frozen
class AdvertisedSettings:
    """
    What the settings routes serve from.

    @ivar plane: stores the override and uses it for later enrollments.
    @ivar names: the server certificate's names (they bound the overrides).
    @ivar seed: the configured C{host:port} (server.toml, environment or
        flag, with the control port filled in), C{None} when none is.
    @ivar control_port: the port a bare host gets.
    """

    plane: Any
    names: CertificateNames
    seed: str | None
    control_port: int

    @classmethod
    def of(
        cls, plane: Any, *, cert_pem: bytes, seed: str | None, control_port: int
    ) -> AdvertisedSettings:
        """The settings over C{plane} for the certificate C{cert_pem}."""
        return cls(plane, CertificateNames(*certificate_hosts(cert_pem)), seed, control_port)

    def current(self) -> dict[str, Any]:
        return describe(self.plane.advertised_override(), self.seed, self.control_port, self.names)


ROUTES = Routes("settings", bind=None)


@ROUTES.route(
    "GET",
    "/v1/settings/advertised-endpoint",
    "getAdvertisedEndpoint",
    "The host:port enrollment URIs name, and where it comes from",
    access="superadmin",
    answer="AdvertisedEndpoint",
)
async def show(settings: AdvertisedSettings, call: Call) -> object:
    return settings.current()


@ROUTES.route(
    "PUT",
    "/v1/settings/advertised-endpoint",
    "setAdvertisedEndpoint",
    'Override the host:port enrollment URIs name (null or "" clears it)',
    access="superadmin",
    action="settings.advertised_endpoint",
    answer="AdvertisedEndpoint",
    body="AdvertisedEndpointChange",
    codes=("invalid_json", "validation_failed", "endpoint_invalid", "endpoint_not_in_cert_san"),
)
async def change(settings: AdvertisedSettings, call: Call) -> object:
    text = _requested(read_json(call.request))
    call.note("setting", _KEY)
    endpoint = None if text is None else check_override(text, settings.control_port, settings.names)
    call.note(endpoint=endpoint)
    await settings.plane.set_advertised_override(endpoint)
    return settings.current()
