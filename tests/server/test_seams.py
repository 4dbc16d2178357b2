"""
The server's public seams are typed: no C{Any} in the signatures of what
L{portunus.server.plane}, L{portunus.server.store},
L{portunus.server.sessions} and L{portunus.server.controlplane} export.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

SEAMS = (
    "portunus.server.plane",
    "portunus.server.store",
    "portunus.server.sessions",
    "portunus.server.controlplane",
)


def _anys(node: ast.expr | None) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        node = ast.parse(node.value, mode="eval").body
    if node is None:
        return 0
    return sum(
        (isinstance(n, ast.Name) and n.id == "Any")
        or (isinstance(n, ast.Attribute) and n.attr == "Any")
        for n in ast.walk(node)
    )


def _signature_anys(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
    return _anys(fn.returns) + sum(_anys(p.annotation) for p in params)


def _public(name: str) -> bool:
    return not name.startswith("_") or name in ("__init__", "__call__")


def _exported_anys(module_name: str) -> Iterator[tuple[str, int]]:
    """(qualified name, how many C{Any}) for each exported name's annotations."""
    module = importlib.import_module(module_name)
    for name in module.__all__:
        obj = getattr(module, name)
        home = inspect.getmodule(obj) if inspect.isclass(obj) or inspect.isfunction(obj) else None
        tree = ast.parse(inspect.getsource(home or module))
        count = 0
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                count += _signature_anys(node)
            elif isinstance(node, ast.ClassDef) and node.name == name:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _public(
                        item.name
                    ):
                        count += _signature_anys(item)
                    elif isinstance(item, ast.AnnAssign) and _public(ast.unparse(item.target)):
                        count += _anys(item.annotation)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets
            ):
                count += _anys(node.value)
        yield f"{module_name}.{name}", count


class SeamTypingTests(SynchronousTestCase):
    def test_no_any_on_public_seams(self) -> None:
        """
        Every exported class's public methods and attributes, every exported
        function and type alias, say what they take and return: no C{Any}.
        """
        found = {name: count for module in SEAMS for name, count in _exported_anys(module) if count}
        self.assertEqual(found, {})

    def test_the_count_sees_any(self) -> None:
        """The counter finds C{Any} in parameters, returns and attributes."""
        source = "class C:\n    x: Any\n    def f(self, a: Any) -> 'dict[str, Any]': ...\n"
        [cls] = ast.parse(source).body
        assert isinstance(cls, ast.ClassDef)
        attr, method = cls.body
        assert isinstance(attr, ast.AnnAssign) and isinstance(method, ast.FunctionDef)
        self.assertEqual((_anys(attr.annotation), _signature_anys(method)), (1, 2))
