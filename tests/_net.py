"""
Real-socket helpers for integration tests: loopback only, bounded loads.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

LOOPBACK = "127.0.0.1"


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> bool:
    """Can C{port} be bound on loopback now (TCP: TIME_WAIT leftovers aside)?"""
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def inode(fd: int) -> int:
    """The inode of the open file C{fd}: the same for a socket's duplicates."""
    return os.fstat(fd).st_ino


def free_port_range(
    count: int,
    kind: socket.SocketKind = socket.SOCK_STREAM,
    address: str = LOOPBACK,
) -> int:
    """
    The first of C{count} consecutive free ports of C{kind} on C{address},
    probed the way the forwarder binds (C{SO_REUSEADDR}, so TIME_WAIT
    leftovers do not count) and below Linux's ephemeral range, so outgoing
    connections never take one between the probe and the test's own bind.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    rng = random.Random()
    for _ in range(500):
        start = rng.randrange(20000, 32000 - count)
        socks = []
        try:
            for port in range(start, start + count):
                s = socket.socket(family, kind)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((address, port))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


@implementer(IHalfCloseableProtocol)
class EchoProtocol(Protocol):
    """Echoes with back-pressure; closes once the client's EOF is echoed."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self.transport, True)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


def echo_factory() -> Factory:
    return Factory.forProtocol(EchoProtocol)


@implementer(IHalfCloseableProtocol)
class HashingClient(Protocol):
    """
    Sends C{payload}, half-closes, and hashes everything it gets back;
    C{done} fires with (bytes received, sha256 hex) once the server closes.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = 0
        self.digest = hashlib.sha256()
        self.done: Deferred[tuple[int, str]] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.digest.update(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback((self.received, self.digest.hexdigest()))


class OneShotClientFactory(ClientFactory):
    """Connects one given protocol; a failed connect fails its C{done}."""

    def __init__(self, protocol: Any) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        p: Protocol = self.protocol_instance
        p.factory = self
        return p

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.protocol_instance.done.errback(reason)


@implementer(IHalfCloseableProtocol)
class ReplyAfterEof(Protocol):
    """Collects a request and answers only after the client's EOF."""

    def connectionMade(self) -> None:
        self.request = b""

    def dataReceived(self, data: bytes) -> None:
        self.request += data

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(b"got " + self.request)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class TaggedReply(ReplyAfterEof):
    """
    Answers C{<tag>:got <request>} after the client's EOF (the factory's
    C{tag}), so a test sees which target it reached; fires the Deferreds
    in the factory's C{arrived} list when a request's first bytes arrive.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        arrived: list[Deferred[None]] = getattr(self.factory, "arrived", [])
        while arrived:
            arrived.pop(0).callback(None)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(self.factory.tag + b":")  # type: ignore[attr-defined]
        super().readConnectionLost()


def tagged_factory(tag: bytes) -> Factory:
    factory = Factory.forProtocol(TaggedReply)
    factory.tag = tag  # type: ignore[attr-defined]
    factory.arrived = []  # type: ignore[attr-defined]
    return factory


class CollectingClient(Protocol):
    """
    Sends C{first} once connected (then half-closes, with C{half_close});
    C{done} fires with everything received once the connection ends.
    """

    def __init__(self, first: bytes, half_close: bool = False) -> None:
        self.first = first
        self.half_close = half_close
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.first)
        if self.half_close:
            self.transport.loseWriteConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.received)


def collect(reactor: Any, port: int, payload: bytes) -> Deferred[bytes]:
    """Send C{payload} to C{port} on 127.0.0.1, half-close; fire with the answer."""
    client = CollectingClient(payload, half_close=True)
    reactor.connectTCP(LOOPBACK, port, OneShotClientFactory(client), timeout=10)
    return client.done


class _Held(Protocol):
    """Says one byte and waits: answered (echoed) or closed by the other end."""

    def __init__(self, clients: HeldClients) -> None:
        self.clients = clients
        self.settled = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"x")

    def dataReceived(self, data: bytes) -> None:
        self._settle("answered")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._settle("closed")

    def _settle(self, how: str) -> None:
        if not self.settled:
            self.settled = True
            self.clients.settle(how)


class HeldClients(ClientFactory):
    """
    C{count} connections to C{host}:C{port} held open, each sending one
    byte to an echoing target: C{settled} fires once each was answered (it
    is relayed, and stays open) or closed (refused), and C{answered} and
    C{closed} count them.
    """

    noisy = False

    def __init__(self, reactor: Any, host: str, port: int, count: int) -> None:
        self.count = count
        self.answered = 0
        self.closed = 0
        self.protocols: list[_Held] = []
        self.settled: Deferred[None] = Deferred()
        for _ in range(count):
            reactor.connectTCP(host, port, self, timeout=10)

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = _Held(self)
        self.protocols.append(protocol)
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.settle("closed")

    def settle(self, how: str) -> None:
        if how == "answered":
            self.answered += 1
        else:
            self.closed += 1
        if self.answered + self.closed == self.count and not self.settled.called:
            self.settled.callback(None)

    def close(self) -> None:
        """Close every connection still open."""
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
