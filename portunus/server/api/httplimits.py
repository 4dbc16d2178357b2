"""
The operator API site's limits: request bodies bounded before they are
read, headers bounded, idle connections closed.

twisted.web reads a request's whole body before any resource sees it:
into memory below 100 kB, into a temporary file above that and for every
chunked body, whoever sends it.  L{CappedRequest}, the operator API
site's request factory, refuses a body over L{MAX_BODY_BYTES} as soon as
its size is known: from C{Content-Length} when the headers end (the body
is not waited for), or when a chunked body's running total crosses the
cap.  The refusal is C{413 body_too_large} in the API's error envelope,
then the connection closes: the rest of the body is never read, nothing
reaches the pipeline (so credentials do not matter), and nothing is ever
spooled to disk, because the body that is accepted is kept in memory.

Headers are bounded by twisted.web itself (L{HEADER_LIMITS}): the request
line and headers together at most 16,384 bytes, at most 500 header lines;
past either the connection gets C{400 Bad Request} and is closed.  A
connection with no request in progress is closed after
L{IDLE_TIMEOUT_SECS} without a byte (older twisted.web versions waited 12
hours); a request being answered, such as a live stats stream, is not cut.
L{apply_limits} puts all of this on a site.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from portunus.errors import PortunusError

__all__ = [
    "HEADER_LIMITS",
    "IDLE_TIMEOUT_SECS",
    "MAX_BODY_BYTES",
    "CappedRequest",
    "apply_limits",
    "refusal",
]

#: Request bodies larger than this are refused before they are read.
MAX_BODY_BYTES = 1 << 20

#: Seconds a connection may stay silent between requests before it is closed.
IDLE_TIMEOUT_SECS = 60

#: twisted.web's own bounds on what precedes the body: the request line
#: and the headers in bytes, and the number of header lines.
HEADER_LIMITS = {
    "header_bytes": HTTPChannel.totalHeadersSize,
    "header_lines": HTTPChannel.maxHeaders,
}


def refusal(limit: int) -> bytes:
    """The whole C{413} answer to a body over C{limit} bytes, closing the connection."""
    error = PortunusError(
        "body_too_large",
        f"the request body is larger than {limit} bytes; send at most {limit}",
        limit=limit,
    )
    body = json.dumps(error.to_json()).encode("utf-8")
    head = (
        "HTTP/1.1 413 Content Too Large\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


class CappedRequest(Request):
    """
    A twisted.web request whose body is held in memory and may not exceed
    C{max_body_bytes}; see the module's docstring.
    """

    #: The cap; a class attribute so a site may use a subclass with another.
    max_body_bytes = MAX_BODY_BYTES
    #: Whether this request's body was refused (nothing more is done with it).
    body_refused = False
    #: Body bytes received so far.
    body_received = 0

    def gotLength(self, length: int | None) -> None:
        """The headers are in: refuse a declared length over the cap at once."""
        self.content = BytesIO()
        if length is not None and length > self.max_body_bytes:
            # The channel answers "Expect: 100-continue" right after this
            # call; the client must not be invited to send the body.
            self.requestHeaders.removeHeader(b"expect")
            self.refuse_body()

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a piece of the body, unless the total crosses the cap."""
        if self.body_refused:
            return
        self.body_received += len(data)
        if self.body_received > self.max_body_bytes:
            self.refuse_body()
            return
        assert self.content is not None
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The body is complete: serve it, unless it was refused."""
        if self.body_refused:
            return
        super().requestReceived(command, path, version)

    def refuse_body(self) -> None:
        """Answer C{413 body_too_large} and close the connection without reading on."""
        self.body_refused = True
        self.content = BytesIO()
        channel: Any = self.channel
        if channel is None or channel.transport is None:
            return
        channel.transport.write(refusal(self.max_body_bytes))
        channel.loseConnection()


def apply_limits(site: Site) -> Site:
    """Give C{site} the operator API's limits: capped bodies, the idle timeout."""
    site.requestFactory = CappedRequest
    site.timeOut = IDLE_TIMEOUT_SECS
    return site
