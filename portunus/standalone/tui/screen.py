"""
Drawing a L{Dashboard} with urwid, and the application that runs it.

urwid runs on Twisted's reactor (L{urwid.TwistedEventLoop}), so the
stats socket, the probes and the keyboard share one loop and none of them
blocks the others.  The widgets are rebuilt from the dashboard after every
Snapshot and key: a few hundred rows at most, once a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, cast

import urwid
from twisted.internet.defer import Deferred

from portunus.reactors import IStatsClientReactor
from portunus.standalone.tui.chart import braille_chart
from portunus.standalone.tui.dashboard import TABS, Dashboard, Tab
from portunus.standalone.tui.feed import RuleInfo, Snapshot, ring_size
from portunus.standalone.tui.probe import Prober, ProbeResult
from portunus.standalone.tui.units import duration, human_bytes, human_rate

__all__ = ["PALETTE", "DashboardView", "StatsApp"]

PALETTE = [
    ("header", "black", "light gray"),
    ("tab", "light gray", "default"),
    ("tab_active", "black", "light cyan"),
    ("column", "white,bold", "default"),
    ("selected", "black", "light cyan"),
    ("good", "light green", "default"),
    ("warn", "yellow", "default"),
    ("bad", "light red", "default"),
    ("dim", "dark gray", "default"),
    ("in", "light cyan", "default"),
    ("out", "light magenta", "default"),
    ("paused", "black", "yellow"),
    ("live", "black", "light green"),
    ("title", "white,bold", "default"),
]

_CHART_ROWS = 5

_HELP = [
    ("q, Ctrl-C", "quit"),
    ("?", "this help"),
    ("Esc", "close this help"),
    ("Tab, →, l", "next tab"),
    ("Shift-Tab, ←, h", "previous tab"),
    ("↑, k / ↓, j", "select a rule"),
    ("Enter", "the selected rule's Detail"),
    ("p", "pause / resume the display"),
    ("s", "sort: rate → total → name → conns"),
    ("r", "reverse the order"),
    ("c", "reset the baseline: totals and errors count from now"),
]


_Align = Literal["left", "center", "right"]


def _text(markup: Any, align: _Align = "left") -> urwid.Text:
    return urwid.Text(markup, align=align, wrap="ellipsis")


def rtt_markup(rule: RuleInfo, probe: ProbeResult | None) -> Any:
    """The probe's answer, coloured as Portunus: green <50 ms, yellow <200, red else."""
    if rule.proto != "tcp":
        return ("dim", "-")
    if probe is None:
        return ("dim", "…")
    if probe.state != "ok" or probe.rtt_ms is None:
        return ("bad", probe.state)
    rtt = probe.rtt_ms
    text = f"{rtt:.1f}ms" if rtt < 10 else f"{rtt:.0f}ms"
    return ("good" if rtt < 50 else "warn" if rtt < 200 else "bad", text)


class _Keys(urwid.WidgetWrap[Any]):
    """The top widget: takes every key before any widget below can."""

    def __init__(self, widget: urwid.Widget, on_key: Callable[[str], None]) -> None:
        super().__init__(widget)
        self._on_key = on_key

    def selectable(self) -> bool:
        return True

    def keypress(self, size: tuple[int, ...], key: str) -> str | None:
        self._on_key(key)
        return None


class DashboardView:
    """Builds the widgets for a dashboard; L{update} after it changed."""

    def __init__(self, dashboard: Dashboard, on_key: Callable[[str], None]) -> None:
        self.dashboard = dashboard
        self.status = ""
        self._frame: urwid.Frame[Any, Any, Any] = urwid.Frame(urwid.SolidFill(" "))
        self._placeholder: urwid.WidgetPlaceholder[Any] = urwid.WidgetPlaceholder(self._frame)
        self.top = _Keys(self._placeholder, on_key)
        self.update()

    def update(self) -> None:
        d = self.dashboard
        self._frame.header = urwid.Pile([self._title(), self._tabs()])
        body = {
            Tab.OVERVIEW: self._overview,
            Tab.DETAIL: self._detail,
            Tab.ERRORS: self._errors,
        }[d.tab]()
        self._frame.body = body
        self._frame.footer = self._footer()
        placeholder = self._placeholder
        if d.help:
            placeholder.original_widget = urwid.Overlay(
                self._help(), self._frame, "center", 76, "middle", len(_HELP) + 3
            )
        else:
            placeholder.original_widget = self._frame

    # -- frame ------------------------------------------------------------

    def _title(self) -> urwid.Widget:
        d = self.dashboard
        latest = d.shown.latest
        parts = [
            f" portunus-standalone {d.hello.daemon_version}",
            f"{len(d.hello.rules)} rule(s)",
            f"refresh {d.hello.refresh_ms} ms",
        ]
        if latest is not None:
            parts.insert(1, f"up {duration(latest.uptime_ms)}")
            if latest.rss_bytes is not None:
                parts.append(f"rss {human_bytes(latest.rss_bytes)}")
            if latest.fd_open is not None:
                limit = "?" if latest.fd_limit is None else str(latest.fd_limit)
                parts.append(f"fds {latest.fd_open}/{limit}")
            parts.append(f"seq {latest.seq}")
        state = ("paused", " PAUSED ") if d.paused else ("live", " LIVE ")
        return urwid.Columns(
            [
                urwid.AttrMap(_text(" │ ".join(parts)), "header"),
                (urwid.GIVEN, 8, urwid.AttrMap(_text(state[1], "center"), state[0])),
            ]
        )

    def _tabs(self) -> urwid.Widget:
        d = self.dashboard
        markup: list[Any] = [" "]
        for tab in TABS:
            markup.append(("tab_active" if tab is d.tab else "tab", f" {tab.value} "))
            markup.append(" ")
        arrow = "▲" if d.reverse else "▼"
        return urwid.Columns(
            [
                _text(markup),
                (urwid.GIVEN, 20, _text(("dim", f"sort: {d.sort} {arrow} "), "right")),
            ]
        )

    def _footer(self) -> urwid.Widget:
        hints = (
            "q quit  ? help  Tab/←→ tabs  ↑↓ select  Enter detail  "
            "p pause  s sort  r reverse  c reset"
        )
        return _text(("dim", f" {hints}  {self.status}"))

    def _help(self) -> urwid.Widget:
        rows = [
            urwid.Columns([(urwid.GIVEN, 18, _text(("title", key))), _text(what)])
            for key, what in _HELP
        ]
        return urwid.LineBox(
            urwid.Filler(urwid.Pile(rows), valign="top"), title="Keys (Esc closes)"
        )

    # -- Overview ---------------------------------------------------------

    #: Title, width (cells, or a weight), the sort it shows, alignment.
    _OVERVIEW_COLUMNS: tuple[tuple[str, int | tuple[str, int], str | None, _Align], ...] = (
        ("RULE", ("weight", 2), "name", "left"),
        ("PROTO", 5, None, "left"),
        ("LISTEN", 11, None, "left"),
        ("IN/s", 11, "rate", "right"),
        ("OUT/s", 11, None, "right"),
        ("IN", 10, "total", "right"),
        ("OUT", 10, None, "right"),
        ("CONNS", 12, "conns", "right"),
        ("FLOWS", 12, None, "right"),
        ("UPSTREAM", ("weight", 2), None, "left"),
        ("RTT", 8, None, "right"),
    )

    def _columns(self, cells: list[Any], attr: str | None = None) -> urwid.Widget:
        widgets: list[Any] = []
        for (_, width, _, align), cell in zip(self._OVERVIEW_COLUMNS, cells, strict=True):
            widget = _text(cell, align)
            if isinstance(width, tuple):
                widgets.append((urwid.WEIGHT, width[1], widget))
            else:
                widgets.append((urwid.GIVEN, width, widget))
        row = urwid.Columns(widgets, dividechars=1)
        return urwid.AttrMap(row, attr) if attr else row

    def _overview(self) -> urwid.Widget:
        d = self.dashboard
        arrow = "▲" if d.reverse else "▼"
        heading = [
            f"{title} {arrow}" if sort == d.sort else title
            for title, _, sort, _ in self._OVERVIEW_COLUMNS
        ]
        rows: list[Any] = []
        order = d.ordered()
        for rule in order:
            rows.append(
                self._columns(
                    self._overview_cells(rule), "selected" if rule.id == d.selected else None
                )
            )
        if not rows:
            rows.append(_text(("dim", " This daemon forwards no rules.")))
        walker = urwid.SimpleFocusListWalker(rows)
        ids = [r.id for r in order]
        if d.selected in ids:
            walker.set_focus(ids.index(d.selected))
        return urwid.Frame(
            urwid.ListBox(walker),
            header=urwid.AttrMap(self._columns(heading), "column"),
        )

    def _overview_cells(self, rule: RuleInfo) -> list[Any]:
        d = self.dashboard
        history = d.shown
        rates = history.rates(rule.id)
        totals = history.totals(rule.id)
        target = rule.active_target
        missing = ("dim", "-")
        conns: Any = missing
        flows: Any = missing
        if totals is not None:
            if rule.proto == "tcp":
                conns = f"{totals.conns_active}/{totals.conns_total}"
            else:
                cap = "" if rule.udp_max_flows is None else f"/{rule.udp_max_flows}"
                flows = f"{totals.flows_active}{cap}"
        return [
            rule.name,
            rule.proto,
            rule.listen,
            ("in", human_rate(rates.bytes_in)) if rates else missing,
            ("out", human_rate(rates.bytes_out)) if rates else missing,
            human_bytes(totals.bytes_in) if totals else missing,
            human_bytes(totals.bytes_out) if totals else missing,
            conns,
            flows,
            target.display() if target else missing,
            rtt_markup(rule, d.shown_probes.get(rule.id)),
        ]

    # -- Detail -----------------------------------------------------------

    def _detail(self) -> urwid.Widget:
        d = self.dashboard
        rule = d.selected_rule()
        if rule is None:
            return urwid.Filler(_text(("dim", " No rule selected.")), valign="top")
        history = d.shown
        window = ring_size(d.hello.refresh_ms) - 1
        pieces: list[Any] = [
            _text(
                [
                    ("title", f" {rule.name}"),
                    f"  {rule.proto}  listen {rule.listen}  ",
                    ("dim", f"id {rule.id}"),
                ]
            ),
            urwid.Divider(),
        ]
        for counter, attr, label in (
            ("bytes_in", "in", "IN  client → target"),
            ("bytes_out", "out", "OUT target → client"),
        ):
            series = history.series(rule.id, counter)
            top = max(series, default=0.0)
            now = series[-1] if series else 0.0
            pieces.append(
                _text(
                    [
                        (attr, f" {label}"),
                        f"   now {human_rate(now)}   max {human_rate(top)}   ",
                        ("dim", "last 60 s"),
                    ]
                )
            )
            pieces.append(_Chart(series, window, top, attr))
        pieces.append(urwid.Divider("─"))
        pieces.append(
            urwid.Columns(
                [
                    self._targets_panel(rule),
                    self._counters_panel(rule),
                    self._capabilities_panel(rule),
                ],
                dividechars=3,
            )
        )
        pieces.append(urwid.Divider("─"))
        errors = history.errors(rule.id)
        if errors:
            pieces.append(
                _text(
                    [("title", " Errors  ")]
                    + [("bad", f"{name} {count}   ") for name, count in errors.items()]
                )
            )
        else:
            pieces.append(_text([("title", " Errors  "), ("dim", "none counted")]))
        return urwid.ListBox(urwid.SimpleFocusListWalker(pieces))

    def _targets_panel(self, rule: RuleInfo) -> urwid.Widget:
        active = rule.active_target
        probe = self.dashboard.shown_probes.get(rule.id)
        rows: list[urwid.Widget] = [_text(("title", " Targets"))]
        for target in rule.targets:
            is_active = target == active
            line: list[Any] = [
                ("good", " ▶ ") if is_active else "   ",
                target.display(),
                ("dim", f"  prio {target.priority}"),
            ]
            if target.proxy_protocol:
                line.append(("dim", f"  PROXY {target.proxy_protocol}"))
            if is_active:
                line += ["  ", rtt_markup(rule, probe)]
            rows.append(_text(line))
        return urwid.Pile(rows)

    def _counters_panel(self, rule: RuleInfo) -> urwid.Widget:
        history = self.dashboard.shown
        totals = history.totals(rule.id)
        rates = history.rates(rule.id)
        rows: list[urwid.Widget] = [_text(("title", "Counters"))]
        if totals is None:
            rows.append(_text(("dim", "no counters yet")))
            return urwid.Pile(rows)

        def line(label: str, value: str, rate: str = "") -> urwid.Widget:
            return _text([("dim", f"{label:<10}"), value, ("dim", f"  {rate}" if rate else "")])

        rows.append(
            line("in", human_bytes(totals.bytes_in), human_rate(rates.bytes_in) if rates else "")
        )
        rows.append(
            line("out", human_bytes(totals.bytes_out), human_rate(rates.bytes_out) if rates else "")
        )
        if rule.proto == "tcp":
            rows.append(line("conns", f"{totals.conns_active} active, {totals.conns_total} total"))
        else:
            rows.append(line("flows", f"{totals.flows_active} active"))
            rows.append(line("datagrams", f"{totals.datagrams_in} in, {totals.datagrams_out} out"))
        rows.append(line("failovers", str(totals.target_failovers_total)))
        return urwid.Pile(rows)

    def _capabilities_panel(self, rule: RuleInfo) -> urwid.Widget:
        rows: list[urwid.Widget] = [_text(("title", "Capabilities"))]
        if rule.proto == "tcp":
            splice = rule.splice_capable
            rows.append(
                _text(
                    [
                        ("dim", "splice    "),
                        ("good", "yes") if splice else ("dim", "no (userspace relay)"),
                    ]
                )
            )
        versions = sorted({t.proxy_protocol for t in rule.targets if t.proxy_protocol})
        rows.append(_text([("dim", "PROXY     "), ", ".join(versions) if versions else "none"]))
        if rule.proto == "udp":
            rows.append(self._saturation(rule))
        return urwid.Pile(rows)

    def _saturation(self, rule: RuleInfo) -> urwid.Widget:
        totals = self.dashboard.shown.totals(rule.id)
        cap = rule.udp_max_flows
        if totals is None or not cap:
            return _text([("dim", "UDP flows "), ("dim", "-")])
        share = totals.flows_active / cap
        attr = "good" if share < 0.5 else "warn" if share < 0.9 else "bad"
        return _text([("dim", "UDP flows "), (attr, f"{totals.flows_active}/{cap} ({share:.0%})")])

    # -- Errors -----------------------------------------------------------

    def _errors(self) -> urwid.Widget:
        d = self.dashboard
        rows: list[Any] = []
        for rule in d.ordered():
            attr = "selected" if rule.id == d.selected else None
            for name, count in d.shown.errors(rule.id).items():
                row = urwid.Columns(
                    [
                        (urwid.WEIGHT, 2, _text(f" {rule.name}")),
                        (urwid.WEIGHT, 2, _text(("bad", name))),
                        (urwid.GIVEN, 14, _text(str(count), "right")),
                    ],
                    dividechars=1,
                )
                rows.append(urwid.AttrMap(row, attr) if attr else row)
        if not rows:
            rows.append(_text(("dim", " No error counted by any rule (since the baseline).")))
        heading = urwid.Columns(
            [
                (urwid.WEIGHT, 2, _text(" RULE")),
                (urwid.WEIGHT, 2, _text("ERROR")),
                (urwid.GIVEN, 14, _text("COUNT", "right")),
            ],
            dividechars=1,
        )
        return urwid.Frame(
            urwid.ListBox(urwid.SimpleFocusListWalker(rows)),
            header=urwid.AttrMap(heading, "column"),
        )


class _Chart(urwid.Widget):
    """A Braille line chart as wide as the screen, of the 60 s window."""

    _sizing = frozenset([urwid.FLOW])

    def __init__(self, series: list[float], window: int, top: float, attr: str) -> None:
        super().__init__()
        self._series = series
        self._window = max(1, window)
        self._top = top
        self._attr = attr

    def rows(self, size: tuple[int], focus: bool = False) -> int:
        return _CHART_ROWS

    def render(
        self, size: tuple[()] | tuple[int] | tuple[int, int], focus: bool = False
    ) -> urwid.Canvas:
        width = size[0] if size else 80
        plot_width = max(1, width - 2)
        # Stretch the window over the chart's width: each interval gets the
        # same number of dots, so 60 s always spans the chart.
        stretch = max(1, math.floor(2 * plot_width / self._window))
        values = [v for v in self._series for _ in range(stretch)]
        lines = braille_chart(values, plot_width, _CHART_ROWS, self._top)
        text = urwid.Text([(self._attr, "\n".join(" " + line for line in lines))], wrap="clip")
        return text.render((width,))


class StatsApp:
    """The running TUI: screen, keys, data and probes on one reactor."""

    def __init__(
        self,
        reactor: IStatsClientReactor,
        dashboard: Dashboard,
        close: Callable[[], None],
        screen: Any = None,
    ) -> None:
        """
        @param close: closes the socket when the user quits.
        @param screen: the urwid screen (a raw terminal by default).
        """
        self.dashboard = dashboard
        self._close = close
        self.view = DashboardView(dashboard, self.key)
        self.loop = urwid.MainLoop(
            self.view.top,
            PALETTE,
            screen=screen,
            # urwid types its reactor as Twisted's ReactorBase; any reactor works.
            event_loop=urwid.TwistedEventLoop(reactor=cast(Any, reactor), manage_reactor=False),
            handle_mouse=False,
        )
        self.prober = Prober(reactor, lambda: dashboard.hello.rules, self.probe_result)
        #: Fires with (exit code, error or None) when the TUI ends.
        self.done: Deferred[tuple[int, str | None]] = Deferred()
        self._started = False

    def start(self) -> None:
        self.loop.start()
        self._started = True
        # Ctrl-C as a key (quit cleanly), not a signal.
        if hasattr(self.loop.screen, "tty_signal_keys"):
            self.loop.screen.tty_signal_keys(intr="undefined")
        self.prober.start()

    def snapshot(self, snapshot: Snapshot) -> None:
        self.dashboard.add_snapshot(snapshot)
        if not self.dashboard.paused:
            self.redraw()

    def probe_result(self, rule_id: str, result: ProbeResult) -> None:
        self.dashboard.add_probe(rule_id, result)
        if not self.dashboard.paused:
            self.redraw()

    def key(self, key: str) -> None:
        if self.dashboard.press(key):
            self._close()
            self.finish(0, None)
            return
        self.view.status = "baseline reset" if key == "c" else ""
        self.view.update()

    def redraw(self) -> None:
        if self.done.called:
            return
        self.view.update()
        if self._started:
            self.loop.draw_screen()

    def finish(self, code: int, error: str | None) -> None:
        """End the TUI (quit, end of file or error) and give the terminal back."""
        if self.done.called:
            return
        self.prober.stop()
        if self._started:
            self._started = False
            self.loop.stop()
        self.done.callback((code, error))
