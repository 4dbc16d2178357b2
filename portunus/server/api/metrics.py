"""
C{GET /v1/metrics} (superadmins): the Prometheus text of the metrics
listener, behind the API's authentication, for a Prometheus that cannot
run next to the server.
"""

from __future__ import annotations

from typing import Protocol

from portunus.server.api.request import Call, Raw
from portunus.server.api.route import Routes
from portunus.server.metrics import CONTENT_TYPE

__all__ = ["ROUTES", "Renders"]


class Renders(Protocol):
    """What L{portunus.server.metrics.ServerMetrics} offers a scraper."""

    def render(self) -> bytes: ...


ROUTES = Routes("metrics", bind=None)


@ROUTES.route(
    "GET",
    "/v1/metrics",
    "metrics",
    "The Prometheus metrics, as the metrics listener serves them",
    access="superadmin",
    answer="Text",
    media_type="text/plain",
)
async def scrape(metrics: Renders, call: Call) -> object:
    return Raw(200, CONTENT_TYPE, metrics.render())
