"""
Tests for L{portunus.logging}: structured JSON-lines and pretty observers,
redaction, level parsing and observer construction.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast
from unittest.mock import Mock

from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    globalLogPublisher,
)
from twisted.protocols import amp
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from portunus.logging import (
    LOG_FORMATS,
    LOG_LEVEL_NAMES,
    REDACTED,
    JSONLinesObserver,
    PrettyObserver,
    is_sensitive,
    make_observer,
    parse_log_level,
    redact,
)

# 2026-11-25T09:00:00.123Z
WHEN = datetime(2026, 11, 25, 9, 0, 0, 123000, tzinfo=UTC).timestamp()
WHEN_TEXT = "2026-11-25T09:00:00.123Z"

SECRET_NAMES = (
    "token",
    "api_token",
    "Token",
    "secret",
    "client_secret",
    "password",
    "db_password",
    "PASSWORD",
    "private_key",
    "tls_private_key",
    "privateKey",
    "cookie",
    "Set-Cookie",
    "authorization",
    "Authorization",
    "proxy_authorization",
)


def make_event(
    fmt: str | None = "rule {rule} activated",
    level: LogLevel = LogLevel.info,
    **fields: Any,
) -> LogEvent:
    """
    Build an event the way L{Logger.emit} does, at a fixed time.
    """
    event: LogEvent = dict(fields)
    event.update(
        log_level=level,
        log_namespace="portunus.test",
        log_source=None,
        log_format=fmt,
        log_time=WHEN,
    )
    return event


class FlushCountingIO(io.StringIO):
    """
    A L{io.StringIO} that counts calls to C{flush}.
    """

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class BrokenMapping(Mapping[str, Any]):
    """
    A mapping that blows up when walked, to make rendering fail.
    """

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("no items")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("no iteration")

    def __len__(self) -> int:
        return 1


class Unserialisable:
    """
    An object JSON knows nothing about.
    """

    def __repr__(self) -> str:
        return "<Unserialisable thing>"


class Holder:
    """
    An object with a secret attribute, reached through a format path.
    """

    def __init__(self) -> None:
        self.secret = "hunter2"
        self.name = "holder"


class CustomError(Exception):
    """
    An exception outside builtins.
    """


def as_observer(observer: object) -> ILogObserver:
    """
    Type an observer as L{ILogObserver} (mypy has no zope plugin here).
    """
    return cast(ILogObserver, observer)


def call(observer: ILogObserver, event: LogEvent) -> None:
    """
    Send C{event} to an observer typed as L{ILogObserver}.
    """
    cast(Callable[[LogEvent], None], observer)(event)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """
    Parse every line written to C{stream} as one JSON object.
    """
    text = stream.getvalue()
    assert text.endswith("\n"), repr(text)
    return [json.loads(line) for line in text.splitlines()]


class JSONLinesObserverTests(SynchronousTestCase):
    """
    Tests for L{JSONLinesObserver}.
    """

    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.observer = JSONLinesObserver(self.stream, LogLevel.debug)

    def emit(self, event: LogEvent) -> dict[str, Any]:
        self.observer(event)
        [line] = json_lines(self.stream)
        return line

    def test_providesILogObserver(self) -> None:
        """JSONLinesObserver provides ILogObserver."""
        self.assertTrue(verifyObject(ILogObserver, self.observer))

    def test_oneObjectPerLine(self) -> None:
        """Each event becomes exactly one JSON object on its own line, carrying its event name."""
        log = Logger(namespace="portunus.rules", observer=as_observer(self.observer))
        log.info("rule {rule} activated", event="rule.activated", rule="web", ports="8080")
        log.warn("rule {rule} failed", event="rule.failed", rule="db")
        lines = self.stream.getvalue().split("\n")
        self.assertEqual(lines[-1], "")
        self.assertEqual(len(lines), 3)
        parsed = [json.loads(line) for line in lines[:-1]]
        self.assertEqual([p["event"] for p in parsed], ["rule.activated", "rule.failed"])

    def test_coreFields(self) -> None:
        """ts, level, event, msg and logger come first and carry the event's facts."""
        line = self.emit(make_event(event="rule.activated", rule="web", ports="8080"))
        self.assertEqual(
            list(line.items()),
            [
                ("ts", WHEN_TEXT),
                ("level", "info"),
                ("event", "rule.activated"),
                ("msg", "rule web activated"),
                ("logger", "portunus.test"),
                ("rule", "web"),
                ("ports", "8080"),
            ],
        )

    def test_levelNames(self) -> None:
        """Each LogLevel is written as its lower-case name."""
        for level in (
            LogLevel.debug,
            LogLevel.info,
            LogLevel.warn,
            LogLevel.error,
            LogLevel.critical,
        ):
            stream = io.StringIO()
            JSONLinesObserver(stream, LogLevel.debug)(make_event(level=level, rule="r"))
            self.assertEqual(json_lines(stream)[0]["level"], level.name)

    def test_timestampFromLogTimeRoundsDownToMilliseconds(self) -> None:
        """ts is RFC 3339 UTC with milliseconds, truncated, from log_time."""
        event = make_event(rule="r")
        event["log_time"] = WHEN + 0.000999
        self.assertEqual(self.emit(event)["ts"], WHEN_TEXT)

    def test_timestampFromClockWithoutLogTime(self) -> None:
        """An event without log_time is stamped from the observer's clock."""
        observer = JSONLinesObserver(self.stream, LogLevel.debug, clock=lambda: WHEN)
        event = make_event(rule="r")
        del event["log_time"]
        observer(event)
        self.assertEqual(json_lines(self.stream)[0]["ts"], WHEN_TEXT)

    def test_eventFallsBackToNamespace(self) -> None:
        """Without an event field, event is the logger namespace."""
        line = self.emit(make_event(rule="web"))
        self.assertEqual(line["event"], "portunus.test")
        self.assertEqual(line["logger"], "portunus.test")

    def test_internalKeysSkipped(self) -> None:
        """Twisted's log_* keys and the legacy format key are not written as fields."""
        event = make_event(event="e", rule="web", format="%(rule)s")
        event["log_system"] = "sys"
        event["log_logger"] = Logger(namespace="x")
        line = self.emit(event)
        self.assertFalse([key for key in line if key.startswith("log_")])
        self.assertNotIn("format", line)
        self.assertEqual(line["rule"], "web")

    def test_collidingFieldKept(self) -> None:
        """A user field named like an output key is kept under a trailing underscore."""
        line = self.emit(make_event("hi", event="e", msg="mine", ts=3))
        self.assertEqual(line["msg"], "hi")
        self.assertEqual(line["msg_"], "mine")
        self.assertEqual(line["ts"], WHEN_TEXT)
        self.assertEqual(line["ts_"], 3)

    def test_errorFieldWithoutFailureIsUserField(self) -> None:
        """Without a failure, a user field called error is written as is."""
        line = self.emit(make_event("probe failed", event="probe.failed", error="refused"))
        self.assertEqual(line["error"], "refused")
        self.assertNotIn("traceback", line)

    def test_failure(self) -> None:
        """log.failure adds error (type and message) and the traceback."""
        log = Logger(namespace="portunus.test", observer=as_observer(self.observer))
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("while {what}", event="rule.crashed", what="dividing")
        [line] = json_lines(self.stream)
        self.assertEqual(line["level"], "critical")
        self.assertEqual(line["msg"], "while dividing")
        self.assertEqual(line["error"], "ZeroDivisionError: division by zero")
        self.assertIn("Traceback", line["traceback"])
        self.assertIn("ZeroDivisionError", line["traceback"])
        self.assertIn("test_failure", line["traceback"])

    def test_failureQualifiedType(self) -> None:
        """A non-builtin exception's error names its fully-qualified type."""
        try:
            raise CustomError("bad thing")
        except CustomError:
            failure = Failure()
        line = self.emit(make_event("oops", level=LogLevel.error, log_failure=failure))
        self.assertEqual(line["error"], "tests.test_logging.CustomError: bad thing")
        self.assertIn("bad thing", line["traceback"])

    def test_failureWithCollidingField(self) -> None:
        """With a failure, a user field called error moves aside for the failure's error."""
        failure = Failure(ValueError("v"))
        line = self.emit(make_event("x", log_failure=failure, error="mine"))
        self.assertEqual(line["error"], "ValueError: v")
        self.assertEqual(line["error_"], "mine")

    def test_nonSerialisableValues(self) -> None:
        """Values JSON cannot hold are written as text rather than breaking the line."""
        line = self.emit(
            make_event(
                "x",
                thing=Unserialisable(),
                nested={"inner": [Unserialisable(), 1]},
                raw=b"ab\xff",
                tags={"b", "a"},
                pair=(1, 2),
                nan=float("nan"),
                level_const=LogLevel.warn,
                when=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                keys={1: "one"},
            )
        )
        self.assertEqual(line["thing"], "<Unserialisable thing>")
        self.assertEqual(line["nested"], {"inner": ["<Unserialisable thing>", 1]})
        self.assertEqual(line["raw"], "ab\\xff")
        self.assertEqual(line["tags"], ["a", "b"])
        self.assertEqual(line["pair"], [1, 2])
        self.assertEqual(line["nan"], "nan")
        self.assertEqual(line["level_const"], "warn")
        self.assertEqual(line["when"], "2026-01-02T03:04:05+00:00")
        self.assertEqual(line["keys"], {"1": "one"})

    def test_unformattableMessage(self) -> None:
        """A broken format string still yields one line with the event name."""
        line = self.emit(make_event("bad {", event="e"))
        self.assertEqual(line["event"], "e")
        self.assertIn("Unable to format event", line["msg"])

    def test_renderFailureDoesNotRaise(self) -> None:
        """An event that cannot be rendered yields a logging.render_failed line, not a raise."""
        self.observer(make_event("x", event="e", data=BrokenMapping()))
        [line] = json_lines(self.stream)
        self.assertEqual(line["event"], "logging.render_failed")
        self.assertEqual(line["level"], "error")
        self.assertIn("'e'", line["msg"])

    def test_flushesEachLine(self) -> None:
        """The stream is flushed after every event written."""
        stream = FlushCountingIO()
        observer = JSONLinesObserver(stream, LogLevel.debug)
        observer(make_event(rule="a"))
        observer(make_event(rule="b"))
        self.assertEqual(stream.flushes, 2)

    def test_legacyErr(self) -> None:
        """A legacy log.err event renders its why as msg and its failure as error."""
        failure = Failure(ValueError("v"))
        event: LogEvent = {
            "message": (),
            "isError": 1,
            "failure": failure,
            "why": "while frobbing",
            "time": WHEN,
            "system": "-",
            "log_time": WHEN,
            "log_level": LogLevel.critical,
            "log_namespace": "log_legacy",
            "log_format": "{log_text}",
            "log_text": "while frobbing\nTraceback...",
        }
        line = self.emit(event)
        self.assertEqual(line["msg"], "while frobbing")
        self.assertEqual(line["error"], "ValueError: v")
        for key in ("message", "isError", "failure", "why", "time", "system"):
            self.assertNotIn(key, line)


class LevelFilterTests(SynchronousTestCase):
    """
    Both observers drop events below their level.
    """

    def test_jsonDropsBelowLevel(self) -> None:
        """JSONLinesObserver writes only events at or above its level."""
        stream = io.StringIO()
        log = Logger(namespace="t", observer=as_observer(JSONLinesObserver(stream, LogLevel.warn)))
        log.debug("d", event="d")
        log.info("i", event="i")
        log.warn("w", event="w")
        log.error("e", event="e")
        log.critical("c", event="c")
        self.assertEqual([line["event"] for line in json_lines(stream)], ["w", "e", "c"])

    def test_jsonDefaultLevelIsWarn(self) -> None:
        """A JSONLinesObserver built without a level drops info."""
        stream = io.StringIO()
        observer = JSONLinesObserver(stream)
        observer(make_event(level=LogLevel.info, rule="r"))
        self.assertEqual(stream.getvalue(), "")
        observer(make_event(level=LogLevel.warn, rule="r"))
        self.assertEqual(len(json_lines(stream)), 1)

    def test_prettyDropsBelowLevel(self) -> None:
        """PrettyObserver writes only events at or above its level."""
        stream = io.StringIO()
        log = Logger(namespace="t", observer=as_observer(PrettyObserver(stream, LogLevel.error)))
        log.info("i", event="i")
        log.warn("w", event="w")
        log.error("e", event="e")
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertIn(" ERROR e  e", lines[0])

    def test_levelChangeableAtRuntime(self) -> None:
        """Changing an observer's level attribute changes what it drops."""
        stream = io.StringIO()
        observer = JSONLinesObserver(stream, LogLevel.error)
        observer(make_event(level=LogLevel.debug, rule="r"))
        observer.level = LogLevel.debug
        observer(make_event(level=LogLevel.debug, rule="r"))
        self.assertEqual(len(json_lines(stream)), 1)


class RedactionTests(SynchronousTestCase):
    """
    Secret-ish fields never reach either observer's output.
    """

    def render_json(self, event: LogEvent) -> dict[str, Any]:
        stream = io.StringIO()
        JSONLinesObserver(stream, LogLevel.debug)(event)
        [line] = json_lines(stream)
        return line

    def render_pretty(self, event: LogEvent) -> str:
        stream = io.StringIO()
        PrettyObserver(stream, LogLevel.debug)(event)
        return stream.getvalue()

    def test_isSensitive(self) -> None:
        """Every secret-ish name is sensitive; ordinary names are not."""
        for name in SECRET_NAMES:
            self.assertTrue(is_sensitive(name), name)
        for name in ("rule", "port", "user", "host", "key", "private"):
            self.assertFalse(is_sensitive(name), name)

    def test_topLevelFieldsRedacted(self) -> None:
        """Each secret-ish field is written as <redacted> in JSON and pretty output."""
        for name in SECRET_NAMES:
            fields: dict[str, Any] = {name: "s3cr3t-value", "rule": "web"}
            event = make_event("x", event="e", **fields)
            line = self.render_json(event)
            self.assertEqual(line[name], REDACTED, name)
            self.assertEqual(line["rule"], "web")
            self.assertNotIn("s3cr3t-value", json.dumps(line))
            self.assertNotIn("s3cr3t-value", self.render_pretty(event), name)

    def test_nestedRedacted(self) -> None:
        """Secret-ish keys are redacted at any depth inside dicts, including dicts in lists."""
        config = {
            "rule": "web",
            "auth": {"Authorization": "Bearer abc", "user": "bob"},
            "peers": [{"name": "a", "private_key": "pk"}],
        }
        line = self.render_json(make_event("x", config=config))
        self.assertEqual(
            line["config"],
            {
                "rule": "web",
                "auth": {"Authorization": REDACTED, "user": "bob"},
                "peers": [{"name": "a", "private_key": REDACTED}],
            },
        )
        self.assertEqual(config["auth"], {"Authorization": "Bearer abc", "user": "bob"})

    def test_messageFormattedFromRedactedFields(self) -> None:
        """A {token} in the format string renders as <redacted>."""
        event = make_event("connecting with {token} as {user}", token="abc123", user="bob")
        line = self.render_json(event)
        self.assertEqual(line["msg"], "connecting with <redacted> as bob")
        self.assertNotIn("abc123", self.render_pretty(event))

    def test_messagePathsRedacted(self) -> None:
        """Format paths reaching secrets through items or attributes render as <redacted>."""
        event = make_event(
            "cfg={cfg} pw={cfg[password]} h={holder.secret!r:>20} n={holder.name}",
            cfg={"password": "pw-value", "port": 1},
            holder=Holder(),
        )
        msg = self.render_json(event)["msg"]
        self.assertEqual(
            msg,
            "cfg={'password': '<redacted>', 'port': 1} pw=<redacted> h=<redacted> n=holder",
        )
        self.assertNotIn("hunter2", self.render_pretty(event))

    def test_flattenedEventRedacted(self) -> None:
        """An event replayed from twisted's JSON log (pre-flattened) still has secrets redacted."""
        original = make_event("token is {token}", token="abc123")
        replayed = eventFromJSON(eventAsJSON(original))
        line = self.render_json(replayed)
        self.assertEqual(line["msg"], "token is <redacted>")
        self.assertNotIn("abc123", json.dumps(line))

    def test_legacyFormatRedacted(self) -> None:
        """A legacy %-format message is re-rendered from redacted fields."""
        event: LogEvent = {
            "message": (),
            "isError": 0,
            "format": "using %(password)s",
            "password": "pw-value",
            "time": WHEN,
            "system": "-",
            "log_time": WHEN,
            "log_level": LogLevel.info,
            "log_namespace": "log_legacy",
            "log_format": "{log_text}",
            "log_text": "using pw-value",
        }
        line = self.render_json(event)
        self.assertEqual(line["msg"], "using <redacted>")
        self.assertNotIn("pw-value", json.dumps(line))

    def test_redactLeavesOthersAlone(self) -> None:
        """redact() returns non-container values unchanged and copies dicts."""
        obj = Holder()
        self.assertIs(redact(obj), obj)
        self.assertEqual(redact({"a": 1, "cookie": "c"}), {"a": 1, "cookie": REDACTED})
        self.assertEqual(redact([{"token": 1}, 2]), [{"token": REDACTED}, 2])
        self.assertEqual(redact(({"secret": 1},)), ({"secret": REDACTED},))


class PrettyObserverTests(SynchronousTestCase):
    """
    Tests for L{PrettyObserver}.
    """

    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.observer = PrettyObserver(self.stream, LogLevel.debug)

    def test_providesILogObserver(self) -> None:
        """PrettyObserver provides ILogObserver."""
        self.assertTrue(verifyObject(ILogObserver, self.observer))

    def test_shape(self) -> None:
        """One line: time, padded level, event, message, then key=value fields."""
        self.observer(make_event(event="rule.activated", rule="web", ports="8080"))
        self.assertEqual(
            self.stream.getvalue(),
            f"{WHEN_TEXT} INFO  rule.activated  rule web activated  rule=web ports=8080\n",
        )

    def test_noFields(self) -> None:
        """Without fields the line ends after the message."""
        self.observer(make_event("started", level=LogLevel.warn, event="standalone.started"))
        self.assertEqual(self.stream.getvalue(), f"{WHEN_TEXT} WARN  standalone.started  started\n")

    def test_valueQuoting(self) -> None:
        """Values with spaces, quotes or no text are JSON-quoted; structures are compact JSON."""
        self.observer(
            make_event("m", event="e", text="a b", empty="", n=3, d={"k": [1, 2]}, flag=True)
        )
        self.assertEqual(
            self.stream.getvalue(),
            f'{WHEN_TEXT} INFO  e  m  text="a b" empty="" n=3 d={{"k":[1,2]}} flag=true\n',
        )

    def test_tracebackOnFollowingLines(self) -> None:
        """A failure's traceback follows the event line."""
        try:
            raise ValueError("broken")
        except ValueError:
            failure = Failure()
        self.observer(make_event("oops", level=LogLevel.error, event="e", log_failure=failure))
        first, *rest = self.stream.getvalue().splitlines()
        self.assertEqual(first, f"{WHEN_TEXT} ERROR e  oops")
        self.assertEqual(rest[0], "Traceback (most recent call last):")
        self.assertIn("ValueError: broken", rest[-1])


class ParseLogLevelTests(SynchronousTestCase):
    """
    Tests for L{parse_log_level}.
    """

    def test_names(self) -> None:
        """Each allowed name, in any case, maps to its LogLevel; warning means warn."""
        expected = {
            "debug": LogLevel.debug,
            "info": LogLevel.info,
            "warn": LogLevel.warn,
            "warning": LogLevel.warn,
            "error": LogLevel.error,
            "critical": LogLevel.critical,
        }
        self.assertEqual(set(LOG_LEVEL_NAMES), set(expected))
        for name, level in expected.items():
            self.assertIs(parse_log_level(name), level)
            self.assertIs(parse_log_level(name.upper()), level)
            self.assertIs(parse_log_level(name.capitalize()), level)

    def test_invalid(self) -> None:
        """An unknown name raises ValueError listing every allowed value."""
        for bad in ("verbose", "", "fatal", "infos"):
            error = self.assertRaises(ValueError, parse_log_level, bad)
            for name in LOG_LEVEL_NAMES:
                self.assertIn(name, str(error))
            self.assertIn(repr(bad), str(error))


class MakeObserverTests(SynchronousTestCase):
    """
    Tests for L{make_observer}.
    """

    def test_json(self) -> None:
        """The json format builds a JSONLinesObserver with the given level and stream."""
        stream = io.StringIO()
        observer = make_observer("json", LogLevel.info, stream)
        self.assertIsInstance(observer, JSONLinesObserver)
        call(observer, make_event(level=LogLevel.debug, rule="r"))
        call(observer, make_event(level=LogLevel.info, event="e", rule="r"))
        self.assertEqual([line["event"] for line in json_lines(stream)], ["e"])

    def test_pretty(self) -> None:
        """The pretty format builds a PrettyObserver with the given level and stream."""
        stream = io.StringIO()
        observer = make_observer("pretty", LogLevel.error, stream)
        self.assertIsInstance(observer, PrettyObserver)
        call(observer, make_event(level=LogLevel.warn, rule="r"))
        self.assertEqual(stream.getvalue(), "")
        call(observer, make_event(level=LogLevel.error, event="e", rule="r"))
        self.assertTrue(stream.getvalue().startswith(WHEN_TEXT))

    def test_invalid(self) -> None:
        """Any other format raises ValueError naming the allowed values."""
        error = self.assertRaises(ValueError, make_observer, "xml", LogLevel.info, io.StringIO())
        for name in LOG_FORMATS:
            self.assertIn(name, str(error))
        self.assertIn("'xml'", str(error))


class ReentrantWriteTests(SynchronousTestCase):
    """
    A signal handler runs on the main thread between bytecodes, so it can
    log while the observer is inside its own write (twistd logs "Received
    SIGTERM" from the handler).  That must not deadlock.
    """

    def test_log_from_inside_a_write_completes(self) -> None:
        observer: JSONLinesObserver

        class InterruptedStream(io.StringIO):
            interrupted = False

            def write(self, text: str) -> int:
                if not self.interrupted:
                    self.interrupted = True
                    observer({"log_format": "signal", "log_level": LogLevel.info})
                return super().write(text)

        stream = InterruptedStream()
        observer = JSONLinesObserver(stream, LogLevel.debug)
        observer({"log_format": "first", "log_level": LogLevel.info})
        messages = [line["msg"] for line in json_lines(stream)]
        self.assertEqual(sorted(messages), ["first", "signal"])


class FrameworkEventTests(TestCase):
    """
    Twisted's own info lines get a stable event name and debug level (the
    stopping signal stays at info): driven through Twisted's real code,
    caught on the global publisher, rendered by L{JSONLinesObserver}.
    """

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def rendered(self, level: LogLevel = LogLevel.debug) -> list[dict[str, Any]]:
        stream = io.StringIO()
        observer = JSONLinesObserver(stream, level)
        for event in self.events:
            observer(event)
        return json_lines(stream) if stream.getvalue() else []

    def names(self, level: LogLevel = LogLevel.debug) -> list[tuple[str, str]]:
        return [(line["event"], line["level"]) for line in self.rendered(level)]

    def test_factory_start_and_stop(self) -> None:
        """A noisy factory's start and stop are twisted.factory_* at debug."""
        factory = Factory()
        factory.doStart()
        factory.doStop()
        self.assertEqual(
            self.names(),
            [("twisted.factory_started", "debug"), ("twisted.factory_stopped", "debug")],
        )
        self.assertEqual(self.rendered(LogLevel.info), [])

    def test_amp_connection_lines(self) -> None:
        """Every AMP connection's two lines are twisted.amp_* at debug."""
        protocol = amp.AMP()
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            self.names(),
            [("twisted.amp_connected", "debug"), ("twisted.amp_disconnected", "debug")],
        )

    def test_client_service_retry(self) -> None:
        """ClientService's retry delay (16 decimals) is twisted.retry_scheduled at debug."""
        clock = Clock()
        endpoint = Mock(connect=lambda factory: fail(ConnectionRefusedError()))
        service = ClientService(endpoint, Factory(), retryPolicy=lambda n: 0.123456789, clock=clock)
        service.startService()
        self.addCleanup(service.stopService)
        retries = [line for line in self.rendered() if line["event"] == "twisted.retry_scheduled"]
        self.assertEqual([line["level"] for line in retries], ["debug"])
        self.assertFalse(
            [line for line in self.rendered(LogLevel.info) if "retry" in line["msg"].lower()]
        )

    def test_listening_port_lines(self) -> defer.Deferred[None]:
        """A real port's "starting on" and "Closed" lines are twisted.port_* at debug."""
        from twisted.internet import reactor

        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]

        def closed(_: object) -> None:
            ports = [name for name in self.names() if name[0].startswith("twisted.port_")]
            self.assertEqual(
                ports, [("twisted.port_listening", "debug"), ("twisted.port_closed", "debug")]
            )
            self.assertEqual(self.rendered(LogLevel.info), [])

        return defer.maybeDeferred(port.stopListening).addCallback(closed)

    def test_twistd_banner_and_signal(self) -> None:
        """twistd's banner lines go to debug; the stopping signal stays at info, named."""
        twisted_log = Logger(namespace="twisted.internet.base")
        twisted_log.info("Main loop terminated.")
        twisted_log.info("Received SIGTERM, shutting down.")
        Logger(namespace="twisted.scripts._twistd_unix.UnixAppLogger").info("Server Shut Down.")
        [signal] = self.rendered(LogLevel.info)
        self.assertEqual(
            (signal["event"], signal["signal"], signal["msg"]),
            ("process.signal_received", "SIGTERM", "Received SIGTERM, shutting down."),
        )
        self.assertEqual(
            self.names(),
            [
                ("twistd.main_loop_terminated", "debug"),
                ("process.signal_received", "info"),
                ("twistd.stopped", "debug"),
            ],
        )

    def test_other_events_are_untouched(self) -> None:
        """Our own events, other legacy lines and legacy errors keep their level and name."""
        Logger(namespace="portunus.test").info("Main loop terminated.", event="ours.done")
        legacy_log.msg("Something else starting up")
        legacy_log.msg("X starting on 80", isError=True)
        self.assertEqual(
            self.names(),
            [("ours.done", "info"), ("log_legacy", "info"), ("log_legacy", "critical")],
        )
