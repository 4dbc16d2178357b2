"""
One field-checking toolkit for every surface that reads settings an
operator wrote: the standalone TOML file, C{server.toml}, the
C{[resolver]} table and the API's rule bodies.

Each check is written once, with one wording, so an error reads the same
whichever file or request it comes from.  A L{FieldChecker} never raises
on bad input: each problem goes to a callback with the place it was found
(a label such as a rule's name, or C{None}), a dotted field name, a message
saying how to fix it and a stable error code (C{validation_failed} unless
the caller passes a more precise one).  Each check returns the valid value,
L{ABSENT} when the key is not in its table, or C{None} when it reported.

The numbers a check enforces come from L{portunus.bounds}.  A leaf module:
the data plane may import it; it imports nothing from the server, client,
control or standalone packages.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from portunus.bounds import Bound

__all__ = [
    "ABSENT",
    "BAD_CHARACTERS",
    "Absent",
    "FieldChecker",
    "Report",
    "describe_value",
    "has_bad_characters",
    "is_int",
    "printable",
    "suggestion",
    "unknown_key_message",
]

T = TypeVar("T")


class Absent:
    """Marks a key that is not in its table (distinct from any decoded value)."""


ABSENT = Absent()

#: C{report(where, field, message, code)}: C{where} is a label (a rule's) or C{None}.
Report = Callable[[str | None, str, str, str], None]


def printable(text: str) -> str:
    """
    User text as it may be echoed in a message: one issue must stay one
    line, whatever control characters a quoted TOML key or value holds.
    """
    return text if text.isprintable() else repr(text)[1:-1]


def describe_value(value: object) -> str:
    """The type of a decoded value, as an operator would name it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def is_int(value: object) -> bool:
    """An integer that is not a boolean: C{true} is never a port or a count."""
    return isinstance(value, int) and not isinstance(value, bool)


#: What a message says of a name L{has_bad_characters} refuses.
BAD_CHARACTERS = (
    "contains control or format characters (such as bidirectional overrides or "
    "zero-width characters); use printable text only"
)


def has_bad_characters(text: str) -> bool:
    """
    Whether C{text} holds a character a name (of a user, client or rule)
    may not: the one check every name goes through.

    Refused is every character Unicode calls "Other" or "Separator" but the
    ASCII space (what C{str.isprintable} refuses): control characters
    (C{Cc}, which corrupt log lines), format characters (C{Cf}: the
    bidirectional overrides and isolates U+202A-U+202E and U+2066-U+2069,
    which make a name display as something else, and the zero-width
    characters U+200B-U+200D, U+2060 and U+FEFF, which make two names look
    alike), surrogates (C{Cs}, which cannot be encoded), line and paragraph
    separators, spaces other than U+0020, private-use and unassigned code
    points.
    """
    return not text.isprintable()


def suggestion(key: str, allowed: Sequence[str]) -> str:
    """C{"did you mean 'x'? "} for the allowed key closest to C{key}, or C{""}."""
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def unknown_key_message(key: str, allowed: Sequence[str], what: str | None = None) -> str:
    """The message for a key C{allowed} does not hold, found in C{what} (a table)."""
    where = f" in {what}" if what else ""
    return (
        f"unknown key '{printable(key)}'{where}; {suggestion(key, allowed)}"
        f"allowed keys: {', '.join(allowed)}"
    )


class FieldChecker:
    """
    Checks of single fields, each reporting what is wrong through
    L{report}.  L{reported} counts reports, so a caller can tell whether a
    part of a table was clean.
    """

    def __init__(self, report: Report) -> None:
        self._report = report
        self.reported = 0

    def report(
        self, where: str | None, field: str, message: str, code: str = "validation_failed"
    ) -> None:
        self.reported += 1
        self._report(where, field, message, code)

    def strict(
        self,
        table: Mapping[str, object],
        allowed: Sequence[str],
        where: str | None,
        prefix: str,
        what: str | None,
    ) -> None:
        """
        Report every key of C{table} not in C{allowed}, as the field
        C{prefix.key} (just C{key} when C{prefix} is empty).
        """
        for key in table:
            if key not in allowed:
                field = f"{prefix}.{printable(key)}" if prefix else printable(key)
                self.report(where, field, unknown_key_message(key, allowed, what))

    def typed(
        self,
        table: Mapping[str, object],
        key: str,
        where: str | None,
        field: str,
        kind: str,
        accept: Callable[[object], bool],
        hint: str,
        code: str = "validation_failed",
    ) -> object:
        """
        The value at C{key} if C{accept} takes its type, L{ABSENT}, or
        C{None} after reporting C{must be <kind>, not <its type>; <hint>}.
        """
        raw = table.get(key, ABSENT)
        if isinstance(raw, Absent) or accept(raw):
            return raw
        self.report(where, field, f"must be {kind}, not {describe_value(raw)}; {hint}", code)
        return None

    def integer(
        self,
        table: Mapping[str, object],
        key: str,
        where: str | None,
        field: str,
        bound: Bound[int],
        code: str = "validation_failed",
    ) -> int | Absent | None:
        """A whole number within C{bound}."""
        hint = f"write a number from {bound.span()} without quotes or decimals"
        raw = self.typed(table, key, where, field, "an integer", is_int, hint, code)
        if not isinstance(raw, int):
            return raw if isinstance(raw, Absent) else None
        if raw not in bound:
            self.report(
                where, field, f"{raw} is out of range; use a value from {bound.span()}", code
            )
            return None
        return raw

    def duration(
        self,
        table: Mapping[str, object],
        key: str,
        where: str | None,
        field: str,
        bound: Bound[float],
        code: str = "validation_failed",
    ) -> float | Absent | None:
        """A number of seconds (integer or float) within C{bound}."""
        hint = f"write a number from {bound.span()} without quotes"
        raw = self.typed(table, key, where, field, "a number of seconds", _is_number, hint, code)
        if not isinstance(raw, int | float):
            return raw if isinstance(raw, Absent) else None
        # Compared before converting: a huge integer overflows float(), and
        # NaN fails every comparison, so both are out of range.
        if raw not in bound:
            self.report(
                where,
                field,
                f"{raw} is out of range; use a value from {bound.span()} seconds",
                code,
            )
            return None
        return float(raw)

    def boolean(
        self, table: Mapping[str, object], key: str, where: str | None, field: str
    ) -> bool | Absent | None:
        hint = f"write {key} = true or {key} = false (no quotes)"
        raw = self.typed(table, key, where, field, "a boolean", _is_bool, hint)
        return raw if isinstance(raw, bool | Absent) else None

    def choice(
        self,
        table: Mapping[str, object],
        key: str,
        where: str | None,
        field: str,
        choices: Sequence[str],
        aliases: Mapping[str, str] | None = None,
        code: str = "validation_failed",
    ) -> str | Absent | None:
        """One of C{choices}, case and surrounding spaces ignored."""
        allowed = ", ".join(f'"{c}"' for c in choices)
        hint = f"use one of {allowed}"
        raw = self.typed(table, key, where, field, "a string", _is_str, hint, code)
        if not isinstance(raw, str):
            return raw if isinstance(raw, Absent) else None
        value = raw.strip().lower()
        if aliases:
            value = aliases.get(value, value)
        if value not in choices:
            self.report(
                where, field, f"'{printable(raw)}' is not allowed; use one of {allowed}", code
            )
            return None
        return value

    def parsed(
        self,
        table: Mapping[str, object],
        key: str,
        where: str | None,
        field: str,
        parse: Callable[[str], T],
        hint: str,
        code: str = "validation_failed",
    ) -> T | Absent | None:
        """
        A string read by C{parse}, whose C{ValueError} message is the
        report; C{hint} says what to write instead of a non-string.
        """
        raw = self.typed(table, key, where, field, "a string", _is_str, hint, code)
        if not isinstance(raw, str):
            return raw if isinstance(raw, Absent) else None
        try:
            return parse(raw)
        except ValueError as e:
            self.report(where, field, str(e), code)
            return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_str(value: object) -> bool:
    return isinstance(value, str)
