"""No module reaches into another module's private names (a lint rule, run as a test).

A name with one leading underscore is private to its module: another module
that imports it (``from m import _f``), reads it off an imported module
(``m._f``, ``getattr(m, "_f")``) or imports from a private module (``from jax._src import ...``)
couples itself to what its owner may change at any time. What a caller needs
is made public where it belongs. Dunder names (``__version__``) are public.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("flaxprune", "experiments", "tests") for p in (ROOT / d).rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(source: str, filename: str = "<source>") -> list[str]:
    """``'line: what'`` for every private name of another module that ``source`` uses."""
    tree = ast.parse(source, filename)
    modules: set[str] = set()  # local names bound to imported modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(part) for part in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
                modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)  # maybe a module (from pkg import mod); checked below
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        elif (  # getattr(obj, "_name"): the same reach, spelled as a string
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "cls"))
        ):
            found.append(f"{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


@pytest.mark.parametrize(
    "source,expected",
    [
        ("from flaxprune.training.loop import _make", ["1: from flaxprune.training.loop import _make"]),
        ("from flaxprune.training import loop\nloop._create_state_fn(run)", ["2: loop._create_state_fn"]),
        ("import flaxprune.training.loop as L\nL._x", ["2: L._x"]),
        ("from jax._src import core", ["1: from jax._src import ..."]),
        ("import jax._src.core", ["1: import jax._src.core"]),
        ("from flaxprune import __version__\nimport flaxprune\nflaxprune.__version__", []),
        ("getattr(dl_manager, '_manual_dir', None)", ["1: getattr(..., '_manual_dir')"]),
        ("class A:\n    def f(self):\n        return self._x, getattr(self, '_y')", []),  # its own private state
        ("from __future__ import annotations\ndef _own(): pass\n_own()", []),
    ],
)
def test_the_rule_on_small_sources(source, expected):
    assert violations(source) == expected


def test_no_module_uses_another_modules_private_names():
    assert SOURCES, f"no Python sources under {ROOT}"
    found = [
        f"{path.relative_to(ROOT)}:{v}"
        for path in SOURCES
        for v in violations(path.read_text(encoding="utf-8"), str(path))
    ]
    assert not found, "private names used across modules (make them public where they belong):\n" + "\n".join(found)
