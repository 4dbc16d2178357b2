"""
A flow's upstream socket never ends up connected to itself (a same-host
target port handed back to us as our own source port).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane.udp import SELF_CONNECT_RETRIES, SocketUpstreamOpener
from tests._net import LOOPBACK


def self_connected() -> socket.socket:
    """A UDP socket connected to its own address, as the kernel can hand out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.connect(sock.getsockname())
    return sock


class SelfConnectTests(SynchronousTestCase):
    def test_self_connected_socket_is_replaced(self) -> None:
        opened: list[socket.socket] = []
        real_open = SocketUpstreamOpener._open

        def fake_open(address: str, port: int) -> socket.socket:
            sock = self_connected() if not opened else real_open(address, port)
            opened.append(sock)
            return sock

        opener = SocketUpstreamOpener(MemoryReactor())
        opener._open = fake_open  # type: ignore[method-assign]
        upstream: Any = opener(LOOPBACK, 9, object())  # type: ignore[arg-type]
        self.addCleanup(opened[-1].close)
        self.assertEqual(len(opened), 2)
        self.assertEqual(opened[0].fileno(), -1, "the self-connected socket is closed")
        self.assertEqual(upstream.fileno(), opened[1].fileno())
        self.assertNotEqual(opened[1].getsockname(), opened[1].getpeername())

    def test_gives_up_after_the_retries(self) -> None:
        opened: list[socket.socket] = []

        def fake_open(address: str, port: int) -> socket.socket:
            opened.append(self_connected())
            return opened[-1]

        opener = SocketUpstreamOpener(MemoryReactor())
        opener._open = fake_open  # type: ignore[method-assign]
        error = self.assertRaises(OSError, opener, LOOPBACK, 9, object())
        self.assertEqual(error.errno, errno.EADDRINUSE)
        self.assertEqual(len(opened), SELF_CONNECT_RETRIES)
        self.assertTrue(all(s.fileno() == -1 for s in opened))
