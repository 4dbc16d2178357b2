"""
Structured logging on L{twisted.logger}.

Every log call in Portunus names a stable event::

    log.info("rule {rule} activated", event="rule.activated", rule="web", ports="8080")

The observers here turn such events into lines an operator (or a log
shipper) can rely on:

  - L{JSONLinesObserver} writes one JSON object per line: C{ts}, C{level},
    C{event}, C{msg}, C{logger}, then every other field of the event, and
    C{error}/C{traceback} when the event carries a failure.
  - L{PrettyObserver} writes one human-readable line per event, fields as
    C{key=value}, with any traceback on the following lines.

Both name Twisted's own lines (L{classify_framework_event}: factories
starting, AMP connections opening, ports, retry delays, twistd's banner)
with a stable event and move all but the stopping signal to debug, then
drop events below their level and redact secrets: a field whose name
contains C{token}, C{secret}, C{password}, C{private_key}, C{cookie} or
C{authorization} (case-insensitive, at any depth inside dicts) is written as
C{"<redacted>"}, and the message is formatted from the redacted fields so a
C{{token}} in a format string never leaks either.

This module never imports the reactor.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import threading
import time
import traceback as tb_module
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from datetime import time as dtime
from enum import Enum
from pathlib import PurePath
from string import Formatter
from typing import Any, Final, NamedTuple, Protocol, cast

from constantly import NamedConstant, ValueConstant
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.python.reflect import qual, safe_repr, safe_str
from zope.interface import implementer

__all__ = [
    "LOG_FILE_MODE",
    "LOG_FORMATS",
    "LOG_LEVEL_NAMES",
    "REDACTED",
    "JSONLinesObserver",
    "LogSink",
    "PrettyObserver",
    "ReopeningFile",
    "classify_framework_event",
    "is_sensitive",
    "make_observer",
    "parse_log_level",
    "redact",
]

#: What a redacted value is written as.
REDACTED: Final = "<redacted>"

#: Names accepted by L{parse_log_level}, in order of severity.
LOG_LEVEL_NAMES: Final = ("debug", "info", "warn", "warning", "error", "critical")

#: Names accepted by L{make_observer}.
LOG_FORMATS: Final = ("json", "pretty")

_LEVELS_BY_NAME: Final[Mapping[str, LogLevel]] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

_LEVEL_ORDER: Final[Mapping[LogLevel, int]] = {
    LogLevel.debug: 0,
    LogLevel.info: 1,
    LogLevel.warn: 2,
    LogLevel.error: 3,
    LogLevel.critical: 4,
}

# Compared against the field name lower-cased with separators removed, so
# "private_key", "privateKey", "Private-Key" and "set-cookie" all match.
_SENSITIVE: Final = re.compile(r"token|secret|password|privatekey|cookie|authorization")
_SEPARATORS: Final = re.compile(r"[^0-9a-z]")

# Keys of the event that are twisted's bookkeeping rather than user fields.
_FORMAT_KEY: Final = "format"
_INTERNAL_PREFIX: Final = "log_"
# Bookkeeping keys of a legacy (twisted.python.log) event.
_LEGACY_KEYS: Final = frozenset({"message", "isError", "time", "system", "printed", "why"})

# Output keys the JSON observer always owns.
_RESERVED: Final = ("ts", "level", "event", "msg", "logger")
_FAILURE_KEYS: Final = ("error", "traceback")

# Deeper than this, structures are cut off (also guards against cycles).
_MAX_DEPTH: Final = 32
_TOO_DEEP: Final = "<too deep>"

_formatter = Formatter()


# Where lines go.


class LogSink(Protocol):
    """What the observers write to: a text stream (stderr) or a L{ReopeningFile}."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


#: A log file this process creates: owner read-write, group read (adm).
LOG_FILE_MODE: Final = 0o640


class ReopeningFile:
    """
    A log file by path that L{reopen} opens again, appending: after
    logrotate has renamed it, the next lines go to a new file at the path
    (or the one logrotate created there).  Writes and the swap hold one
    re-entrant lock, so no line is split across the two files or lost.

    @raise OSError: from the constructor, when the path cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._file = self._open()

    def _open(self) -> Any:
        fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE
        )
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")

    def write(self, text: str, /) -> int:
        with self._lock:
            return int(self._file.write(text))

    def flush(self) -> None:
        with self._lock:
            self._file.flush()

    def reopen(self) -> None:
        """
        Open the path again and write there from now on.

        @raise OSError: when it cannot be opened; the old file stays in use.
        """
        new = self._open()
        with self._lock:
            old, self._file = self._file, new
            old.close()

    def close(self) -> None:
        with self._lock:
            self._file.close()


# Log levels and formats.


def parse_log_level(text: str) -> LogLevel:
    """
    Parse a log level name (debug, info, warn, warning, error, critical;
    case-insensitive).

    @raise ValueError: if C{text} names no level.
    """
    level = _LEVELS_BY_NAME.get(str(text).strip().lower())
    if level is None:
        raise ValueError(
            f"invalid log level {text!r}; expected one of: {', '.join(LOG_LEVEL_NAMES)}"
        )
    return level


def make_observer(log_format: str, level: LogLevel, stream: LogSink) -> ILogObserver:
    """
    Build the observer for C{log_format} ("json" or "pretty") writing events
    at C{level} and above to C{stream}.

    @raise ValueError: for any other format.
    """
    name = str(log_format).strip().lower()
    if name == "json":
        return cast(ILogObserver, JSONLinesObserver(stream, level))
    if name == "pretty":
        return cast(ILogObserver, PrettyObserver(stream, level))
    raise ValueError(
        f"invalid log format {log_format!r}; expected one of: {', '.join(LOG_FORMATS)}"
    )


# Redaction.


def is_sensitive(name: object) -> bool:
    """
    Whether a field called C{name} holds a secret that must not be logged.
    """
    return _SENSITIVE.search(_SEPARATORS.sub("", str(name).lower())) is not None


def redact(value: Any) -> Any:
    """
    Return C{value} with every entry of every dict (at any depth, including
    dicts inside lists and tuples) whose key L{is_sensitive} replaced by
    L{REDACTED}.  Other values are returned as they are.
    """
    return _redact(value, 0)


def _redact(value: Any, depth: int) -> Any:
    if isinstance(value, Mapping | list | tuple) and depth >= _MAX_DEPTH:
        return _TOO_DEEP
    if isinstance(value, Mapping):
        return {k: REDACTED if is_sensitive(k) else _redact(v, depth + 1) for k, v in value.items()}
    if type(value) is list or type(value) is tuple:
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def _redact_format(fmt: str) -> str:
    """
    Rewrite a PEP 3101 format string so that any field whose path mentions a
    secret (C{{token}}, C{{config.password}}, C{{headers[Cookie]}}) becomes
    the literal L{REDACTED}.
    """
    try:
        parsed = list(_formatter.parse(fmt))
    except ValueError:
        # Malformed; formatEvent reports it without our help.
        return fmt
    parts: list[str] = []
    for literal, field, spec, conversion in parsed:
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        if is_sensitive(field):
            parts.append(REDACTED)
            continue
        parts.append(
            "{"
            + field
            + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "")
            + "}"
        )
    return "".join(parts)


def _redact_flattened(flattened: Mapping[str, Any]) -> dict[str, Any]:
    # Keys look like "field.path!conversion:spec" (see twisted.logger's
    # flattenEvent); the value is either the rendered text or the raw object.
    return {
        key: REDACTED if is_sensitive(key.partition("!")[0]) else redact(value)
        for key, value in flattened.items()
    }


# Twisted's own lines.


class _Known(NamedTuple):
    event: str
    level: LogLevel
    fields: Mapping[str, str]


def _debug(event: str) -> _Known:
    return _Known(event, LogLevel.debug, {})


def _signal(name: str) -> _Known:
    return _Known("process.signal_received", LogLevel.info, {"signal": name})


# Twisted logs these at info, and an operator can act on none of them;
# each unauthenticated connect to the control port made two of the AMP
# ones.  Keyed by their format strings (Twisted 24.7 to 26.x).
_TWISTED_FORMATS: Final[Mapping[str, _Known]] = {
    "Starting factory {factory!r}": _debug("twisted.factory_started"),
    "Stopping factory {factory!r}": _debug("twisted.factory_stopped"),
    "{cls} connection established (HOST:{host} PEER:{peer})": _debug("twisted.amp_connected"),
    "{cls} connection lost (HOST:{host} PEER:{peer})": _debug("twisted.amp_disconnected"),
    "Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.": _debug(
        "twisted.retry_scheduled"
    ),
    "twistd {version} ({exe} {pyVersion}) starting up.": _debug("twistd.starting"),
    "reactor class: {reactor}.": _debug("twistd.reactor"),
    "Server Shut Down.": _debug("twistd.stopped"),
    "Main loop terminated.": _debug("twistd.main_loop_terminated"),
    # Why the process is stopping: kept at info.
    "Received SIGINT, shutting down.": _signal("SIGINT"),
    "Received SIGTERM, shutting down.": _signal("SIGTERM"),
    "Received SIGBREAK, shutting down.": _signal("SIGBREAK"),
}

# Legacy log.msg lines of the ports (tcp.Port, udp.Port), by their text.
_TWISTED_TEXTS: Final[tuple[tuple[re.Pattern[str], _Known], ...]] = (
    (re.compile(r".+ starting on \d+"), _debug("twisted.port_listening")),
    (re.compile(r"\((?:TCP|UDP) Port \d+ Closed\)"), _debug("twisted.port_closed")),
)


def classify_framework_event(event: LogEvent) -> LogEvent:
    """
    C{event} with a stable C{event} name and its level (debug, but for
    C{process.signal_received}) if it is one of Twisted's known lines;
    any other event is returned as it is.  Never changes C{event} itself.
    """
    if "event" in event:
        return event
    fmt = event.get("log_format")
    known = _TWISTED_FORMATS.get(fmt) if isinstance(fmt, str) else None
    if known is None and _is_legacy(event) and not event.get("isError"):
        text = " ".join(safe_str(part) for part in event["message"])
        known = next((k for pattern, k in _TWISTED_TEXTS if pattern.fullmatch(text)), None)
    if known is None:
        return event
    return {**event, **known.fields, "event": known.event, "log_level": known.level}


# Rendering an event.


class _Record(NamedTuple):
    ts: str
    level: str
    event: str
    msg: str
    logger: str
    fields: dict[str, Any]
    error: str | None
    traceback: str | None


def _is_internal(key: str) -> bool:
    return key.startswith(_INTERNAL_PREFIX) or key == _FORMAT_KEY


def _is_legacy(event: LogEvent) -> bool:
    # twisted.python.log.msg always sets a tuple "message" and "isError".
    return "isError" in event and isinstance(event.get("message"), tuple)


def _format_ts(when: float) -> str:
    moment = datetime.fromtimestamp(when, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _timestamp(event: LogEvent, clock: Callable[[], float]) -> str:
    when = event.get("log_time")
    if isinstance(when, int | float) and not isinstance(when, bool):
        try:
            return _format_ts(float(when))
        except (OverflowError, OSError, ValueError):
            pass
    return _format_ts(clock())


def _level_of(event: LogEvent) -> LogLevel:
    level = event.get("log_level")
    if isinstance(level, NamedConstant) and level in _LEVEL_ORDER:
        return cast(LogLevel, level)
    return LogLevel.info


def _exception_name(exc_type: type[BaseException]) -> str:
    if exc_type.__module__ == "builtins":
        return exc_type.__qualname__
    return qual(exc_type)


def _describe_failure(failure: object) -> tuple[str, str]:
    """
    Return (error, traceback) text for a L{Failure} or exception.
    """
    if isinstance(failure, Failure):
        exc_type = failure.type or BaseException
        value: object = failure.value
        try:
            trace = failure.getTraceback()
        except Exception:
            trace = ""
    elif isinstance(failure, BaseException):
        exc_type = type(failure)
        value = failure
        trace = "".join(tb_module.format_exception(failure))
    else:
        return safe_str(failure), ""
    text = safe_str(value)
    name = _exception_name(exc_type)
    return (f"{name}: {text}" if text else name), trace


def _render(event: LogEvent, clock: Callable[[], float]) -> _Record:
    legacy = _is_legacy(event)
    failure = event.get("log_failure")
    if failure is None and legacy and isinstance(event.get("failure"), Failure):
        failure = event["failure"]

    fields: dict[str, Any] = {}
    formatting: dict[str, Any] = dict(event)
    for key, value in event.items():
        if not isinstance(key, str) or _is_internal(key):
            continue
        safe = REDACTED if is_sensitive(key) else redact(value)
        formatting[key] = safe
        if key == "event" or (legacy and (key in _LEGACY_KEYS or key == "failure")):
            continue
        fields[key] = safe

    if isinstance(formatting.get("log_flattened"), Mapping):
        formatting["log_flattened"] = _redact_flattened(formatting["log_flattened"])
    elif isinstance(formatting.get("log_format"), str):
        formatting["log_format"] = _redact_format(formatting["log_format"])

    msg: str | None = None
    if legacy:
        if failure is not None and "log_failure" not in event:
            # log.err(failure, why): its log_text repeats the traceback.
            msg = safe_str(event.get("why") or "Unhandled Error")
        elif isinstance(event.get(_FORMAT_KEY), str):
            # log.msg(format="...%(name)s", name=...): render from redacted fields.
            try:
                msg = event[_FORMAT_KEY] % formatting
            except Exception:
                msg = None
    if msg is None:
        msg = formatEvent(formatting)

    namespace = event.get("log_namespace")
    logger = namespace if isinstance(namespace, str) else "-"
    name = event.get("event")
    event_name = logger if name is None else safe_str(name)

    error = trace = None
    if failure is not None:
        error, trace = _describe_failure(failure)

    return _Record(
        ts=_timestamp(event, clock),
        level=_level_of(event).name,
        event=event_name,
        msg=msg,
        logger=logger,
        fields=fields,
        error=error,
        traceback=trace,
    )


def _fallback_record(event: LogEvent, exc: BaseException, clock: Callable[[], float]) -> _Record:
    # Deliberately shows nothing of the event but its name: it could not be
    # rendered, so it cannot be redacted either.
    name = event.get("event", event.get("log_namespace"))
    return _Record(
        ts=_format_ts(clock()),
        level=LogLevel.error.name,
        event="logging.render_failed",
        msg=f"could not render log event {safe_str(name)!r}: {safe_repr(exc)}",
        logger=__name__,
        fields={},
        error=None,
        traceback=None,
    )


# Making values JSON-safe.


_IP_TYPES: Final = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)


def _jsonable(value: Any, depth: int = 0) -> Any:
    """
    Convert C{value} into something L{json.dumps} writes faithfully; anything
    without a natural JSON form is written as its C{repr}.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return _TOO_DEEP
    if isinstance(value, Mapping):
        return {_json_key(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v, depth + 1) for v in value), key=repr)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, Enum):
        inner = value.value
        return inner if isinstance(inner, str | int | float | bool) else value.name
    if isinstance(value, ValueConstant):
        return _jsonable(value.value, depth + 1)
    if isinstance(value, NamedConstant):
        return value.name
    if isinstance(value, (PurePath, *_IP_TYPES)):
        return str(value)
    if isinstance(value, Failure | BaseException):
        return _describe_failure(value)[0]
    return safe_repr(value)


def _json_key(key: object) -> str:
    return key if isinstance(key, str) else safe_str(key)


# Observers.


class _LevelFilteredObserver:
    """
    Shared machinery: level filter, rendering, one locked write per event.
    """

    def __init__(
        self,
        stream: LogSink,
        level: LogLevel = LogLevel.warn,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.stream = stream
        #: Events below this level are dropped; may be changed at runtime.
        self.level = level
        self._clock: Callable[[], float] = time.time if clock is None else clock
        # Re-entrant: a signal handler (twistd logs "Received SIGTERM") runs
        # on this thread between bytecodes, possibly inside our own write;
        # a plain Lock deadlocked the process right there.
        self._lock = threading.RLock()

    def __call__(self, event: LogEvent) -> None:
        event = classify_framework_event(event)
        if _LEVEL_ORDER[_level_of(event)] < _LEVEL_ORDER.get(self.level, 0):
            return
        try:
            text = self._text(_render(event, self._clock))
        except Exception as exc:
            text = self._text(_fallback_record(event, exc, self._clock))
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    def _text(self, record: _Record) -> str:
        raise NotImplementedError


@implementer(ILogObserver)
class JSONLinesObserver(_LevelFilteredObserver):
    """
    Write each event at or above C{level} to C{stream} as one JSON object on
    one line, then flush.

    Keys: C{ts} (RFC 3339 UTC, milliseconds), C{level}, C{event} (the event's
    C{event} field, else its namespace), C{msg}, C{logger} (the namespace),
    the event's own fields (redacted; a field that collides with one of those
    keys is written with a trailing underscore), and C{error}/C{traceback}
    when the event carries a failure.

    @param clock: the time to stamp events that carry no C{log_time}.
    """

    def _text(self, record: _Record) -> str:
        out: dict[str, Any] = {
            "ts": record.ts,
            "level": record.level,
            "event": record.event,
            "msg": record.msg,
            "logger": record.logger,
        }
        reserved = set(_RESERVED)
        if record.error is not None:
            reserved.update(_FAILURE_KEYS)
        for key, value in record.fields.items():
            name = key
            while name in reserved or name in out:
                name += "_"
            out[name] = _jsonable(value)
        if record.error is not None:
            out["error"] = record.error
            out["traceback"] = record.traceback
        return json.dumps(out, separators=(",", ":")) + "\n"


@implementer(ILogObserver)
class PrettyObserver(_LevelFilteredObserver):
    """
    Write each event at or above C{level} to C{stream} as one human-readable
    line, then flush::

        2026-11-25T09:00:00.123Z INFO  rule.activated  rule web activated  ports=8080

    Fields follow as C{key=value} (redacted; values with spaces or quotes are
    JSON-quoted); a failure's traceback follows on the next lines.

    @param clock: the time to stamp events that carry no C{log_time}.
    """

    def _text(self, record: _Record) -> str:
        parts = [f"{record.ts} {record.level.upper():<5} {record.event}"]
        msg = record.msg.rstrip()
        if msg:
            parts.append(msg)
        if record.fields:
            parts.append(" ".join(f"{k}={_pretty_value(v)}" for k, v in record.fields.items()))
        text = "  ".join(parts) + "\n"
        if record.traceback:
            text += record.traceback.rstrip("\n") + "\n"
        elif record.error:
            text += record.error + "\n"
        return text


def _pretty_value(value: Any) -> str:
    plain = _jsonable(value)
    if isinstance(plain, str):
        if plain and plain.isprintable() and not any(c.isspace() or c in "\"'=" for c in plain):
            return plain
        return json.dumps(plain, ensure_ascii=False)
    return json.dumps(plain, ensure_ascii=False, separators=(",", ":"))
