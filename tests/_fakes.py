"""
Test doubles shared across the suite.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer


@implementer(ITCPTransport)
class FakeTCPTransport(StringTransport):
    """
    A StringTransport with the TCP-only calls the relay makes: half-close,
    TCP_NODELAY and a handle for socket options.
    """

    def __init__(self) -> None:
        super().__init__()
        self.write_closed = False
        self.no_delay = False
        self.socket_options: list[tuple[int, int, Any]] = []

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def getTcpNoDelay(self) -> bool:
        return self.no_delay

    def getHandle(self) -> FakeTCPTransport:
        return self

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.socket_options.append((level, option, value))
