"""
C{GET /v1/metrics} (superadmins): the Prometheus text of the metrics
listener, behind the API's authentication, for a Prometheus that cannot
run next to the server.
"""

from __future__ import annotations

from typing import Protocol

from portunus.server.api.app import ApiContext
from portunus.server.api.request import Call, Raw
from portunus.server.metrics import CONTENT_TYPE

__all__ = ["install"]


class Renders(Protocol):
    """What L{portunus.server.metrics.ServerMetrics} offers a scraper."""

    def render(self) -> bytes: ...


def install(ctx: ApiContext, metrics: Renders) -> None:
    """Add C{GET /v1/metrics} over C{metrics} to C{ctx.app}."""

    @ctx.route("/v1/metrics", "GET", "superadmin")
    async def scrape(call: Call) -> object:
        return Raw(200, CONTENT_TYPE, metrics.render())
