"""
The server's HTTP sites (the operator API with the console, and the
metrics listener) without Twisted's access log.

Twisted writes one combined-log line per request at info, for anyone who
can reach the port, credentials or not; with C{--log-level debug} the API
site logs C{api.request} per request instead (method, path without the
query, status, bytes sent, peer), and the metrics site, scraped every few
seconds, logs nothing per request.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.http import Request
from twisted.web.server import Site

__all__ = ["QuietSite"]

log = Logger(namespace="portunus.server.api")


class QuietSite(Site):
    """
    A L{Site} that never logs its factory's start and stop, and logs each
    request as C{request_event} at debug (C{None}: not at all).
    """

    noisy = False

    def __init__(self, resource: Any, request_event: str | None = None) -> None:
        super().__init__(resource)
        self._request_event = request_event

    def log(self, request: Request) -> None:
        if self._request_event is None:
            return
        peer = request.getClientAddress()
        log.debug(
            "{method} {path} -> {status}",
            event=self._request_event,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            status=request.code,
            bytes=request.sentLength,
            remote=getattr(peer, "host", None),
        )
