"""
Requests refused before anyone was authenticated, counted instead of
stored.

Anyone who can reach the operator API can send such requests as fast as
the network allows; an audit row (or a log line) for each would let them
fill the disk and bury the entries that matter.  So they are counted: the
metric C{portunus_operator_unauthenticated_failures_total{reason}} for each,
and one C{audit.unauthenticated_summary} log line per interval with the
counts by reason and the busiest sources.

Memory is bounded: reasons are error codes of the registry, and at most
L{MAX_SOURCES} distinct source addresses are told apart per interval (the
rest are counted together).
"""

from __future__ import annotations

from collections import Counter

from twisted.logger import Logger

__all__ = ["MAX_SOURCES", "SUMMARY_INTERVAL", "TOP_SOURCES", "FailureTally"]

#: Seconds between two summary lines, at most one per interval.
SUMMARY_INTERVAL = 60.0
#: Distinct source addresses told apart per interval.
MAX_SOURCES = 1024
#: Sources a summary line names, the busiest first.
TOP_SOURCES = 5

log = Logger(namespace="portunus.server.audit")


class FailureTally:
    """Counts of refused unauthenticated requests since the last summary."""

    def __init__(self) -> None:
        self._reasons: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()
        self._other_sources = 0

    def count(self, reason: str, remote: str | None) -> None:
        """One more refusal for C{reason}, from C{remote}."""
        self._reasons[reason] += 1
        source = remote if remote is not None else "unknown"
        if source in self._sources or len(self._sources) < MAX_SOURCES:
            self._sources[source] += 1
        else:
            self._other_sources += 1

    @property
    def total(self) -> int:
        """Refusals counted since the last summary."""
        return sum(self._reasons.values())

    def summarize(self, interval: float) -> None:
        """Log what was counted over the last C{interval} seconds (if anything), and start over."""
        total = self.total
        if not total:
            return
        top = self._sources.most_common(TOP_SOURCES)
        log.warn(
            "{total} unauthenticated requests refused in the last {interval_secs:g} s "
            "(by reason: {reasons}; busiest sources: {sources})",
            event="audit.unauthenticated_summary",
            total=total,
            interval_secs=interval,
            by_reason=dict(sorted(self._reasons.items())),
            top_sources=[[source, n] for source, n in top],
            distinct_sources=len(self._sources),
            # Requests from sources past the first MAX_SOURCES of the interval.
            other_sources=self._other_sources,
            reasons=", ".join(f"{r}={n}" for r, n in sorted(self._reasons.items())),
            sources=", ".join(f"{s}={n}" for s, n in top),
        )
        self._reasons.clear()
        self._sources.clear()
        self._other_sources = 0
