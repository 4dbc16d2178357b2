"""
A bounded HTTP/1.1 load generator for end-to-end tests: a few keep-alive
connections to 127.0.0.1, each pipelining its share of a fixed number of
requests with a bounded window in flight, counting the answers' statuses.

Cheap on the client side (no HTTP client library per request), so the
server under test, not the generator, is what the test measures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from tests._net import LOOPBACK

__all__ = ["pipeline_load"]


class _Pipeliner(Protocol):
    """Sends C{total} requests (cycling through C{requests}), C{window} at a time."""

    def __init__(self, requests: Sequence[bytes], total: int, window: int) -> None:
        self._requests = requests
        self._total = total
        self._window = window
        self._sent = 0
        self._buffer = bytearray()
        self.statuses: Counter[int] = Counter()
        self.done: Deferred[Counter[int]] = Deferred()

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    def connectionMade(self) -> None:
        self._send(min(self._window, self._total))

    def _send(self, count: int) -> None:
        assert self.transport is not None
        batch = []
        for _ in range(count):
            batch.append(self._requests[self._sent % len(self._requests)])
            self._sent += 1
        if batch:
            self.transport.write(b"".join(batch))

    def _answer_end(self) -> tuple[int, int] | None:
        """The status and length of the first complete answer buffered, if any."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        at = end + 4
        if fields.get("transfer-encoding") != "chunked":
            at += int(fields.get("content-length", "0"))
            return (status, at) if len(buffer) >= at else None
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
            at = line_end + 2 + size + 2
            if len(buffer) < at:
                return None
            if size == 0:
                return status, at

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        answered = 0
        while (answer := self._answer_end()) is not None:
            status, length = answer
            del self._buffer[:length]
            self.statuses[status] += 1
            answered += 1
        if self.answered >= self._total:
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            self._send(min(answered, self._total - self._sent))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.answered >= self._total:
            self.done.callback(self.statuses)
        else:
            self.done.errback(
                AssertionError(
                    f"connection lost after {self.answered} of {self._total} answers: {reason}"
                )
            )


class _OneConnection(ClientFactory):
    def __init__(self, protocol: _Pipeliner) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> _Pipeliner:
        return self._protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._protocol.done.errback(reason)


def pipeline_load(
    reactor: Any,
    port: int,
    requests: Sequence[bytes],
    total: int,
    *,
    connections: int = 4,
    window: int = 64,
) -> Deferred[Counter[int]]:
    """
    Send C{total} requests to 127.0.0.1:C{port} over C{connections}
    keep-alive connections, cycling through C{requests} (each a complete
    HTTP/1.1 request); fire with the count of answers by status once every
    one is answered, or fail if a connection ends first.
    """
    shares = [
        total // connections + (1 if i < total % connections else 0) for i in range(connections)
    ]
    pipeliners = [_Pipeliner(requests, share, window) for share in shares if share]
    for pipeliner in pipeliners:
        reactor.connectTCP(LOOPBACK, port, _OneConnection(pipeliner), timeout=10)

    def summed(results: list[Counter[int]]) -> Counter[int]:
        total_statuses: Counter[int] = Counter()
        for statuses in results:
            total_statuses.update(statuses)
        return total_statuses

    return gatherResults([p.done for p in pipeliners], consumeErrors=True).addCallback(summed)
