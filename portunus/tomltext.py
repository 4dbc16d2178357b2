"""
Wording shared by every TOML config parser, so errors read the same
whichever file (standalone config, resolver table, later server.toml)
they come from.
"""

from __future__ import annotations

__all__ = ["describe_value", "printable"]


def printable(text: str) -> str:
    """
    User text as it may be echoed in a message: one issue must stay one
    line, whatever control characters a quoted TOML key or value holds.
    """
    return text if text.isprintable() else repr(text)[1:-1]


def describe_value(value: object) -> str:
    """The TOML type of a parsed value, as an operator would name it."""
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
