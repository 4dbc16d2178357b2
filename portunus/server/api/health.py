"""
C{GET /v1/health} and C{GET /v1/openapi.json} (public): whether the API
answers, and its OpenAPI document (it describes routes; it holds no
secrets).  The handlers are given the document
(L{portunus.server.api.openapi.document}), which lists these routes too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portunus.server.api.request import Call
from portunus.server.api.route import Routes

__all__ = ["ROUTES"]

ROUTES = Routes("health", bind=None)


@ROUTES.route(
    "GET", "/v1/health", "health", "Whether the API answers", access="public", answer="Health"
)
async def health(document: Mapping[str, Any], call: Call) -> object:
    return {"status": "ok"}


@ROUTES.route(
    "GET", "/v1/openapi.json", "openapi", "This document", access="public", answer="OpenApiDocument"
)
async def openapi(document: Mapping[str, Any], call: Call) -> object:
    return document
