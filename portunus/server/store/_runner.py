"""
Where named transactions run.

The store never touches its connection on the reactor thread: it hands a
transaction, with its name, to a L{Runner}.  The server's runner is one
worker thread that owns the connection (so transactions are serialized and
reads never see half-applied writes); unit tests run them inline.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Protocol, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["Runner", "ThreadPoolRunner", "Transact", "run_synchronously"]

T = TypeVar("T")


class Runner(Protocol):
    """Run C{fn} (a whole transaction called C{name}) and fire with its result."""

    def __call__(self, name: str, fn: Callable[[], T]) -> Deferred[T]: ...


class Transact(Protocol):
    """
    Run C{fn} on the store's connection as the transaction C{name}
    (C{BEGIN IMMEDIATE} when it C{write}s) and fire with its result.
    """

    def __call__(
        self, name: str, fn: Callable[[sqlite3.Connection], T], *, write: bool
    ) -> Deferred[T]: ...


def run_synchronously(name: str, fn: Callable[[], T]) -> Deferred[T]:
    """
    Run the transaction now, on the calling thread: the returned Deferred
    has already fired.  For unit tests and offline commands only.
    """
    return defer.execute(fn)


@attrs.frozen
class ThreadPoolRunner:
    """
    Run transactions on C{pool}, in submission order when the pool has one
    thread; results come back on the reactor thread.
    """

    reactor: IReactorFromThreads
    pool: ThreadPool

    def __call__(self, name: str, fn: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(self.reactor, self.pool, fn)
