"""
C{twistd -n portunus-client --bundle PATH}: an edge that forwards what its
server pushes.

Without C{--bundle} the bundle is looked up as Portunus does
(C{$PORTUNUS_CLIENT_BUNDLE}, then C{$XDG_CONFIG_HOME/portunus/...},
C{~/.config/portunus/...}, C{./client.bundle.json}).  When none exists and
C{PORTUNUS_ENROLL_URI} is set, the client enrolls first and writes the
bundle there (a container's first boot).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from portunus.bounds import MAX_CONNS_PER_RULE, RESERVE_FDS, WORKERS, Bound
from portunus.client.enroll import enroll
from portunus.client.forwarding import EdgeForwarder
from portunus.client.service import EdgeClientService, WorkerPoolService
from portunus.control.enrollment import (
    ENV_BUNDLE,
    default_bundle_paths,
    default_enroll_out,
    parse_enroll_uri,
    read_bundle,
    write_bundle,
)
from portunus.dataplane.descriptors import DescriptorBudget
from portunus.dataplane.forwarder import Forwarder
from portunus.dataplane.resolver import ResolverSettings, TargetResolver
from portunus.dataplane.rlimits import raise_nofile_limit
from portunus.dataplane.workers.forwarder import WorkerForwarder
from portunus.dataplane.workers.pool import parse_worker_count
from portunus.errors import PortunusError
from portunus.exitcode import stop_with_status
from portunus.logging import make_observer
from portunus.reactors import IProcessReactor, installed_reactor
from portunus.tapsupport import (
    LOG_OPTIONS,
    LoggingOptions,
    SighupService,
    install_log_observer,
    name_pidfile,
    open_log_sink,
)

__all__ = ["Options", "makeService"]

log = Logger()

ENROLL_URI_ENV = "PORTUNUS_ENROLL_URI"

#: twistd's pidfile unless --pidfile says otherwise (not twistd.pid: see name_pidfile).
PIDFILE = "portunus-client.pid"


def _positive(kind: type, name: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number, not {text!r}") from None
        if value <= 0:
            raise usage.UsageError(f"--{name} must be greater than 0")
        return value

    return parse


def _bounded(bound: Bound[int], name: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a whole number, not {text!r}") from None
        if value not in bound:
            raise usage.UsageError(f"--{name} must be {bound.span()}, not {value}")
        return value

    return parse


class Options(LoggingOptions):
    synopsis = "[--bundle PATH] [options]"
    longdesc = (
        "Run a Portunus edge: connect to the server named in the bundle (pinned TLS), "
        "apply the rules it pushes, report stats.  Create the bundle with "
        "'portunus-client enroll URI'."
    )
    optParameters = [
        ["bundle", "b", None, "Credential bundle (default: Portunus' lookup order)."],
        [
            "reconnect-initial-delay-ms",
            None,
            500,
            "First reconnect delay ceiling, ms.",
            _positive(int, "reconnect-initial-delay-ms"),
        ],
        [
            "reconnect-max-delay-secs",
            None,
            30,
            "Largest reconnect delay, s.",
            _positive(float, "reconnect-max-delay-secs"),
        ],
        [
            "shutdown-drain-timeout-secs",
            None,
            30,
            "How long removed rules and shutdown wait for connections, s.",
            _positive(float, "shutdown-drain-timeout-secs"),
        ],
        [
            "stats-report-interval-secs",
            None,
            5,
            "Seconds between stats reports to the server.",
            _positive(float, "stats-report-interval-secs"),
        ],
        [
            "workers",
            None,
            str(WORKERS.fallback),
            f"Processes forwarding the rules: a number ({WORKERS.span('-')}) or 'auto' "
            "(one per CPU).",
        ],
        [
            "max-conns-per-rule",
            None,
            None,
            f"Concurrent connections (or UDP flows) one rule may hold, {MAX_CONNS_PER_RULE.span()} "
            "(default: derived from the open-file limit).",
            _bounded(MAX_CONNS_PER_RULE, "max-conns-per-rule"),
        ],
        [
            "reserve-fds",
            None,
            None,
            f"Descriptors no connection may take, {RESERVE_FDS.span()} "
            "(default: an eighth of the open-file limit, at least 64).",
            _bounded(RESERVE_FDS, "reserve-fds"),
        ],
        *LOG_OPTIONS,
    ]

    def postOptions(self) -> None:
        super().postOptions()
        name_pidfile(self, PIDFILE)
        try:
            self.workers = parse_worker_count(self["workers"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class _EnrollFirst(Service):
    """Enrolls from C{PORTUNUS_ENROLL_URI}, then starts the edge."""

    def __init__(
        self, parent: MultiService, reactor: IProcessReactor, uri: str, path: str, build: Any
    ):
        self._parent = parent
        self._reactor = reactor
        self._uri = uri
        self._path = path
        self._build = build

    def startService(self) -> None:
        super().startService()
        d: Deferred[Any] = Deferred()
        d.callback(None)
        d.addCallback(lambda _: enroll(self._reactor, parse_enroll_uri(self._uri)))
        d.addCallback(self._enrolled)
        d.addErrback(self._failed)

    def _enrolled(self, bundle: Any) -> None:
        write_bundle(bundle, self._path)
        log.info(
            "enrolled as {client_name}; bundle written to {path}",
            event="client.enrolled",
            client_name=bundle.client_name,
            path=self._path,
        )
        self._build(bundle).setServiceParent(self._parent)

    def _failed(self, failure: Any) -> None:
        error = failure.value
        log.critical(
            "self-enrollment from {env} failed: {why}",
            event="client.enrollment_failed",
            env=ENROLL_URI_ENV,
            why=getattr(error, "message", str(error)),
        )
        stop_with_status(self._reactor, 1)


def _find_bundle(options: Options, environ: dict[str, str]) -> tuple[str | None, list[str]]:
    if options["bundle"]:
        return options["bundle"], [options["bundle"]]
    tried = default_bundle_paths(environ)
    for path in tried:
        if os.path.isfile(path):
            return path, tried
    return None, tried


def makeService(options: Options, reactor: IProcessReactor | None = None) -> IService:
    if reactor is None:
        reactor = installed_reactor()
    environ = dict(os.environ)
    sink = open_log_sink(options)
    observer = make_observer(options["log-format"], options.level, sink)
    budget = DescriptorBudget.for_limit(
        reserve=options["reserve-fds"], per_rule=options["max-conns-per-rule"]
    )
    root = _Root(observer, budget)
    SighupService(reactor, sink).setServiceParent(root)

    def build(bundle: Any) -> IService:
        drain = options["shutdown-drain-timeout-secs"]
        pool = None
        forwarder: EdgeForwarder
        if options.workers > 1:
            forwarder = pool = WorkerForwarder(
                reactor,
                options.workers,
                event_prefix="client",
                resolver=ResolverSettings(),
                drain_secs=drain,
                report_secs=options["stats-report-interval-secs"],
                log_level=options["log-level"],
                log_format=options["log-format"],
                reserve_fds=options["reserve-fds"],
                max_conns_per_rule=options["max-conns-per-rule"],
            )
        else:
            forwarder = Forwarder(
                reactor, resolver=TargetResolver(reactor, ResolverSettings()), budget=budget
            )
        edge = EdgeClientService(
            bundle,
            reactor,
            forwarder,
            initial_delay=options["reconnect-initial-delay-ms"] / 1000.0,
            max_delay=options["reconnect-max-delay-secs"],
            drain_timeout=drain,
            stats_interval=options["stats-report-interval-secs"],
        )
        if pool is None:
            return edge
        # Workers start before the first push; the edge's stop drains them
        # (its agent stops the forwarder) and lets them exit.
        both = MultiService()
        WorkerPoolService(pool).setServiceParent(both)
        edge.setServiceParent(both)
        return both

    path, tried = _find_bundle(options, environ)
    enroll_uri = environ.get(ENROLL_URI_ENV, "").strip()
    if path is None or (not os.path.isfile(path) and enroll_uri):
        if not enroll_uri:
            sys.stderr.write(
                "error: no client bundle found; tried:\n"
                + "".join(f"  - {p}\n" for p in tried)
                + "enroll first: portunus-client enroll 'portunus://...'\n"
            )
            raise SystemExit(1)
        try:
            parse_enroll_uri(enroll_uri)
        except PortunusError as e:
            sys.stderr.write(f"error: {ENROLL_URI_ENV}: {e.message}\n")
            raise SystemExit(1) from None
        target = path or environ.get(ENV_BUNDLE, "").strip() or default_enroll_out(environ)
        _EnrollFirst(root, reactor, enroll_uri, target, build).setServiceParent(root)
        return root
    try:
        bundle = read_bundle(path)
    except PortunusError as e:
        sys.stderr.write(f"error: {e.message}\n")
        raise SystemExit(1) from None
    build(bundle).setServiceParent(root)
    return root


class _Root(MultiService):
    """Installs the chosen log observer on the twistd application."""

    def __init__(self, observer: Any, budget: DescriptorBudget | None = None) -> None:
        super().__init__()
        self._observer = observer
        #: The in-process data plane's (workers derive theirs alike).
        self.budget = budget if budget is not None else DescriptorBudget()

    def setServiceParent(self, parent: Any) -> None:
        install_log_observer(parent, self._observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        # Before the workers start: they inherit the limit.
        raise_nofile_limit("client")
        self.budget.configure()
        self.budget.log_settings("client")
        super().startService()
