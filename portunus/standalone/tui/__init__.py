"""
C{portunus-standalone stats}: a client of the standalone's stats socket.

L{run_tui} runs the terminal UI, L{read_once} reads one Hello and one
Snapshot (C{--once}), L{send_request} sends a C{reload} or C{log-level}
request.  The terminal UI is drawn with urwid on Twisted's reactor.
"""

from portunus.standalone.tui.client import read_once, send_request
from portunus.standalone.tui.feed import FeedError
from portunus.standalone.tui.session import run_tui

__all__ = ["FeedError", "read_once", "run_tui", "send_request"]
