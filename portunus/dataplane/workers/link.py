"""
The link between a main process and one of its worker processes.

One UNIX-domain socketpair per worker carries JSON messages, each framed
by a 4-byte big-endian length, and the listening sockets the messages
hand over (C{SCM_RIGHTS}).  A message that carries descriptors says how
many (C{"fds": n}); the sender queues them on the transport just before
the message's bytes, and Twisted sends each with one byte of the stream,
so they reach the receiver in order and no later than the message
itself, which takes the next C{n} from the descriptors received so far.

The sender keeps its descriptors open until the peer acknowledges the
message: Twisted sends a queued descriptor by number, when the socket
has room, and a number closed meanwhile could name another file.

Messages, parent to worker::

    {"op": "add", "key": K, "rule": {...rulejson...}, "sockets": [{"address", "port"}...]}
    {"op": "remove", "key": K, "drain": seconds}
    {"op": "log_level", "level": "debug"}

and worker to parent::

    {"op": "added", "key": K}
    {"op": "add_failed", "key": K, "code": "...", "message": "..."}
    {"op": "removed", "key": K, "cut": n}
    {"op": "report", "rules": {"K": {"stats": {...}, "targets": [...] | null}}}

C{K} is the parent's key for one installation of a rule: a rule replaced
under the same id gets a new key, so a report that crosses a replacement
is never mistaken for the new rule's.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["MAX_MESSAGE_BYTES", "OneLinkFactory", "WorkerLink"]

log = Logger()

#: The largest message either side accepts (a rule with many ports and
#: targets stays far below it).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_LOST = Failure(ConnectionDone())

OnMessage = Callable[[dict[str, Any], list[int]], None]


@implementer(IFileDescriptorReceiver)
class WorkerLink(Int32StringReceiver):
    """Length-prefixed JSON messages, each with its file descriptors."""

    MAX_LENGTH = MAX_MESSAGE_BYTES

    def __init__(
        self,
        on_message: OnMessage,
        on_lost: Callable[[Failure], None] = lambda reason: None,
        *,
        event_prefix: str,
    ) -> None:
        """
        @param event_prefix: the role running the workers (C{client},
            C{standalone}), the first part of the link's log events.
        """
        self._on_message = on_message
        self._on_lost = on_lost
        self._event_prefix = event_prefix
        self._fds: deque[int] = deque()

    def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        """Send C{message} and the descriptors it hands over (kept open by the caller)."""
        if self.transport is None or not self.connected:
            return
        body = dict(message)
        if fds:
            body["fds"] = len(fds)
        # Each descriptor travels with one byte of the stream; a message
        # describes each socket it hands over in far more than one.
        data = json.dumps(body, separators=(",", ":")).encode()
        for fd in fds:
            self.transport.sendFileDescriptor(fd)  # type: ignore[attr-defined]
        self.sendString(data)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._fds.append(descriptor)

    def stringReceived(self, string: bytes) -> None:
        try:
            message = json.loads(string)
            count = int(message.get("fds", 0))
        except (ValueError, TypeError, AttributeError):
            self._broken("an unreadable message")
            return
        if count > len(self._fds):
            self._broken(f"a message naming {count} descriptors it did not send")
            return
        fds = [self._fds.popleft() for _ in range(count)]
        self._on_message(message, fds)

    def lengthLimitExceeded(self, length: int) -> None:
        self._broken(f"a {length}-byte message")

    def _broken(self, what: str) -> None:
        log.error(
            "worker link received {what}; closing it",
            event=f"{self._event_prefix}.worker_link_broken",
            what=what,
        )
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = _LOST) -> None:
        self.connected = False
        while self._fds:
            os.close(self._fds.popleft())
        self._on_lost(reason)


class OneLinkFactory(ServerFactory):
    """Gives an adopted socket the link made for it."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> WorkerLink:
        return self.link
