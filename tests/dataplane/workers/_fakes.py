"""
Fakes for worker processes: a link transport that records the
descriptors it is asked to send, frames to feed a link, process exits;
and the events logged.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

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


def ended(code: int | None = 0, signal: int | None = None) -> Failure:
    """How a worker process's exit reaches processEnded."""
    if code == 0:
        return Failure(ProcessDone(0))
    return Failure(ProcessTerminated(exitCode=code, signal=signal))


def logged(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """Every event logged from now until the test ends."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def drain_and_exit(workers: list[WorkerProcess]) -> list[dict[str, Any]]:
    """
    Each worker answers the removals it was sent (nothing cut), then exits
    if told to; return the removals.
    """
    removals = []
    for worker in workers:
        for message in link_of(worker).messages():
            if message["op"] == "remove":
                removals.append(message)
                reply(worker, {"op": "removed", "key": message["key"], "cut": 0})
    for worker in list(workers):
        if any(m["op"] == "exit" for m in link_of(worker).messages()):
            worker.processEnded(ended(0))
    return removals
