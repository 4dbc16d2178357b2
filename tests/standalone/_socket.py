"""Stats sockets for tests: short paths, and a socket served with fake commands."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.trial.unittest import TestCase

from portunus.dataplane.stats import RuleStats
from portunus.model import Rule
from portunus.procstats import ProcessStats
from portunus.standalone.statsock import (
    StatsCommands,
    StatsPublisher,
    StatsSocketFactory,
    StatsSocketService,
)


def short_tmp_dir(case: TestCase, tag: str) -> str:
    """
    A directory under /tmp, removed after the test: mktemp() paths can pass
    the 107 bytes a Unix socket path may have.
    """
    path = f"/tmp/p-{tag}-{os.getpid()}-{id(case)}"
    case.addCleanup(shutil.rmtree, path, True)
    return path


def serve_stats_socket(
    case: TestCase,
    reactor: Any,
    commands: StatsCommands,
    rules: Sequence[Rule] = (),
    counters: Callable[[], Mapping[int, RuleStats]] = dict,
) -> str:
    """Serve a stats socket (refresh 250 ms) until the test ends; its path."""
    path = os.path.join(short_tmp_dir(case, "sock"), "s.sock")
    publisher = StatsPublisher(
        reactor,
        rules=lambda: rules,
        counters=counters,
        refresh_ms=250,
        splice=False,
        process=lambda: ProcessStats(1 << 20, 7, 1024, 0.0, 0.0),
    )
    service = StatsSocketService(reactor, path, StatsSocketFactory(reactor, publisher, commands))
    service.startService()
    case.addCleanup(service.stopService)
    return path
