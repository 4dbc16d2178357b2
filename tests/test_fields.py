"""The field-checking toolkit: each check's verdicts and its one wording."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from portunus.bounds import ACK_TIMEOUT_SECS, UDP_FLOW_IDLE_SECS, Bound, burst_range
from portunus.fields import (
    ABSENT,
    FieldChecker,
    describe_value,
    has_bad_characters,
    is_int,
    printable,
    unknown_key_message,
)


class Recorder:
    """A checker whose reports land in a list of (where, field, message, code)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str | None, str, str, str]] = []
        self.check = FieldChecker(lambda *report: self.reports.append(report))

    def only(self) -> tuple[str | None, str, str, str]:
        if len(self.reports) != 1:
            raise AssertionError(f"expected one report, got {self.reports}")
        return self.reports[0]


class BoundTests(SynchronousTestCase):
    def test_membership(self) -> None:
        """A bound holds its ends and what lies between, never booleans or NaN."""
        self.assertIn(30, UDP_FLOW_IDLE_SECS)
        self.assertIn(300, UDP_FLOW_IDLE_SECS)
        self.assertNotIn(29, UDP_FLOW_IDLE_SECS)
        self.assertNotIn(301, UDP_FLOW_IDLE_SECS)
        self.assertNotIn(60.0, UDP_FLOW_IDLE_SECS)  # integral bounds take integers only
        self.assertNotIn(True, Bound(0, 1, None, "flag-like"))
        self.assertIn(0.1, ACK_TIMEOUT_SECS)
        self.assertIn(60, ACK_TIMEOUT_SECS)
        self.assertNotIn(float("nan"), ACK_TIMEOUT_SECS)
        self.assertNotIn(10**400, ACK_TIMEOUT_SECS)

    def test_span_and_schema(self) -> None:
        """A bound renders its range for messages and as a JSON-schema fragment."""
        self.assertEqual(UDP_FLOW_IDLE_SECS.span(), "30 to 300")
        self.assertEqual(UDP_FLOW_IDLE_SECS.span(".."), "30..300")
        self.assertEqual(ACK_TIMEOUT_SECS.span(), "0.1 to 60")
        self.assertEqual(
            UDP_FLOW_IDLE_SECS.schema(),
            {
                "type": "integer",
                "minimum": 30,
                "maximum": 300,
                "default": 60,
                "description": UDP_FLOW_IDLE_SECS.description,
            },
        )
        schema = ACK_TIMEOUT_SECS.schema("wait", default=False)
        self.assertEqual(schema["type"], "number")
        self.assertEqual(schema["description"], "wait")
        self.assertNotIn("default", schema)

    def test_fallback(self) -> None:
        """A bound without a default has no fallback to hand out."""
        self.assertEqual(UDP_FLOW_IDLE_SECS.fallback, 60)
        self.assertRaises(ValueError, lambda: Bound(1, 2, None, "x").fallback)

    def test_burst_range(self) -> None:
        """A burst may be from a hundredth (at least 1, rounded up) to 60 times its rate."""
        self.assertEqual(burst_range(1), (1, 60))
        self.assertEqual(burst_range(150), (2, 9000))
        self.assertEqual(burst_range(10_000), (100, 600_000))


class WordingTests(SynchronousTestCase):
    def test_describe_value(self) -> None:
        """Decoded values are named as TOML and JSON users know them."""
        for value, name in [
            (True, "a boolean"),
            (1, "an integer"),
            (1.5, "a float"),
            ("x", "a string"),
            ([], "an array"),
            ({}, "a table"),
            (object(), "a date/time"),
        ]:
            self.assertEqual(describe_value(value), name)

    def test_printable_keeps_one_line(self) -> None:
        """Control characters are escaped so one issue stays one line."""
        self.assertEqual(printable("web"), "web")
        self.assertEqual(printable("a\nb"), "a\\nb")

    def test_is_int_and_bad_characters(self) -> None:
        """Booleans are not integers; control characters and surrogates are bad text."""
        self.assertTrue(is_int(3))
        self.assertFalse(is_int(True))
        self.assertFalse(is_int(3.0))
        self.assertTrue(has_bad_characters("a\x00"))
        self.assertTrue(has_bad_characters("\ud800"))
        self.assertFalse(has_bad_characters("naïve"))

    def test_unknown_key_message(self) -> None:
        """An unknown key gets the closest allowed key and the whole list."""
        self.assertEqual(
            unknown_key_message("udp_flow_idle", ["udp_flow_idle_secs", "name"], "[[rule]]"),
            "unknown key 'udp_flow_idle' in [[rule]]; did you mean 'udp_flow_idle_secs'? "
            "allowed keys: udp_flow_idle_secs, name",
        )
        self.assertEqual(
            unknown_key_message("zzz", ["name"]), "unknown key 'zzz'; allowed keys: name"
        )


class CheckerTests(SynchronousTestCase):
    def test_absent_keys_are_not_reported(self) -> None:
        """Every check returns ABSENT for a missing key and reports nothing."""
        r = Recorder()
        c = r.check
        self.assertIs(c.integer({}, "k", None, "k", UDP_FLOW_IDLE_SECS), ABSENT)
        self.assertIs(c.duration({}, "k", None, "k", ACK_TIMEOUT_SECS), ABSENT)
        self.assertIs(c.boolean({}, "k", None, "k"), ABSENT)
        self.assertIs(c.choice({}, "k", None, "k", ["a"]), ABSENT)
        self.assertIs(c.parsed({}, "k", None, "k", int, "hint"), ABSENT)
        self.assertEqual((r.reports, c.reported), ([], 0))

    def test_strict(self) -> None:
        """Unknown keys are reported under prefix.key, or the bare key without a prefix."""
        r = Recorder()
        r.check.strict({"name": 1, "nmae": 2}, ["name"], "web", "rule", "[[rule]]")
        where, field, message, code = r.only()
        self.assertEqual((where, field, code), ("web", "rule.nmae", "validation_failed"))
        self.assertIn("did you mean 'name'?", message)
        r = Recorder()
        r.check.strict({"x\n": 1}, ["name"], None, "", None)
        self.assertEqual(r.only()[1], "x\\n")

    def test_integer(self) -> None:
        """Integers within the bound pass; others are refused naming the range."""
        r = Recorder()
        self.assertEqual(r.check.integer({"k": 60}, "k", None, "f", UDP_FLOW_IDLE_SECS), 60)
        cases: list[tuple[Any, str]] = [
            (
                "60",
                "must be an integer, not a string; write a number from 30 to 300 "
                "without quotes or decimals",
            ),
            (True, "must be an integer, not a boolean"),
            (60.0, "must be an integer, not a float"),
            (10, "10 is out of range; use a value from 30 to 300"),
        ]
        for raw, message in cases:
            r = Recorder()
            self.assertIsNone(
                r.check.integer({"k": raw}, "k", "w", "f", UDP_FLOW_IDLE_SECS, "some_code")
            )
            where, field, text, code = r.only()
            self.assertEqual((where, field, code), ("w", "f", "some_code"))
            self.assertTrue(text.startswith(message), text)

    def test_duration(self) -> None:
        """Seconds may be integers or floats; NaN and huge numbers are out of range."""
        r = Recorder()
        self.assertEqual(r.check.duration({"k": 5}, "k", None, "f", ACK_TIMEOUT_SECS), 5.0)
        self.assertEqual(r.check.duration({"k": 0.5}, "k", None, "f", ACK_TIMEOUT_SECS), 0.5)
        self.assertEqual(r.reports, [])
        for raw, message in [
            ("2", "must be a number of seconds, not a string; write a number from 0.1 to 60"),
            (False, "must be a number of seconds, not a boolean"),
            (float("nan"), "nan is out of range; use a value from 0.1 to 60 seconds"),
            (10**30, "is out of range; use a value from 0.1 to 60 seconds"),
        ]:
            r = Recorder()
            self.assertIsNone(r.check.duration({"k": raw}, "k", None, "f", ACK_TIMEOUT_SECS))
            self.assertIn(message, r.only()[2])

    def test_boolean(self) -> None:
        """Only true and false are booleans; the message shows both spellings."""
        r = Recorder()
        self.assertIs(r.check.boolean({"on": False}, "on", None, "f"), False)
        self.assertIsNone(r.check.boolean({"on": "yes"}, "on", None, "f"))
        self.assertEqual(
            r.only()[2],
            "must be a boolean, not a string; write on = true or on = false (no quotes)",
        )

    def test_choice(self) -> None:
        """Choices fold case, spaces and aliases; anything else lists the choices."""
        r = Recorder()
        choices = ["warn", "info"]
        self.assertEqual(r.check.choice({"k": " INFO "}, "k", None, "f", choices), "info")
        aliases = {"warning": "warn"}
        self.assertEqual(r.check.choice({"k": "Warning"}, "k", None, "f", choices, aliases), "warn")
        self.assertIsNone(r.check.choice({"k": "loud"}, "k", None, "f", choices))
        self.assertIsNone(r.check.choice({"k": 3}, "k", None, "f", choices))
        self.assertEqual(
            [report[2] for report in r.reports],
            [
                '\'loud\' is not allowed; use one of "warn", "info"',
                'must be a string, not an integer; use one of "warn", "info"',
            ],
        )

    def test_parsed(self) -> None:
        """A parsed string reports the parser's own message, a non-string the hint."""

        def parse(text: str) -> int:
            if not text.isdigit():
                raise ValueError(f"'{text}' is not digits")
            return int(text)

        r = Recorder()
        self.assertEqual(r.check.parsed({"k": "12"}, "k", None, "f", parse, "quote it"), 12)
        self.assertIsNone(r.check.parsed({"k": "x"}, "k", None, "f", parse, "quote it"))
        self.assertIsNone(r.check.parsed({"k": 12}, "k", None, "f", parse, "quote it"))
        self.assertEqual(
            [report[2] for report in r.reports],
            ["'x' is not digits", "must be a string, not an integer; quote it"],
        )
        self.assertEqual(r.check.reported, 2)
