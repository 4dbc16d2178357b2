"""
The operator API as an OpenAPI 3.1 document, served at
C{GET /v1/openapi.json} (L{portunus.server.api.health}).

The document is made from the route declarations of the tables in
L{portunus.server.api.catalog}, the same ones the app mounts, and the
schemas in L{portunus.server.api.schemas}.  Each route names the codes its
handler can refuse with; their HTTP statuses come from the error registry,
and the pipeline's own refusals come from the route's gates, so a status is
documented exactly where a code path produces it.  Tests hold the document
to the app's routes, to the registry and to every response the API contract
tests receive; CI runs schemathesis against a live server with it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from portunus import __version__
from portunus.errors import ERRORS
from portunus.server.api.catalog import ROUTE_TABLES
from portunus.server.api.request import SESSION_COOKIE
from portunus.server.api.route import Operation
from portunus.server.api.schemas import (
    COMPONENTS,
    LISTS,
    PATH_PARAMETERS,
    Schema,
    array,
    integer,
    ref,
    string,
)

__all__ = ["document"]


def _error_response(status: int, codes: Sequence[str]) -> Schema:
    lines = [f"- `{code}`: {ERRORS[code].hint}" for code in codes]
    response: Schema = {
        "description": "Refused:\n" + "\n".join(lines),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        ref("Error"),
                        {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
                    ]
                }
            }
        },
    }
    if "unauthenticated" in codes:
        response["headers"] = {
            "WWW-Authenticate": {
                "description": 'Bearer realm="portunus", when no credentials were sent',
                "schema": string(),
            }
        }
    if "rate_limited" in codes:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the next attempt may pass (rate_limited)",
                "schema": integer(1),
            }
        }
    return response


def _operation(operation: Operation) -> Schema:
    success: Schema = {"description": operation.summary}
    if operation.answer is not None:
        item = LISTS.get(operation.answer)
        schema = array(ref(item)) if item is not None else ref(operation.answer)
        success["content"] = {operation.media_type: {"schema": schema}}
    if operation.headers:
        success["headers"] = {
            name: {"description": example, "schema": string()}
            for name, example in operation.headers.items()
        }
    responses: dict[str, Schema] = {str(operation.status): success}
    by_status: dict[int, list[str]] = {}
    for code in operation.error_codes():
        by_status.setdefault(ERRORS[code].http_status, []).append(code)
    for status in sorted(by_status):
        responses[str(status)] = _error_response(status, by_status[status])

    parameters: list[Schema] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": PATH_PARAMETERS[name],
        }
        for name in operation.path_parameters
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in operation.query.items()
    ]
    result: Schema = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "description": _access_text(operation),
    }
    if operation.access == "public":
        result["security"] = []
    if parameters:
        result["parameters"] = parameters
    if operation.body is not None:
        result["requestBody"] = {
            "required": operation.body_required,
            "content": {"application/json": {"schema": ref(operation.body)}},
        }
    result["responses"] = responses
    return result


def _access_text(operation: Operation) -> str:
    text = {
        "public": "No authentication.",
        "authenticated": "Any authenticated user.",
        "superadmin": "Superadmins only.",
    }[operation.access]
    if operation.description:
        text += " " + operation.description
    return text


@functools.cache
def _document() -> dict[str, Any]:
    operations = [route.operation for routes in ROUTE_TABLES for route in routes]
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Portunus operator API",
            "version": __version__,
            "description": "The control plane's operator API. Errors are "
            '`{"error": {"code", "message", ...}}` with a code from the error registry; '
            "times are RFC 3339 UTC. docs/api.md explains the pipeline every request "
            "passes (onboarding, authentication, CSRF, password change, role, audit).",
        },
        "servers": [{"url": "http://127.0.0.1:7080", "description": "The default listener"}],
        "tags": [
            {"name": name} for name in dict.fromkeys(operation.tag for operation in operations)
        ],
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator token (operator_token in server.toml, else "
                    "the data dir's operator.token) or a token bootstrap-superadmin printed",
                },
                "cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE.decode("ascii"),
                    "description": "The console session POST /v1/auth/login sets; writes "
                    "also need Origin, X-Portunus-CSRF: 1 and a JSON content type",
                },
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (built once; callers must not change it)."""
    return _document()
