"""
One worker process of a data plane started with C{--workers N}.

Started by L{portunus.dataplane.workers.forwarder.WorkerForwarder} as
C{python -m portunus.dataplane.workers.worker}, it holds one end of a
socketpair to its main process (a L{WorkerLink} on descriptor
C{--link-fd}).  Over it the main process hands over each rule with its
bound listening sockets; the worker serves them with its own reactor and
L{Forwarder}, removes them when told, and reports its counters every
C{--report-secs} (as often as the main process reads them).

It drains and exits on SIGTERM or SIGINT, when the main process says
C{exit}, and when the link closes (the main process is gone).

The main process logs C{rule.activated} and C{rule.removed} once for all
its workers, so a worker leaves those out of its log; every event it does
log carries C{worker}, its index.  Its own events are named after the
role running it (C{--event-prefix}: C{client.worker_started} ...).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogBeginner
from twisted.python.failure import Failure

from portunus.dataplane.descriptors import DescriptorBudget
from portunus.dataplane.forwarder import DEFAULT_DRAIN_SECS, BoundRule, Forwarder
from portunus.dataplane.listeners import BoundSocket
from portunus.dataplane.resolver import ResolverSettings, TargetResolver
from portunus.dataplane.workers.link import OneLinkFactory, WorkerLink
from portunus.errors import PortunusError
from portunus.logging import make_observer, parse_log_level
from portunus.reactors import IProcessReactor, installed_reactor
from portunus.rulejson import RuleDecodeError, rule_from_dict

__all__ = ["REPORT_INTERVAL_SECS", "WorkerRules", "main", "worker_observer"]

log = Logger()

#: How often counters are sent to the main process, unless C{--report-secs}
#: says otherwise.
REPORT_INTERVAL_SECS = 1.0

#: Logged once for all the workers, by the main process.
PARENT_EVENTS = frozenset({"rule.activated", "rule.removed"})


class WorkerRules:
    """The rules this worker serves, as the main process's messages say."""

    def __init__(
        self,
        forwarder: Forwarder,
        send: Callable[[dict[str, Any]], None],
        event_prefix: str,
        port_stats: bool = True,
    ) -> None:
        """@param port_stats: whether reports carry each port's counters."""
        self.forwarder = forwarder
        self._send = send
        self._event_prefix = event_prefix
        self._port_stats = port_stats
        #: The main process's key of each rule served -> the rule's id.
        self._ids: dict[int, int] = {}
        #: Rules draining, by key: who waits for each to finish.
        self._drains: dict[int, list[Deferred[int]]] = {}

    def handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        if op == "add":
            self.add(message, fds)
            return
        for fd in fds:
            os.close(fd)
        if op == "remove":
            key = int(message["key"])
            d = self.remove(key, float(message.get("drain", DEFAULT_DRAIN_SECS)))
            d.addCallback(lambda cut: self._send({"op": "removed", "key": key, "cut": cut}))
        else:
            log.warn(
                "unknown message {op!r} from the main process",
                event=f"{self._event_prefix}.worker_bad_message",
                op=op,
            )

    def add(self, message: dict[str, Any], fds: list[int]) -> None:
        """Adopt the handed-over sockets and serve the rule; say how it went."""
        key = int(message.get("key", -1))
        sockets: list[BoundSocket] = []
        try:
            entries = message.get("sockets", [])
            if len(entries) != len(fds):
                raise ValueError(f"{len(fds)} descriptors for {len(entries)} sockets")
            while fds:
                entry = entries[len(sockets)]
                sock = socket.socket(fileno=fds.pop(0))
                sockets.append(BoundSocket(sock, str(entry["address"]), int(entry["port"])))
            rule = rule_from_dict(message["rule"])
            self.forwarder.activate(BoundRule(rule, tuple(sockets)))
        except (RuleDecodeError, PortunusError, OSError, ValueError, KeyError, TypeError) as e:
            for fd in fds:
                os.close(fd)
            for bound in sockets:
                bound.sock.close()
            code = e.code if isinstance(e, PortunusError) else "bind_failed"
            text = e.message if isinstance(e, PortunusError) else str(e)
            log.error(
                "could not serve rule key {key}: {code}: {message}",
                event=f"{self._event_prefix}.worker_rule_failed",
                key=key,
                code=code,
                message=text,
            )
            self._send({"op": "add_failed", "key": key, "code": code, "message": text})
            return
        self._ids[key] = rule.id
        self._send({"op": "added", "key": key})

    def remove(self, key: int, drain: float) -> Deferred[int]:
        """Stop the rule's listeners now; fire with the connections cut after C{drain}."""
        waiter: Deferred[int] = Deferred()
        if key in self._drains:
            self._drains[key].append(waiter)
            return waiter
        rule_id = self._ids.pop(key, None)
        if rule_id is None:
            return succeed(0)
        self._drains[key] = [waiter]

        def drained(result: int | Failure) -> None:
            if isinstance(result, Failure):
                log.failure("draining rule {rule_id}", result, rule_id=rule_id)
            for w in self._drains.pop(key):
                w.callback(result if isinstance(result, int) else 0)

        self.forwarder.remove(rule_id, drain).addBoth(drained)
        return waiter

    def stop(self, drain: float) -> Deferred[Any]:
        """Drain every rule (those already draining included), then the resolver."""
        keys = [*self._drains, *self._ids]
        waits = [self.remove(key, drain) for key in keys]
        return DeferredList(waits).addCallback(lambda _: self.forwarder.stop(drain))

    def report(self) -> dict[str, Any]:
        """Counters and target health of every rule served, by key."""
        stats = self.forwarder.stats()
        rules = {}
        for key, rule_id in self._ids.items():
            rules[str(key)] = {
                "stats": stats[rule_id].snapshot(per_port=self._port_stats),
                "targets": self.forwarder.target_states(rule_id),
            }
        return {"op": "report", "rules": rules}


def worker_observer(observer: ILogObserver, index: int) -> ILogObserver:
    """Tag every event with the worker's index; leave out the main process's events."""

    def observe(event: LogEvent) -> None:
        if event.get("event") in PARENT_EVENTS:
            return
        observer({**event, "worker": index})

    return cast(ILogObserver, observe)


def apply_log_level(observer: ILogObserver, name: object, event_prefix: str) -> None:
    """The main process's C{log_level} order: C{observer} logs at that level from now on."""
    try:
        level = parse_log_level(str(name))
    except ValueError:
        log.warn(
            "the main process sent an unknown log level {name}",
            event=f"{event_prefix}.worker_bad_log_level",
            name=str(name)[:64],
        )
        return
    observer.level = level  # type: ignore[attr-defined]


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="portunus-worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--event-prefix", required=True, help="client or standalone")
    parser.add_argument("--link-fd", type=int, required=True)
    parser.add_argument("--drain-secs", type=float, default=DEFAULT_DRAIN_SECS)
    parser.add_argument("--report-secs", type=float, default=REPORT_INTERVAL_SECS)
    parser.add_argument("--no-port-stats", dest="port_stats", action="store_false")
    parser.add_argument(
        "--resolver", help="ResolverSettings as JSON; without, names go to the reactor's resolver"
    )
    parser.add_argument("--reserve-fds", type=int, default=None)
    parser.add_argument("--max-conns-per-rule", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="json")
    return parser.parse_args(argv)


def run(reactor: IProcessReactor, args: argparse.Namespace) -> int:
    observer = make_observer(args.log_format, parse_log_level(args.log_level), sys.stderr)
    globalLogBeginner.beginLoggingTo(
        [worker_observer(observer, args.index)], redirectStandardIO=False
    )
    resolver = None
    if args.resolver is not None:
        resolver = TargetResolver(reactor, ResolverSettings(**json.loads(args.resolver)))
    budget = DescriptorBudget.for_limit(reserve=args.reserve_fds, per_rule=args.max_conns_per_rule)
    forwarder = Forwarder(reactor, resolver=resolver, budget=budget)
    stopping = False

    def shut_down() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            reactor.stop()

    def on_message(message: dict[str, Any], fds: list[int]) -> None:
        if message.get("op") == "exit":
            shut_down()
        elif message.get("op") == "log_level":
            apply_log_level(observer, message.get("level"), args.event_prefix)
        else:
            rules.handle(message, fds)

    def on_lost(reason: Failure) -> None:
        if not stopping:
            log.warn(
                "the main process went away; draining",
                event=f"{args.event_prefix}.worker_orphaned",
            )
            shut_down()

    link = WorkerLink(on_message, on_lost, event_prefix=args.event_prefix)
    rules = WorkerRules(forwarder, link.send, args.event_prefix, args.port_stats)
    sock = socket.socket(fileno=args.link_fd)
    sock.setblocking(False)
    try:
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, OneLinkFactory(link))
    finally:
        sock.close()

    reporter = LoopingCall(lambda: link.send(rules.report()))
    reporter.clock = reactor
    reporter.start(args.report_secs, now=False)

    def drain() -> Deferred[Any]:
        if reporter.running:
            reporter.stop()
        return rules.stop(args.drain_secs)

    reactor.addSystemEventTrigger("before", "shutdown", drain)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: reactor.callFromThread(shut_down))
    # A hangup that reaches the whole process group (a closed terminal) must
    # not stop the workers while the edge, which handles it, runs on.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info(
        "worker {index} started (pid {pid})",
        event=f"{args.event_prefix}.worker_started",
        index=args.index,
        pid=os.getpid(),
    )
    reactor.run(installSignalHandlers=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(installed_reactor(), _parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
