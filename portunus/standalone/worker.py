"""
One worker process of a multi-process standalone forwarder.

Started by L{portunus.standalone.workers.WorkerSupervisor} as
C{python -m portunus.standalone.worker}, it inherits listening sockets
already bound by its parent, serves them with its own reactor and
Forwarder, writes its counters to stdout as one JSON line per report, and
drains and exits when told to (SIGTERM) or when its parent goes away (its
stdin closes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
from collections import defaultdict
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogBeginner
from twisted.python.failure import Failure

from portunus.dataplane import SUPPORTED_PROTOCOLS, BoundRule
from portunus.dataplane.listeners import BoundSocket
from portunus.logging import make_observer, parse_log_level
from portunus.reactors import IProcessReactor, installed_reactor
from portunus.standalone.config import StandaloneConfig, load_config
from portunus.standalone.forwarder import forwarder_for

__all__ = ["EXIT_CONFIG_CHANGED", "main"]

log = Logger()

#: The config file no longer matches what the parent validated and bound.
EXIT_CONFIG_CHANGED = 3
#: How often counters are sent to the parent.
REPORT_INTERVAL_SECS = 1.0


def config_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="portunus-standalone-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--config-sha256", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listeners", required=True, help="JSON list of inherited sockets")
    parser.add_argument("--log-level", default="warn")
    parser.add_argument("--log-format", default="json")
    return parser.parse_args(argv)


def _bound_rules(config: StandaloneConfig, listeners: list[dict[str, Any]]) -> list[BoundRule]:
    """
    Every rule of the config with the sockets inherited for it, in config
    order, except that the rules holding sockets come first: the SNI rules
    of a port share one listener, handed over with one of them, and it
    must be served before the others join it.
    """
    by_rule: dict[str, list[BoundSocket]] = defaultdict(list)
    for entry in listeners:
        sock = socket.socket(fileno=entry["fd"])
        by_rule[entry["rule"]].append(BoundSocket(sock, entry["address"], entry["port"]))
    bound = [BoundRule(rule, tuple(by_rule.get(rule.name, ()))) for rule in config.rules]
    return sorted(bound, key=lambda b: not b.sockets)


class _ParentLink(Protocol):
    """stdout carries reports to the parent; stdin closing means it is gone."""

    def __init__(self, reactor: IReactorCore) -> None:
        self._reactor = reactor

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._reactor.running:
            log.warn("parent process went away; draining", event="standalone.worker_orphaned")
            self._reactor.stop()


def run(reactor: IProcessReactor, args: argparse.Namespace) -> int:
    from twisted.internet import stdio

    level = parse_log_level(args.log_level)
    observer = make_observer(args.log_format, level, sys.stderr)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    if config_digest(args.config) != args.config_sha256:
        log.error(
            "{config} changed since the service started; restart the service to apply it",
            event="standalone.worker_config_changed",
            config=args.config,
        )
        return EXIT_CONFIG_CHANGED
    config = load_config(args.config, SUPPORTED_PROTOCOLS)
    forwarder = forwarder_for(config, reactor)
    for bound in _bound_rules(config, json.loads(args.listeners)):
        forwarder.activate(bound)

    link = _ParentLink(reactor)
    stdio.StandardIO(link, reactor=reactor)

    def report() -> None:
        assert link.transport is not None
        snapshot = {str(rule_id): stats.snapshot() for rule_id, stats in forwarder.stats().items()}
        link.transport.write(json.dumps({"rules": snapshot}).encode() + b"\n")

    reporter = LoopingCall(report)
    reporter.clock = reactor
    reporter.start(REPORT_INTERVAL_SECS, now=True)

    def drain() -> Deferred[Any]:
        if reporter.running:
            reporter.stop()
        report()
        return forwarder.stop(config.shutdown_drain_secs)

    reactor.addSystemEventTrigger("before", "shutdown", drain)
    log.info(
        "worker {index} serving {count} rule(s)",
        event="standalone.worker_started",
        index=args.index,
        pid=os.getpid(),
        count=len(forwarder.rules),
    )
    reactor.run()
    # A completed drain is a clean exit, whatever signal asked for it.
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(installed_reactor(), _parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
