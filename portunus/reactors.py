"""
The reactor capabilities each part of Portunus needs, as static types.

Twisted splits what a reactor does into interfaces (L{IReactorTime},
L{IReactorTCP}, ...).  A part that needs one takes a parameter typed with
it; a part that needs several takes one typed with an interface below,
which extends them all: a value of it passes wherever one of its parts is
asked for.  They exist for the type checker only: no reactor declares them,
nothing calls C{providedBy} on them, and tests pass fakes that provide
just what is used.  L{installed_reactor} hands the twistd entry points the
global reactor typed with all of them; C{tests/test_reactors.py} checks
that it really provides every interface they extend.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorProcess,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    IReactorUNIX,
)

__all__ = [
    "IDataplaneReactor",
    "IProcessReactor",
    "IStatsClientReactor",
    "IStatsSocketReactor",
    "IStoreReactor",
    "installed_reactor",
]


class IStoreReactor(IReactorCore, IReactorTime, IReactorFromThreads):
    """
    What the store's worker thread needs: startup and shutdown triggers, the
    time, and results handed back to the reactor thread.
    """


class IDataplaneReactor(
    IReactorTCP,
    IReactorUDP,
    IReactorTime,
    IReactorFDSet,
    IReactorSocket,
    IReactorPluggableNameResolver,
):
    """
    What the forwarder needs: TCP and UDP, timers, its own descriptors
    (splice, non-blocking dials, UDP upstreams), adopted sockets (worker
    processes) and the name resolver.
    """


class IStatsSocketReactor(IReactorUNIX, IReactorTime):
    """What either end of the standalone's stats socket needs: a Unix socket and timers."""


class IStatsClientReactor(IStatsSocketReactor, IReactorTCP, IReactorFDSet):
    """
    What C{portunus-standalone stats} needs: the stats socket, TCP probes,
    timers, and the terminal's descriptors (urwid reads them on the reactor).
    """


class IProcessReactor(IDataplaneReactor, IStoreReactor, IStatsSocketReactor, IReactorProcess):
    """What a whole Portunus process (server, edge, standalone) uses of its reactor."""

    def run(installSignalHandlers: bool = True) -> None:
        """
        L{IReactorCore.run}, with the keyword every Twisted reactor's C{run}
        takes (C{ReactorBase.run}): a worker process leaves signals to its
        parent.
        """


def installed_reactor() -> IProcessReactor:
    """
    The global reactor: the one twistd installed, else the default.  Only
    the twistd entry points call this; everything else is given a reactor.
    """
    from twisted.internet import reactor

    return cast(IProcessReactor, reactor)
