"""
Every bound is written once: in portunus/bounds.py.  The code may not
repeat a bound's numbers, and docs/ must state the same ones.
"""

from __future__ import annotations

import ast
import itertools
import operator
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from portunus import bounds
from portunus.bounds import BOUNDS, Bound

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "portunus"
DOCS = ROOT / "docs"

#: Files that may still spell bounds out, and why.  Empty it, don't grow it.
ALLOWED_FILES: dict[str, str] = {}

#: Numbers that equal a bound's by coincidence: (file, (low, high)) -> why.
ALLOWED_PAIRS: dict[tuple[str, tuple[int, int]], str] = {
    ("portunus/dataplane/proxyprotocol.py", (0, 0xFFFF)): (
        "a PROXY header's port field is 16 bits on the wire, not a setting"
    ),
}

#: The names docs/ give each bound: config keys, API fields, CLI flags
#: (written --ttl-secs or ttl_secs alike).
DOC_NAMES: dict[str, tuple[str, ...]] = {
    "port": ("port", "listen_port", "listen_ports"),
    "priority": ("priority",),
    "weight": ("weight",),
    "udp_max_flows": ("udp_max_flows", "udp_max_flows_per_rule"),
    "udp_flow_idle_secs": ("udp_flow_idle_secs",),
    "health_check_interval_secs": ("health_check_interval_secs",),
    "rate_limit": ("rate_limit",),
    "ack_timeout_secs": ("ack_timeout_secs", "ack_timeout"),
    "range_rule_max_ports": ("range_rule_max_ports",),
    "shutdown_drain_secs": ("shutdown_drain_secs", "shutdown_drain_timeout_secs"),
    "log_interval_secs": ("log_interval_secs",),
    "refresh_ms": ("refresh_ms",),
    "cache_entries": ("cache_entries",),
    "ttl_secs": ("ttl_secs",),
    "workers": ("workers",),
    "limit": ("limit",),
    "control_handshake_timeout_secs": ("control_handshake_timeout_secs",),
    "control_hello_timeout_secs": ("control_hello_timeout_secs",),
    "control_max_unauthenticated": ("control_max_unauthenticated",),
    "control_max_unauthenticated_per_source": ("control_max_unauthenticated_per_source",),
    "max_conns_per_rule": ("max_conns_per_rule", "max-conns-per-rule"),
    "reserve_fds": ("reserve_fds", "reserve-fds"),
}

_FOLD: dict[type, Callable[[Any, Any], Any]] = {
    ast.Pow: operator.pow,
    ast.Mult: operator.mul,
    ast.Add: operator.add,
    ast.Sub: operator.sub,
}


def _number(node: ast.AST) -> int | float | None:
    """The value of a numeric constant expression (C{10**12}, C{-1}), else None."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.BinOp) and type(node.op) in _FOLD:
        left, right = _number(node.left), _number(node.right)
        if left is None or right is None:
            return None
        result: int | float = _FOLD[type(node.op)](left, right)
        return result
    return None


def _pairs(tree: ast.AST) -> Iterator[tuple[int, tuple[int | float, int | float]]]:
    """
    Two numbers written side by side: neighbouring call arguments, tuple or
    list items, and the ends of a chained comparison C{low <= x <= high}.
    """
    for node in ast.walk(tree):
        runs: list[list[ast.expr]] = []
        if isinstance(node, ast.Call):
            runs.append(list(node.args))
        elif isinstance(node, ast.Tuple | ast.List):
            runs.append(list(node.elts))
        elif isinstance(node, ast.Compare) and len(node.comparators) == 2:
            runs.append([node.left, node.comparators[1]])
        for run in runs:
            for a, b in itertools.pairwise(run):
                low, high = _number(a), _number(b)
                if low is not None and high is not None:
                    yield a.lineno, (low, high)


def _span_pattern(bound: Bound[Any]) -> re.Pattern[str]:
    """A bound's two numbers as prose writes them: 30 to 300, 30..300, 30-300 (or en dash)."""

    def number(value: int | float) -> str:
        if isinstance(value, int) and value >= 10_000:
            # 86400, 86_400 and 86,400 are all the same number.
            digits = str(value)
            return "[_,]?".join(digits)
        return re.escape(f"{value:g}")

    # "1 to 64 characters" is a length limit, not the workers bound.
    return re.compile(
        rf"(?<![\d.]){number(bound.low)}\s*(?:\.\.|to|-|\u2013|up to)\s*{number(bound.high)}"
        r"(?![\d])(?!\s+(?:printable\s+)?(?:characters|bytes))"
    )


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def _sources() -> Iterator[tuple[str, ast.AST]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if path == Path(bounds.__file__).resolve() or name in ALLOWED_FILES:
            continue
        yield name, ast.parse(path.read_text(encoding="utf-8"), name)


class BoundLiteralTests(SynchronousTestCase):
    def test_scanner_catches_a_repeated_bound(self) -> None:
        """The scan finds a bound written as arguments, a tuple, a comparison or prose."""
        tree = ast.parse(
            "check(x, 30, 300)\n"
            "LIMITS = [('udp_flow_idle_secs', 30, 300)]\n"
            "ok = 30 <= value <= 300\n"
            "rate = check(1, 10**12)\n"
            "HELP = 'seconds (30..300)'\n"
        )
        pairs = [pair for _, pair in _pairs(tree)]
        self.assertEqual(pairs.count((30, 300)), 3)
        self.assertIn((1, 10**12), pairs)
        pattern = _span_pattern(bounds.UDP_FLOW_IDLE_SECS)
        self.assertTrue(any(pattern.search(text) for _, text in _strings(tree)))
        self.assertTrue(_span_pattern(bounds.ENROLLMENT_TTL_SECS).search("1 to 86,400"))
        self.assertFalse(pattern.search("30 to 3000"))

    def test_no_bound_is_written_twice(self) -> None:
        """No module but bounds.py writes a bound's two numbers, as code or as text."""
        targets: dict[tuple[Any, Any], str] = {}
        patterns: dict[str, re.Pattern[str]] = {}
        for name, b in BOUNDS.items():
            if (b.low, b.high) in targets:
                targets[b.low, b.high] += f" or {name}"
            else:
                targets[b.low, b.high] = name
                patterns[name] = _span_pattern(b)
        found: list[str] = []
        for name, tree in _sources():
            for line, pair in _pairs(tree):
                if pair in targets and (name, pair) not in ALLOWED_PAIRS:
                    found.append(f"{name}:{line}: {pair} is the {targets[pair]} bound")
            for line, text in _strings(tree):
                for bound_name, pattern in patterns.items():
                    match = pattern.search(text)
                    b = BOUNDS[bound_name]
                    if match and (name, (b.low, b.high)) not in ALLOWED_PAIRS:
                        found.append(f"{name}:{line}: '{match.group(0)}' is a {bound_name} bound")
        self.assertEqual(found, [], "use portunus.bounds instead:\n" + "\n".join(found))

    def test_allowances_are_still_needed(self) -> None:
        """Every allowed file and pair still repeats a bound, so the lists only shrink."""
        bounds_pairs = {(b.low, b.high) for b in BOUNDS.values()}
        for name in ALLOWED_FILES:
            tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
            self.assertTrue(bounds_pairs & {p for _, p in _pairs(tree)}, name)
        for name, pair in ALLOWED_PAIRS:
            tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
            self.assertIn(pair, [p for _, p in _pairs(tree)], name)


_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_NUMBER = r"\d[\d,_]*(?:\.\d+)?[⁰¹²³⁴⁵⁶⁷⁸⁹]*"
#: "30 to 300", "0.1..60", "30\u201330", "1 to 10¹²" (a hyphen would catch "8000-8010").
_DOC_RANGE = re.compile(rf"(?<![\w.])({_NUMBER})\s*(?:\.\.|to|\u2013)\s*({_NUMBER})(?![\w])")
_CODE = re.compile(r"`([^`]*)`")
#: How far after a name, in prose, a range may begin to be that name's.
_NEAR = 24


def _doc_number(text: str) -> float:
    """C{"1,000,000"}, C{"86_400"}, C{"0.1"} or C{"10¹²"} as a number."""
    digits = text.replace(",", "").replace("_", "")
    plain = digits.rstrip("⁰¹²³⁴⁵⁶⁷⁸⁹")
    if plain != digits:
        return float(int(plain) ** int(digits[len(plain) :].translate(_SUPERSCRIPT)))
    return float(plain)


def _doc_name(code: str) -> str:
    """The setting a code span names: C{--ttl-secs N} and C{targets[i].ttl_secs} are ttl_secs."""
    word = code.strip().lstrip("-[").split(" ")[0].split("=")[0].rstrip("]")
    return word.replace("-", "_").rsplit(".", 1)[-1]


def _units(text: str) -> Iterator[tuple[int, str, dict[str, str] | None]]:
    """
    The docs as (line, text, cells): one unit per table row (cells by
    column title) and per paragraph (cells None).
    """
    header: list[str] | None = None
    paragraph: list[str] = []
    start = 0
    for number, line in enumerate([*text.splitlines(), ""], start=1):
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if header is None:
                header = cells
            elif not all(set(c) <= set("-: ") for c in cells):
                yield number, line, dict(zip(header, cells, strict=False))
            continue
        header = None
        if line.strip():
            start = start or number
            paragraph.append(line)
        elif paragraph:
            yield start, " ".join(paragraph), None
            paragraph, start = [], 0


def _doc_statements(text: str) -> Iterator[tuple[int, str, tuple[float, float], str | None]]:
    """
    (line, bound name, range, default cell) for every range docs/ state
    after a name from L{DOC_NAMES}: the first range that follows the name
    and precedes the next such name, outside code spans.
    """
    names = {alias: bound for bound, aliases in DOC_NAMES.items() for alias in aliases}
    for line, unit, cells in _units(text):
        if cells is not None:
            first = next(iter(cells.values()), "")
            spans = [_doc_name(m.group(1)) for m in _CODE.finditer(first)]
            named = [names[s] for s in spans if s in names]
            if len(named) != 1:
                continue
            rest = " | ".join(list(cells.values())[1:])
            match = _DOC_RANGE.search(_CODE.sub(" ", rest))
            # A "Default" column, or the API's "Required" column: no (60).
            default = cells.get("Default")
            optional = re.fullmatch(r"no \((.*)\)", cells.get("Required", ""))
            if default is None and optional:
                default = optional[1]
            if match:
                yield line, named[0], (_doc_number(match[1]), _doc_number(match[2])), default
            continue
        pieces = _CODE.split(unit)
        # Odd pieces are code spans; even pieces the prose between them.
        for i in range(1, len(pieces), 2):
            bound = names.get(_doc_name(pieces[i]))
            if bound is None:
                continue
            prose = []
            for j in range(i + 1, len(pieces)):
                if j % 2 == 1 and _doc_name(pieces[j]) in names:
                    break
                prose.append(pieces[j] if j % 2 == 0 else " ")
            # Prose further from the name speaks of something else.
            match = _DOC_RANGE.search("".join(prose)[:_NEAR])
            if match:
                yield line, bound, (_doc_number(match[1]), _doc_number(match[2])), None


class BoundDocsTests(SynchronousTestCase):
    def test_reader_finds_statements(self) -> None:
        """The docs reader finds ranges in tables, in prose and across a line break."""
        text = (
            "| Key | Default | Allowed |\n|---|---|---|\n"
            "| `udp_flow_idle_secs` | `60` | 30 to 300 |\n\n"
            "A value out of range (`udp_flow_idle_secs` 30\u2013300, `ack_timeout_secs`\n"
            "0.1\u201360), or `--ttl-secs N` (1..86,400). `[rule.rate_limit]` caps are 1 to 10¹².\n"
            "With `--workers 2`, short connections per second changed little (7,037 to 7,092).\n"
        )
        self.assertEqual(
            list(_doc_statements(text)),
            [
                (3, "udp_flow_idle_secs", (30, 300), "`60`"),
                (5, "udp_flow_idle_secs", (30, 300), None),
                (5, "ack_timeout_secs", (0.1, 60), None),
                (5, "ttl_secs", (1, 86400), None),
                (5, "rate_limit", (1, 10**12), None),
            ],
        )

    def test_docs_state_the_bounds(self) -> None:
        """Every range docs/ give a setting is its bound, and every bound is documented."""
        self.assertEqual(set(DOC_NAMES), set(BOUNDS))
        wrong: list[str] = []
        seen: set[str] = set()
        for path in sorted(DOCS.rglob("*.md")):
            name = path.relative_to(ROOT).as_posix()
            for line, bound_name, stated, default in _doc_statements(path.read_text("utf-8")):
                bound = BOUNDS[bound_name]
                seen.add(bound_name)
                if stated != (bound.low, bound.high):
                    wrong.append(f"{name}:{line}: {bound_name} {stated}, not {bound.span()}")
                shown = _CODE.sub(r"\1", default or "").strip()
                if re.fullmatch(r"[\d.]+", shown) and float(shown) != bound.default:
                    wrong.append(
                        f"{name}:{line}: {bound_name} default {shown}, not {bound.default}"
                    )
        self.assertEqual(wrong, [])
        self.assertEqual(sorted(set(BOUNDS) - seen), [], "bounds docs/ never state")
