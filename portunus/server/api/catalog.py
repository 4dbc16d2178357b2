"""
The one list of the operator API's route tables: the app serves these
(L{portunus.server.api.app.make_api}) and the OpenAPI document describes
these (L{portunus.server.api.openapi}), in this order.  A new route module
adds its C{ROUTES} here.
"""

from __future__ import annotations

from portunus.server.api import (
    audit,
    auth,
    clients,
    grants,
    health,
    metrics,
    rules,
    settings,
    streams,
    users,
)
from portunus.server.api.route import Routes

__all__ = ["ROUTE_TABLES"]

ROUTE_TABLES: tuple[Routes, ...] = (
    health.ROUTES,
    auth.ROUTES,
    users.ROUTES,
    grants.ROUTES,
    clients.ROUTES,
    rules.ROUTES,
    streams.ROUTES,
    audit.ROUTES,
    settings.ROUTES,
    metrics.ROUTES,
)
