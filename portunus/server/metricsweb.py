"""
The metrics listener: C{GET /metrics} in the Prometheus text format.

It is unauthenticated, which is why C{metrics_listen} must be a loopback
address (the settings refuse anything else); operators who need metrics
remotely scrape C{/v1/metrics} on the operator API with a superadmin
credential.  The exposition is rendered in the reactor thread: it reads
in-memory state only, so it is quick and needs no locking.
"""

from __future__ import annotations

from typing import Protocol

from twisted.web.resource import Resource
from twisted.web.server import Request

from portunus.server.metrics import CONTENT_TYPE

__all__ = ["MetricsRoot"]


class _Plain(Resource):
    """A short plain-text answer with a status code."""

    isLeaf = True

    def __init__(self, code: int, message: str, allow: bytes | None = None) -> None:
        super().__init__()
        self._code = code
        self._message = message
        self._allow = allow

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self._allow is not None:
            request.setHeader(b"allow", self._allow)
        if request.method == b"HEAD":
            return b""
        return (self._message + "\n").encode("utf-8")


class _Renders(Protocol):
    def render(self) -> bytes: ...


_NOT_FOUND = _Plain(404, "not found: metrics are served at /metrics")


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, metrics: _Renders) -> None:
        super().__init__()
        self._metrics = metrics

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _Plain(405, "method not allowed: use GET", allow=b"GET, HEAD").render(request)
        body = self._metrics.render()
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return b"" if request.method == b"HEAD" else body


class MetricsRoot(Resource):
    """
    The site root of the metrics listener: C{/metrics} and nothing else.
    C{metrics} is anything with C{render() -> bytes} (a L{ServerMetrics}).
    """

    def __init__(self, metrics: _Renders) -> None:
        super().__init__()
        self._metrics = _Metrics(metrics)

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"metrics" and not request.postpath:
            return self._metrics
        return _NOT_FOUND

    def render(self, request: Request) -> bytes:
        return _NOT_FOUND.render(request)
