"""
The TUI's state and keys, apart from any drawing: which tab, which rule,
what order, paused or not, and what the data says.

The screen (L{portunus.standalone.tui.screen}) draws a L{Dashboard}; a
key press goes to L{Dashboard.press}, so every key of Portunus §10 is
testable without a terminal.
"""

from __future__ import annotations

import enum

import attrs

from portunus.standalone.tui.feed import Hello, History, RuleInfo, Snapshot
from portunus.standalone.tui.probe import ProbeResult

__all__ = ["SORTS", "TABS", "Dashboard", "Tab"]


class Tab(enum.Enum):
    OVERVIEW = "Overview"
    DETAIL = "Detail"
    ERRORS = "Errors"


TABS = (Tab.OVERVIEW, Tab.DETAIL, Tab.ERRORS)
#: What C{s} cycles through, in order.
SORTS = ("rate", "total", "name", "conns")

_NEXT_TAB = ("tab", "right", "l")
_PREV_TAB = ("shift tab", "left", "h")
_UP = ("up", "k")
_DOWN = ("down", "j")
_QUIT = ("q", "Q", "ctrl c")


@attrs.define
class _Frozen:
    history: History
    probes: dict[str, ProbeResult]


class Dashboard:
    """Everything the screen shows, and how keys change it."""

    def __init__(self, hello: Hello) -> None:
        self.hello = hello
        self.history = History(hello.refresh_ms)
        self.probes: dict[str, ProbeResult] = {}
        self.tab = Tab.OVERVIEW
        self.sort = SORTS[0]
        self.reverse = False
        self.help = False
        self.selected: str | None = hello.rules[0].id if hello.rules else None
        self._frozen: _Frozen | None = None

    # -- data -------------------------------------------------------------

    def add_snapshot(self, snapshot: Snapshot) -> None:
        self.history.add(snapshot)

    def add_probe(self, rule_id: str, result: ProbeResult) -> None:
        self.probes[rule_id] = result

    @property
    def paused(self) -> bool:
        return self._frozen is not None

    @property
    def shown(self) -> History:
        """What the screen draws: the live history, or what it was when paused."""
        return self._frozen.history if self._frozen is not None else self.history

    @property
    def shown_probes(self) -> dict[str, ProbeResult]:
        return self._frozen.probes if self._frozen is not None else self.probes

    # -- order and selection ----------------------------------------------

    def ordered(self) -> list[RuleInfo]:
        """The rules in the current sort order (ties in config order)."""
        history = self.shown
        rules = list(self.hello.rules)

        def rate(rule: RuleInfo) -> float:
            rates = history.rates(rule.id)
            return 0.0 if rates is None else rates.bytes_in + rates.bytes_out

        def total(rule: RuleInfo) -> int:
            totals = history.totals(rule.id)
            return 0 if totals is None else totals.bytes_in + totals.bytes_out

        def conns(rule: RuleInfo) -> int:
            counters = history.counters(rule.id)
            return 0 if counters is None else counters.conns_active + counters.flows_active

        if self.sort == "name":
            rules.sort(key=lambda r: r.name.casefold(), reverse=self.reverse)
        else:
            key = {"rate": rate, "total": total, "conns": conns}[self.sort]
            # Biggest first; reversed, smallest first.
            rules.sort(key=key, reverse=not self.reverse)
        return rules

    def selected_rule(self) -> RuleInfo | None:
        for rule in self.hello.rules:
            if rule.id == self.selected:
                return rule
        return None

    def _move(self, step: int) -> None:
        order = self.ordered()
        if not order:
            return
        ids = [r.id for r in order]
        index = ids.index(self.selected) if self.selected in ids else 0
        self.selected = ids[max(0, min(len(ids) - 1, index + step))]

    # -- keys -------------------------------------------------------------

    def press(self, key: str) -> bool:
        """
        Apply one key (urwid's names); True when it asks to quit.  Unknown
        keys do nothing.  While help is open, only C{Esc}, C{?} and the
        quit keys act.
        """
        if key in _QUIT:
            return True
        if self.help:
            if key in ("esc", "?"):
                self.help = False
            return False
        if key == "?":
            self.help = True
        elif key in _NEXT_TAB:
            self.tab = TABS[(TABS.index(self.tab) + 1) % len(TABS)]
        elif key in _PREV_TAB:
            self.tab = TABS[(TABS.index(self.tab) - 1) % len(TABS)]
        elif key in _UP:
            self._move(-1)
        elif key in _DOWN:
            self._move(1)
        elif key == "enter":
            self.tab = Tab.DETAIL
        elif key == "p":
            self._frozen = (
                None
                if self._frozen is not None
                else _Frozen(self.history.copy(), dict(self.probes))
            )
        elif key == "s":
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        elif key == "r":
            self.reverse = not self.reverse
        elif key == "c":
            self.history.reset_baseline()
            if self._frozen is not None:
                self._frozen.history.reset_baseline()
        return False
