"""
How many descriptors one rule, and all rules together, may hold.

Every proxied TCP connection holds two descriptors (client and target),
every UDP flow one.  Without a cap, one busy or hostile rule could take
them all, and the process would fail everything else: other rules'
accepts, the edge's control link (so it could not even be told to remove
the rule), its log file.  So:

  - a per-rule cap (C{max_conns_per_rule}): a rule holds at most this many
    connections (or UDP flows) at once; by default a quarter of the
    descriptors the reserve leaves, so about two flooded rules at once
    still leave room for the rest;
  - a reserve (C{reserve_fds}): no connection may take a descriptor once
    fewer than this many are free; by default an eighth of the open-file
    limit, and at least 64.

A refused connection is closed at once and counted on its rule
(C{conn_cap_rejects}, C{fd_reserve_rejects}).

The count of descriptors in use is kept, not read on every connection:
what connections and pooled splice pipes hold, tracked exactly, plus a
baseline (everything else: listeners, the control link, logs) read from
C{/proc/self/fd} at start, every L{MEASURE_EVERY} admissions, and again
before any refusal, so a refusal is always based on a fresh count.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from portunus.procstats import open_descriptors

__all__ = [
    "MEASURE_EVERY",
    "MIN_DEFAULT_RESERVE",
    "DescriptorBudget",
    "default_per_rule",
    "default_reserve",
]

log = Logger()

#: Admissions between two readings of the baseline.
MEASURE_EVERY = 256
#: The derived reserve is never below this.
MIN_DEFAULT_RESERVE = 64


def default_reserve(limit: int) -> int:
    """An eighth of the open-file limit, at least 64, at most half of it."""
    return min(max(MIN_DEFAULT_RESERVE, limit // 8), limit // 2)


def default_per_rule(limit: int, reserve: int) -> int:
    """A quarter of what the reserve leaves, in connections of two descriptors."""
    return max(1, (limit - reserve) // 8)


def _soft_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(soft)


@attrs.define
class DescriptorBudget:
    """
    The per-rule cap and the reserve of one forwarding process.

    @ivar held: descriptors held by admitted connections and flows now.
    @ivar wanted_reserve: the operator's C{reserve_fds}, or C{None} to derive it.
    @ivar wanted_per_rule: the operator's C{max_conns_per_rule}, or C{None}.
    """

    wanted_reserve: int | None = None
    wanted_per_rule: int | None = None
    count_open: Callable[[], int | None] = open_descriptors
    limit: int = 0
    reserve: int = 0
    per_rule: int = 0
    held: int = 0
    #: More descriptors held outside connections (splice pipes), read on demand.
    extra: list[Callable[[], int]] = attrs.field(factory=list)
    #: Everything else open at the last reading.
    _baseline: int = attrs.field(default=0, alias="_baseline")
    _since_measure: int = attrs.field(default=0, alias="_since_measure")

    @classmethod
    def for_limit(
        cls,
        limit: int | None = None,
        reserve: int | None = None,
        per_rule: int | None = None,
        count_open: Callable[[], int | None] = open_descriptors,
    ) -> DescriptorBudget:
        """The budget for the open-file C{limit} (the soft limit now by default)."""
        budget = cls(reserve, per_rule, count_open)
        budget.configure(limit)
        return budget

    def configure(self, limit: int | None = None) -> None:
        """
        Settle the numbers for the open-file C{limit} (the soft limit now by
        default: call again once the process raised it), deriving what the
        operator left unset.  A reserve of more than half the limit is
        lowered to half.
        """
        self.limit = _soft_limit() if limit is None else limit
        reserve = self.wanted_reserve
        if reserve is None:
            reserve = default_reserve(self.limit)
        self.reserve = min(reserve, self.limit // 2)
        per_rule = self.wanted_per_rule
        if per_rule is None:
            per_rule = default_per_rule(self.limit, self.reserve)
        self.per_rule = per_rule
        self.measure()

    def _extra(self) -> int:
        return sum(source() for source in self.extra)

    def measure(self) -> None:
        """Read the descriptors open now: the baseline is what connections do not hold."""
        self._since_measure = 0
        count = self.count_open()
        if count is not None:
            self._baseline = max(0, count - self.held - self._extra())

    @property
    def in_use(self) -> int:
        """Descriptors open, as last counted plus what connections took since."""
        return self._baseline + self.held + self._extra()

    def take(self, n: int) -> bool:
        """
        Hold C{n} more descriptors for a connection, unless that would cut
        into the reserve (counted afresh before refusing).
        """
        self._since_measure += 1
        if self._since_measure >= MEASURE_EVERY:
            self.measure()
        ceiling = self.limit - self.reserve
        if self.in_use + n > ceiling:
            self.measure()
            if self.in_use + n > ceiling:
                return False
        self.held += n
        return True

    def give_back(self, n: int) -> None:
        self.held -= n

    def log_settings(self, component: str) -> None:
        log.info(
            "open-file limit {limit}: {reserve} kept free, at most {per_rule} connections per rule",
            event=f"{component}.descriptor_budget",
            limit=self.limit,
            reserve=self.reserve,
            per_rule=self.per_rule,
        )
