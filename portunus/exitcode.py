"""
Stopping a running twistd process with a chosen exit status.

twistd exits 0 once the reactor stops (or re-raises a stopping signal); a
service that must fail after startup (the edge's pinned certificate does
not match) stops the reactor and leaves with its status from an C{after
shutdown} trigger, once every service has stopped and logs are flushed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

from twisted.internet.interfaces import IReactorCore

__all__ = ["stop_with_status"]


def stop_with_status(
    reactor: IReactorCore, status: int, _exit: Callable[[int], object] = os._exit
) -> None:
    """Stop C{reactor}; the process then exits with C{status}."""

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        _exit(status)

    reactor.addSystemEventTrigger("after", "shutdown", leave)
    if reactor.running:
        reactor.stop()
