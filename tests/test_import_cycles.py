"""
No import circles among the modules of the portunus package.

The graph is read from the source with L{ast}, not by importing: an edge
A -> B is an import of B that runs when A is imported, so imports inside
functions do not count, nor do those under C{if TYPE_CHECKING:} (mypy
reads them, Python does not).  C{from P import name} is an edge to the
submodule C{P.name} when there is one, else to C{P}; importing a
submodule's parent packages is implied and not an edge, so a package's
C{__init__} may import its own submodules.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import portunus

#: Circles known but not yet broken, each as the set of modules in one
#: strongly connected component: a list to empty, never to add to.  (The
#: CLI's, where cli/server.py imported its command modules so they would
#: register() themselves, went with the explicit command table.)
KNOWN_CYCLES: list[frozenset[str]] = []


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Every module under C{root} (the package's directory): name -> (file, is package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for file in sorted(root.rglob("*.py")):
        parts = [package, *file.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (file, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time(
    body: Sequence[ast.stmt], deferred: bool = False
) -> Iterator[ast.Import | ast.ImportFrom]:
    """
    The import statements that run when a module (or class) body runs;
    C{deferred}: those in its functions too.
    """
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not deferred:
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time(node.orelse, deferred)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from _import_time(children, deferred)


def _imported_module(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    here = name.split(".") if is_package else name.split(".")[:-1]
    base = here[: len(here) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(root: Path, package: str, deferred: bool = False) -> dict[str, set[str]]:
    """
    Module -> the package's modules it imports at import time; C{deferred}:
    or in a function (an import put off to dodge a circle is still one).
    """
    modules = _modules(root, package)
    graph: dict[str, set[str]] = {}
    for name, (file, is_package) in modules.items():
        edges: set[str] = set()
        for node in _import_time(ast.parse(file.read_text(), str(file)).body, deferred):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
                continue
            source = _imported_module(node, name, is_package)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    edges.add(submodule)
                elif source in modules:
                    edges.add(source)
        graph[name] = edges
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with a circle in them (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(component: frozenset[str], graph: Mapping[str, set[str]]) -> str:
    return "\n".join(
        f"  {name} -> {', '.join(sorted(graph[name] & component))}" for name in sorted(component)
    )


class PortunusImportCycleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.graph = import_graph(Path(portunus.__file__).parent, "portunus")

    def test_no_new_cycles(self) -> None:
        """No import circle among portunus/ modules beyond the known ones."""
        new = [c for c in cycles(self.graph) if c not in KNOWN_CYCLES]
        self.assertEqual(
            new,
            [],
            "import circles (break them; a shared helper module usually does):\n"
            + "\n".join(_describe(c, self.graph) for c in new),
        )

    def test_known_cycles_are_still_there(self) -> None:
        """A circle that is gone is taken off KNOWN_CYCLES, so the list only shrinks."""
        found = cycles(self.graph)
        self.assertEqual([c for c in KNOWN_CYCLES if c not in found], [])

    def test_api_has_no_deferred_cycles(self) -> None:
        """
        The operator API has no circle even counting imports in functions:
        its modules import the leaf modules (request, route, schemas),
        never the app that mounts them.
        """
        graph = import_graph(Path(portunus.__file__).parent, "portunus", deferred=True)
        self.assertIn("portunus.server.api.catalog", graph["portunus.server.api.app"])
        api = [c for c in cycles(graph) if any(m.startswith("portunus.server.api") for m in c)]
        self.assertEqual(api, [], "\n".join(_describe(c, graph) for c in api))

    def test_the_graph_sees_the_package(self) -> None:
        """The graph has portunus' modules and their edges, so an empty result means something."""
        self.assertIn("portunus.cli.rules", self.graph["portunus.cli.server"])
        self.assertIn("portunus.server.store._store", self.graph["portunus.server.store"])


class ImportGraphTests(SynchronousTestCase):
    """The graph builder on a small package written for each test."""

    def package(self, files: Mapping[str, str], deferred: bool = False) -> dict[str, set[str]]:
        root = Path(self.mktemp()) / "pkg"
        for name, text in {"__init__.py": "", **files}.items():
            path = root / name
            os.makedirs(path.parent, exist_ok=True)
            path.write_text(text)
        return import_graph(root, "pkg", deferred)

    def test_circle_found(self) -> None:
        """a -> b -> c -> a is one component; a module importing itself is a circle too."""
        graph = self.package(
            {
                "a.py": "import pkg.b\n",
                "b.py": "from pkg import c\n",
                "c.py": "from pkg.a import thing\n",
                "d.py": "from pkg import d\n",
                "e.py": "import pkg.a\n",
            }
        )
        self.assertEqual(
            sorted(map(sorted, cycles(graph))), [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d"]]
        )

    def test_function_and_type_checking_imports_do_not_count(self) -> None:
        """Imports in functions, methods or under TYPE_CHECKING are not edges; others are."""
        graph = self.package(
            {
                "a.py": (
                    "from typing import TYPE_CHECKING\n"
                    "import typing\n"
                    "if TYPE_CHECKING:\n"
                    "    from pkg import b\n"
                    "if typing.TYPE_CHECKING:\n"
                    "    import pkg.b\n"
                    "else:\n"
                    "    import pkg.c\n"
                    "def f():\n"
                    "    import pkg.b\n"
                    "class K:\n"
                    "    async def g(self):\n"
                    "        from pkg import b\n"
                    "    from pkg import d\n"
                    "try:\n"
                    "    import pkg.e\n"
                    "except ImportError:\n"
                    "    pass\n"
                ),
                "b.py": "import pkg.a\n",
                "c.py": "",
                "d.py": "",
                "e.py": "",
            }
        )
        self.assertEqual(graph["pkg.a"], {"pkg.c", "pkg.d", "pkg.e"})
        self.assertEqual(cycles(graph), [])

    def test_deferred_imports_counted_when_asked(self) -> None:
        """With C{deferred}, an import in a function or method is an edge too."""
        files = {"a.py": "def f():\n    import pkg.b\n", "b.py": "import pkg.a\n"}
        self.assertEqual(cycles(self.package(files)), [])
        graph = self.package(files, deferred=True)
        self.assertEqual(graph["pkg.a"], {"pkg.b"})
        self.assertEqual(cycles(graph), [frozenset({"pkg.a", "pkg.b"})])

    def test_relative_and_package_imports(self) -> None:
        """Relative imports resolve; a name from a package is an edge to its __init__."""
        graph = self.package(
            {
                "sub/__init__.py": "from .x import X\n",
                "sub/x.py": "from .. import top\nfrom ..sub import Y\nX = 1\n",
                "sub/y.py": "from pkg.sub.x import X\n",
                "top.py": "",
            }
        )
        self.assertEqual(graph["pkg.sub"], {"pkg.sub.x"})
        self.assertEqual(graph["pkg.sub.x"], {"pkg.top", "pkg.sub"})
        self.assertEqual(graph["pkg.sub.y"], {"pkg.sub.x"})
        self.assertEqual(cycles(graph), [frozenset({"pkg.sub", "pkg.sub.x"})])
