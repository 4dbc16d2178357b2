"""
Holding the operator API's answers to its OpenAPI document.

L{ResponseChecker} finds the operation a request went to and checks that
the answer's status is documented for it and that its body has the
documented media type and, for JSON, matches the documented schema.  The
API contract tests run every answer through it (L{ApiHarness.request}), so
an answer the document does not describe fails the test that got it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing import Resource as JsonResource
from referencing.jsonschema import DRAFT202012
from twisted.web.resource import IResource, Resource

from portunus.server.api.openapi import document

__all__ = ["CheckedResource", "ResponseChecker", "pointer", "shared_checker"]

_BASE = "urn:portunus:openapi"
_PARAMETER = re.compile(r"\{[^}/]+\}")
#: Answers to requests no operation takes, from the pipeline itself.
_UNROUTED = {404: "not_found", 405: "method_not_allowed"}


def pointer(*parts: str) -> str:
    """A JSON pointer to C{parts} (C{/} and C{~} escaped)."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def _formats() -> FormatChecker:
    # jsonschema checks date-time only with an optional package; this is
    # the RFC 3339 profile the API writes (timestamp() in api/app.py).
    checker = FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
            raise ValueError(f"{value!r} is not an RFC 3339 date-time")
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True

    return checker


class ResponseChecker:
    """The document's view of answers: which are documented, which are not."""

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self.doc = doc if doc is not None else document()
        resource = JsonResource.from_contents(self.doc, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_BASE, resource)
        self._formats = _formats()
        # Literal paths before templated ones, as the router prefers them.
        self._paths = sorted(
            (
                (len(_PARAMETER.findall(path)), path, self._pattern(path))
                for path in self.doc["paths"]
            ),
            key=lambda entry: entry[0],
        )
        self._validators: dict[str, Draft202012Validator] = {}

    @staticmethod
    def _pattern(path: str) -> re.Pattern[str]:
        parts = _PARAMETER.split(path)
        return re.compile("[^/]+".join(re.escape(part) for part in parts) + r"\Z")

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        """The documented path and operation a request goes to, if any."""
        path = path.split("?", 1)[0]
        for _, template, pattern in self._paths:
            if pattern.match(path):
                item = self.doc["paths"][template].get(method.lower())
                return (template, item) if item is not None else None
        return None

    def _validator(self, ref: str) -> Draft202012Validator:
        validator = self._validators.get(ref)
        if validator is None:
            validator = Draft202012Validator(
                {"$ref": ref}, registry=self._registry, format_checker=self._formats
            )
            self._validators[ref] = validator
        return validator

    def _schema_problems(self, ref: str, body: bytes) -> list[str]:
        try:
            value = json.loads(body)
        except ValueError as e:
            return [f"the body is not JSON ({e}): {body[:200]!r}"]
        return [
            f"at {'/'.join(str(p) for p in error.absolute_path) or 'the top'}: {error.message}"
            for error in self._validator(ref).iter_errors(value)
        ]

    def problems(
        self, method: str, path: str, status: int, content_type: str | None, body: bytes
    ) -> list[str]:
        """What in an answer the document does not describe; empty if nothing."""
        if not path.startswith("/v1/"):
            return []  # The console's pages.
        media = (content_type or "").split(";")[0].strip().lower()
        found = self.operation(method, path)
        if found is None:
            code = _UNROUTED.get(status)
            if code is None:
                return [f"{method} {path} is not documented, and answered {status}"]
            problems = self._schema_problems(f"{_BASE}#/components/schemas/Error", body)
            if not problems and json.loads(body)["error"]["code"] != code:
                problems.append(f"an unrouted request answered {status} without {code}")
            return problems
        template, operation = found
        where = f"{method} {template} answered {status}"
        response = operation["responses"].get(str(status))
        if response is None:
            return [f"{where}, which is not documented: {body[:300]!r}"]
        content = response.get("content")
        if content is None:
            return [] if not body else [f"{where} with a body the document does not have"]
        if media not in content:
            return [f"{where} as {media or 'no media type'}, documented: {sorted(content)}"]
        if media != "application/json":
            return []
        ref = _BASE + "#" + pointer("paths", template, method.lower())
        ref += pointer("responses", str(status), "content", media, "schema")
        return [f"{where}: {problem}" for problem in self._schema_problems(ref, body)]


_shared: list[ResponseChecker] = []


def shared_checker() -> ResponseChecker:
    """One checker for every test: its compiled validators are kept."""
    if not _shared:
        _shared.append(ResponseChecker())
    return _shared[0]


class CheckedResource(Resource):
    """
    A resource that answers as C{inner} does and runs each finished answer
    through C{checker}, adding what it finds to C{problems}.  It sits
    under StubTreq, so every request a test sends is checked, the CLI's
    included.
    """

    isLeaf = True

    def __init__(self, inner: IResource, checker: ResponseChecker, problems: list[str]) -> None:
        super().__init__()
        self._inner = inner
        self._checker = checker
        self._problems = problems

    def render(self, request: Any) -> Any:
        chunks: list[bytes] = []
        write, finish = request.write, request.finish

        def capture(data: bytes) -> None:
            chunks.append(data)
            write(data)

        def check() -> None:
            kinds = request.responseHeaders.getRawHeaders(b"content-type") or [b""]
            self._problems.extend(
                self._checker.problems(
                    request.method.decode("latin-1"),
                    request.uri.decode("latin-1"),
                    request.code,
                    kinds[-1].decode("latin-1"),
                    b"".join(chunks),
                )
            )
            finish()

        request.write = capture
        request.finish = check
        return self._inner.render(request)
