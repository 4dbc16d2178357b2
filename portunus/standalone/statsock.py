"""
The standalone's stats socket: Portunus' NDJSON protocol v1 on a Unix socket.

A client connects and reads one JSON object per line: first a I{Hello}
(protocol version, daemon version and start time, refresh period, the
rules with their targets and capabilities), then a I{Snapshot} every
C{refresh_ms} (wall time, uptime, a sequence number, the process's memory
and descriptors, each rule's counters).  C{portunus-standalone stats}
draws them; anything that reads lines of JSON can too.

A client may also write one-line JSON requests, C{{"cmd": "reload"}} and
C{{"cmd": "log-level", "spec": "debug"}}; each gets one reply line
(C{{"reply": CMD, "ok": ...}}) between the snapshots.  Portunus' socket
only speaks; its readers ignore lines they do not know, so replies do not
disturb them.

Limits, as Portunus: at most 16 clients at once (the 17th is accepted and
dropped at once, logged as C{standalone.stats_conn_limit_reached}), and a
client whose line could not be handed to the kernel within 5 s is dropped
(C{standalone.stats_client_slow}): snapshots are not queued for a client
that does not read, so each costs at most one socket buffer.

The socket file is made owner and group only (0660) inside a directory
created 0750 when missing; a stale socket file is replaced, a live one
(another instance answering) or anything that is not a socket is left
alone.  Failing to bind is logged (C{standalone.stats_socket_bind_failed})
and is not fatal: forwarding matters more than watching it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from portunus import __version__
from portunus.dataplane.stats import RuleStats
from portunus.errors import PortunusError
from portunus.model import Protocol, Rule
from portunus.procstats import ProcessStats, read_process_stats
from portunus.reactors import IStatsSocketReactor

__all__ = [
    "DIRECTORY_MODE",
    "ERROR_COUNTERS",
    "MAX_CLIENTS",
    "MAX_QUEUED_REQUESTS",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "SOCKET_MODE",
    "WRITE_TIMEOUT_SECS",
    "StatsCommands",
    "StatsPublisher",
    "StatsSocketFactory",
    "StatsSocketService",
    "encode_line",
]

log = Logger()

PROTOCOL_VERSION = 1
#: Clients served at once; more are accepted and dropped.
MAX_CLIENTS = 16
#: How long a line may wait for a client that does not read.
WRITE_TIMEOUT_SECS = 5.0
#: A request line longer than this drops the connection.
MAX_REQUEST_BYTES = 4096
#: Sequence numbers wrap from here back to 1, as Portunus' u64.
_SEQ_WRAP = 2**64 - 1
#: The socket file's mode: its owner and group may connect.
SOCKET_MODE = 0o660
#: The mode of the socket's directory when this process creates it.
DIRECTORY_MODE = 0o750
#: Requests a client may have waiting; more drop it.
MAX_QUEUED_REQUESTS = 16
#: Connections over the limit are logged at most this often.
_LIMIT_LOG_INTERVAL_SECS = 60.0

#: Snapshot C{err} keys (Portunus' names) and the counters behind them.
#: Portunus' C{port_in_use} (the standalone refuses to start instead),
#: C{emsgsize}, C{wouldblock} and C{addflow_dropped} (all counted in
#: C{send_dropped} here) have no counter of their own; C{rate_limit_rejects}
#: is ours.
ERROR_COUNTERS: tuple[tuple[str, str], ...] = (
    ("upstream_connect_failed", "connect_failures"),
    ("icmp_evict", "icmp_evictions"),
    ("flows_pending_drops", "flows_pending_drops"),
    ("bandwidth_dropped_in", "bandwidth_dropped_in"),
    ("bandwidth_dropped_out", "bandwidth_dropped_out"),
    ("send_dropped", "send_dropped"),
    ("dns_failures", "dns_failures"),
    ("flows_dropped_overflow", "flows_dropped_overflow"),
    ("rate_limit_rejects", "rate_limit_rejects"),
)


def encode_line(message: Mapping[str, Any]) -> bytes:
    """One NDJSON line: compact JSON and a newline."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


class StatsCommands(TypingProtocol):
    """What the socket's requests act on: the standalone service."""

    def reload(self) -> Deferred[dict[str, Any]] | dict[str, Any]:
        """Re-read the config; the reply's fields, or raise L{PortunusError}."""

    def set_log_level(self, spec: str) -> dict[str, Any]:
        """Change the log level now; the reply's fields, or raise L{PortunusError}."""


class StatsPublisher:
    """Builds the Hello and the Snapshots of one daemon."""

    def __init__(
        self,
        clock: IReactorTime,
        rules: Callable[[], Sequence[Rule]],
        counters: Callable[[], Mapping[int, RuleStats]],
        refresh_ms: int,
        splice: bool,
        monotonic: Callable[[], float] = time.monotonic,
        process: Callable[[], ProcessStats] = read_process_stats,
    ) -> None:
        """
        @param rules: the rules being forwarded, in config order.
        @param counters: their live counters by rule id.
        @param splice: whether this host's TCP relay can splice.
        @param monotonic: uptime's clock, immune to wall-clock steps.
        """
        self._clock = clock
        self._rules = rules
        self._counters = counters
        self.refresh_ms = refresh_ms
        self._splice = splice
        self._monotonic = monotonic
        self._process = process
        self._started_ms = int(clock.seconds() * 1000)
        self._started_monotonic = monotonic()
        self._seq = 0

    def hello(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "daemon_version": __version__,
            "daemon_started_at_ms": self._started_ms,
            "refresh_ms": self.refresh_ms,
            "rules": [self._rule(rule) for rule in self._rules()],
        }

    def _rule(self, rule: Rule) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": str(rule.id),
            "name": rule.name,
            "proto": rule.protocol.value,
            "listen": str(rule.listen),
            "targets": [
                {
                    "host": t.host,
                    "port": t.ports.start,
                    "priority": t.priority,
                    "proxy_protocol": t.proxy_protocol.value if t.proxy_protocol else None,
                }
                for t in rule.targets
            ],
        }
        if rule.protocol is Protocol.TCP:
            paced = rule.rate_limit is not None and rule.rate_limit.caps_bandwidth
            entry["splice_capable"] = self._splice and not paced
        else:
            entry["udp_max_flows"] = rule.udp_max_flows
        return entry

    def snapshot(self) -> dict[str, Any]:
        """The next Snapshot: each call takes the next sequence number."""
        self._seq = self._seq % _SEQ_WRAP + 1
        process = self._process()
        counters = self._counters()
        return {
            "t_ms": int(self._clock.seconds() * 1000),
            "uptime_ms": int((self._monotonic() - self._started_monotonic) * 1000),
            "seq": self._seq,
            "process": {
                "fd_open": process.fd_open,
                "fd_limit": process.fd_limit,
                "rss_bytes": process.rss_bytes,
            },
            "r": [
                _rule_counters(rule.id, counters[rule.id])
                for rule in self._rules()
                if rule.id in counters
            ],
        }


def _rule_counters(rule_id: int, stats: RuleStats) -> dict[str, Any]:
    return {
        "id": str(rule_id),
        "in": stats.bytes_in,
        "out": stats.bytes_out,
        "conns_active": stats.active_connections,
        "conns_total": stats.total_connections,
        "datagrams_in": stats.datagrams_in,
        "datagrams_out": stats.datagrams_out,
        "flows_active": stats.active_flows,
        "target_failovers_total": stats.target_failovers_total,
        "err": {key: getattr(stats, field) for key, field in ERROR_COUNTERS},
    }


@implementer(IPushProducer)
class _StatsConnection(LineOnlyReceiver):
    """One client: receives the lines, may send requests."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST_BYTES
    factory: StatsSocketFactory

    def __init__(self) -> None:
        self._write_timeout: Any = None
        self._requests: deque[bytes] = deque()
        self.skipped = 0

    @property
    def link(self) -> Any:
        """
        The transport: a Unix socket connection, which can also abort,
        pause reading and report back-pressure (more than L{ITransport}).
        """
        return self.transport

    # -- lifecycle --------------------------------------------------------

    def connectionMade(self) -> None:
        if not self.factory.admit(self):
            self.link.abortConnection()
            return
        # The transport tells us when its buffer is full (the client is
        # not reading): then lines are skipped, and 5 s of it drop it.
        self.link.registerProducer(self, True)
        self.link.write(encode_line(self.factory.publisher.hello()))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self._cancel_timeout()
        self.factory.left(self)

    # -- IPushProducer: the transport's back-pressure ---------------------

    def pauseProducing(self) -> None:
        if self._write_timeout is None:
            clock = self.factory.clock
            self._write_timeout = clock.callLater(WRITE_TIMEOUT_SECS, self._too_slow)

    def resumeProducing(self) -> None:
        self._cancel_timeout()

    def stopProducing(self) -> None:
        self._cancel_timeout()

    def _cancel_timeout(self) -> None:
        if self._write_timeout is not None:
            if self._write_timeout.active():
                self._write_timeout.cancel()
            self._write_timeout = None

    def _too_slow(self) -> None:
        self._write_timeout = None
        log.warn(
            "stats client dropped: it read nothing for {timeout}s",
            event="standalone.stats_client_slow",
            timeout=WRITE_TIMEOUT_SECS,
            skipped=self.skipped,
        )
        self.link.abortConnection()

    # -- sending ----------------------------------------------------------

    def send_snapshot(self, line: bytes) -> None:
        if self._write_timeout is not None:
            self.skipped += 1
            return
        self.link.write(line)

    # -- requests ---------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if len(self._requests) >= MAX_QUEUED_REQUESTS:
            self.link.abortConnection()
            return
        self._requests.append(line)
        if len(self._requests) == 1:
            self._next_request()

    def _next_request(self) -> None:
        # One request at a time, in order; reading waits while one runs.
        self.link.pauseProducing()
        self.factory.handle(self._requests[0]).addCallback(self._answer)

    def _answer(self, reply: dict[str, Any]) -> None:
        self._requests.popleft()
        if not self.connected or self.link.disconnecting:
            return
        self.link.write(encode_line(reply))
        if self._requests:
            self._next_request()
        else:
            self.link.resumeProducing()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.link.write(
            encode_line(
                _refusal(
                    None,
                    PortunusError(
                        "stats_request_invalid",
                        f"a request line is at most {MAX_REQUEST_BYTES} bytes",
                    ),
                )
            )
        )
        self.link.loseConnection()


def _refusal(cmd: str | None, error: PortunusError) -> dict[str, Any]:
    return {
        "reply": cmd,
        "ok": False,
        "code": error.code,
        "message": error.message,
        "hint": error.hint,
    }


class StatsSocketFactory(Factory):
    """Serves every client of one socket: admission, broadcast, requests."""

    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        publisher: StatsPublisher,
        commands: StatsCommands,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.clock = clock
        self.publisher = publisher
        self.commands = commands
        self.max_clients = max_clients
        self.clients: list[_StatsConnection] = []
        self._refused = 0
        self._refusal_logged_at: float | None = None

    def buildProtocol(self, addr: object) -> Any:
        connection = _StatsConnection()
        connection.factory = self
        return connection

    def admit(self, connection: _StatsConnection) -> bool:
        if len(self.clients) >= self.max_clients:
            self._refused += 1
            now = self.clock.seconds()
            last = self._refusal_logged_at
            if last is None or now - last >= _LIMIT_LOG_INTERVAL_SECS:
                log.warn(
                    "stats socket has {limit} clients already; dropped {refused} "
                    "connection(s) since the last warning",
                    event="standalone.stats_conn_limit_reached",
                    limit=self.max_clients,
                    refused=self._refused,
                )
                self._refusal_logged_at, self._refused = now, 0
            return False
        self.clients.append(connection)
        return True

    def left(self, connection: _StatsConnection) -> None:
        if connection in self.clients:
            self.clients.remove(connection)

    def broadcast(self) -> None:
        """Send the next Snapshot to every client (built only if one listens)."""
        if not self.clients:
            return
        line = encode_line(self.publisher.snapshot())
        for client in list(self.clients):
            client.send_snapshot(line)

    def disconnect_all(self) -> None:
        for client in list(self.clients):
            client.link.abortConnection()

    def handle(self, line: bytes) -> Deferred[dict[str, Any]]:
        """Answer one request line; never fails."""
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        cmd = request.get("cmd") if isinstance(request, dict) else None
        if cmd in ("reload", "log-level"):
            log.info("stats socket request: {cmd}", event="standalone.stats_command", cmd=cmd)
        if cmd == "reload":
            d = maybeDeferred(self.commands.reload)
        elif cmd == "log-level":
            spec = request.get("spec") if isinstance(request, dict) else None
            if not isinstance(spec, str):
                return succeed(
                    _refusal(
                        cmd,
                        PortunusError(
                            "stats_request_invalid",
                            'log-level needs "spec": a level name such as "debug"',
                        ),
                    )
                )
            d = maybeDeferred(self.commands.set_log_level, spec)
        else:
            return succeed(
                _refusal(
                    cmd if isinstance(cmd, str) else None,
                    PortunusError(
                        "stats_request_invalid",
                        'send one JSON object per line: {"cmd": "reload"} or '
                        '{"cmd": "log-level", "spec": LEVEL}',
                    ),
                )
            )

        def done(fields: dict[str, Any]) -> dict[str, Any]:
            return {"reply": cmd, "ok": True, **fields}

        def failed(failure: Failure) -> dict[str, Any]:
            if failure.check(PortunusError):
                error = failure.value
                assert isinstance(error, PortunusError)
                return _refusal(cmd, error)
            log.failure(
                "stats socket request {cmd} failed",
                failure,
                event="standalone.stats_command_failed",
                cmd=cmd,
            )
            return _refusal(cmd, PortunusError("internal", "the request failed; see the log"))

        return d.addCallbacks(done, failed)


class StatsSocketService(Service):
    """
    Binds the socket (before privileges are shed), broadcasts Snapshots
    every C{refresh_ms} while running, and removes the socket on stop.
    """

    def __init__(
        self, reactor: IStatsSocketReactor, path: str, factory: StatsSocketFactory
    ) -> None:
        self._reactor = reactor
        self.path = os.path.abspath(path)
        self.factory = factory
        self.port: Any = None
        self._ticker: LoopingCall | None = None
        self._tried = False

    def privilegedStartService(self) -> None:
        self._tried = True
        try:
            self.port = self._listen()
        except OSError as e:
            reason = e.strerror or str(e)
            self._bind_failed(reason)
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            self._bind_failed(reason)
        else:
            log.info(
                "stats socket listening on {path}",
                event="standalone.stats_socket_listening",
                path=self.path,
            )
        super().privilegedStartService()

    def _bind_failed(self, reason: str) -> None:
        log.warn(
            "stats socket {path} not available: {reason}; forwarding goes on without it",
            event="standalone.stats_socket_bind_failed",
            path=self.path,
            reason=reason,
        )

    def _listen(self) -> Any:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
            with contextlib.suppress(OSError):  # best effort, as Portunus
                os.chmod(directory, DIRECTORY_MODE)
        _remove_stale(self.path)
        # Created SOCKET_MODE from the start, not chmod-ed after a window at 0666.
        previous = os.umask(0o777 & ~SOCKET_MODE)
        try:
            return self._reactor.listenUNIX(self.path, self.factory, mode=SOCKET_MODE)
        finally:
            os.umask(previous)

    def startService(self) -> None:
        if not self._tried:
            self.privilegedStartService()
        super().startService()
        if self.port is None:
            return
        self._ticker = LoopingCall(self.factory.broadcast)
        self._ticker.clock = self._reactor
        self._ticker.start(self.factory.publisher.refresh_ms / 1000, now=False)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None
        self.factory.disconnect_all()
        port, self.port = self.port, None
        self._tried = False
        if port is None:
            return succeed(None)
        return DeferredList([maybeDeferred(port.stopListening)], consumeErrors=True)


def _remove_stale(path: str) -> None:
    """
    Unlink a socket file nobody answers on.

    @raise OSError: the path is something else, or another process is
        serving it.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "the path is not a socket; remove it or pick another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
    else:
        raise OSError(
            errno.EADDRINUSE, "another process is serving this socket; stop it or pick another path"
        )
    finally:
        probe.close()
    os.unlink(path)
