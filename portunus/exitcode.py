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
from typing import Any

__all__ = ["stop_with_status"]


def stop_with_status(reactor: Any, status: int, _exit: Any = os._exit) -> None:
    """Stop C{reactor}; the process then exits with C{status}."""

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        _exit(status)

    reactor.addSystemEventTrigger("after", "shutdown", leave)
    if getattr(reactor, "running", False):
        reactor.stop()
