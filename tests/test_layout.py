"""The house rules of issue 13, checked on every run: sizes, cycles, private names.

* no module in ``hessaudit/`` over 400 lines, no function body over 80 lines (a long typer
  signature does not count: the body starts after the docstring);
* no import cycle between hessaudit modules, counting every import (module level,
  ``TYPE_CHECKING`` blocks and the lazy imports inside functions);
* a private module (``_name.py``) is imported only from inside its own package (its folder and
  the folders below), and a private name (``_name``) only from inside the module's own package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hessaudit"
MAX_MODULE_LINES = 400
MAX_BODY_LINES = 80
# Named exceptions (docs/architecture.md says why each reads better whole).
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _package_of(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    package = _package_of(module)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    found.append((sub, None, node.lineno))
                else:
                    found.append((base, alias.name, node.lineno))
    return [f for f in found if f[0] == "hessaudit" or f[0].startswith("hessaudit.")]


def _inside(importer: str, package: str) -> bool:
    own = _package_of(importer)
    return own == package or own.startswith(package + ".")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_short(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    if module in LONG_MODULES:
        return
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_bodies_are_short(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    long = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str) and len(body) > 1):
                body = body[1:]
            n = node.end_lineno - body[0].lineno + 1
            key = f"{module}.{node.name}"
            if n > MAX_BODY_LINES and key not in LONG_FUNCTIONS:
                long.append(f"{node.name} ({n} lines)")
    assert not long, f"{module}: " + ", ".join(long)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_private_names_stay_in_their_package(module: str) -> None:
    bad = []
    for target, name, line in _imports(module):
        parts = target.split(".")
        for i, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__"):
                owner = ".".join(parts[:i])
                if not _inside(module, owner):
                    bad.append(f"line {line}: {target}")
                break
        private_name = name and name.startswith("_") and not name.startswith("__")
        if private_name and target in MODULES and not _inside(module, _package_of(target)):
            bad.append(f"line {line}: {target}.{name}")
    assert not bad, f"{module} imports private names of another package: " + "; ".join(bad)


def test_no_import_cycles() -> None:
    graph = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _name, _line in _imports(module):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module and MODULES[target].name != "__init__.py":
                graph[module].add(target)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:10])
