"""
C{twistd portunus-server}: listed so operators and packagers can find it.

The server is built by its own issue; until it lands, starting it says so
and exits rather than pretending to run.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    synopsis = ""
    longdesc = "The Portunus server is not implemented yet; use portunus-standalone."


def makeService(options: Options, reactor: Any = None) -> Any:
    raise SystemExit(
        "portunus-server is not implemented yet in this release; "
        "use 'twistd -n portunus-standalone --config portunus.toml' to forward ports"
    )
