"""
Fakes for worker processes: a link transport that records the
descriptors it is asked to send, and frames to feed a link.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.testing import StringTransport

from portunus.dataplane.workers.process import WorkerProcess


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack("!I", len(body)) + body


def decode(data: bytes) -> list[dict[str, Any]]:
    messages = []
    while data:
        (length,) = struct.unpack("!I", data[:4])
        messages.append(json.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    return messages


class FdTransport(StringTransport):
    """A StringTransport that also records the descriptors sent over it."""

    def __init__(self) -> None:
        super().__init__()
        self.fds: list[int] = []

    def sendFileDescriptor(self, fd: int) -> None:
        self.fds.append(fd)

    def messages(self) -> list[dict[str, Any]]:
        """Everything written so far, decoded; the record is cleared."""
        data = self.value()
        self.clear()
        return decode(data)


class FakeProcessTransport:
    def __init__(self) -> None:
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeLauncher:
    """Connects each worker to fake transports instead of starting a process."""

    def __init__(self) -> None:
        self.launched: list[WorkerProcess] = []

    def __call__(self, worker: WorkerProcess) -> None:
        worker.link.makeConnection(FdTransport())
        worker.makeConnection(FakeProcessTransport())  # type: ignore[arg-type]
        self.launched.append(worker)


def link_of(worker: WorkerProcess) -> FdTransport:
    transport = worker.link.transport
    assert isinstance(transport, FdTransport)
    return transport


def process_of(worker: WorkerProcess) -> FakeProcessTransport:
    transport = worker.transport
    assert isinstance(transport, FakeProcessTransport)
    return transport


def reply(worker: WorkerProcess, message: dict[str, Any]) -> None:
    """The worker process says C{message} to the main process."""
    worker.link.dataReceived(frame(message))
