"""How the TUI writes sizes, rates and durations: short, fixed-width friendly."""

from __future__ import annotations

__all__ = ["duration", "human_bytes", "human_rate"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(value: float) -> str:
    """C{0 B}, C{512 B}, C{1.5 KiB}, C{12.3 MiB}, C{2.00 GiB}: three significant digits."""
    amount = float(value)
    for unit in _UNITS:
        if abs(amount) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{amount:.0f} B"
            if abs(amount) < 10:
                return f"{amount:.2f} {unit}"
            if abs(amount) < 100:
                return f"{amount:.1f} {unit}"
            return f"{amount:.0f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def human_rate(bytes_per_sec: float) -> str:
    return f"{human_bytes(bytes_per_sec)}/s"


def duration(ms: int) -> str:
    """C{45s}, C{3m04s}, C{1h02m}, C{2d03h}."""
    secs = max(0, ms // 1000)
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"
