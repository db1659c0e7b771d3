"""The package's shape, checked statically: no import cycles, pure kernels, no reach into private names.

Every ``import`` of a Scoreline module counts, at module level or inside a function, because a
function-level import only hides a cycle until the first call takes it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> the package it is installed as (pyproject.toml's package-dir)
PACKAGES = {
    "scoreline": "scoreline",
    "engine": "scoreline.engine",
    "kernels": "scoreline.kernels",
    "server": "scoreline.server",
    "registry": "scoreline.registry",
}
# What a kernel module may import: numeric code only (docs/contracts.md, "kernels/").
KERNEL_IMPORTS = ("numpy", "numba", "math", "scoreline.kernels", "__future__", "os")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is_package) for every source file of the installed package."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join([package, *parts])] = (path, is_package)
    return found


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import statement in module ``name``."""
    path, is_package = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    base = name.split(".") if is_package else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [alias.name for alias in node.names]
            # `from package import submodule` imports the submodule
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            if subs:
                out.extend((sub, [], node.lineno) for sub in subs)
                names = [n for n in names if f"{module}.{n}" not in MODULES]
            if names or not subs:
                out.append((module, names, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in _imports(name) if m in MODULES and m != name} for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_checker_finds_a_cycle_and_a_clean_graph_has_none():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("scoreline.kernels")))
def test_kernels_import_only_numeric_code(name):
    bad = [(m, line) for m, _, line in _imports(name)
           if not any(m == allowed or m.startswith(allowed + ".") for allowed in KERNEL_IMPORTS)]
    assert bad == [], f"{name} imports {bad}: kernels/ holds pure Numba code over numpy arrays"


def test_no_module_takes_another_modules_private_names():
    reach = []
    for name in MODULES:
        path, _ = MODULES[name]
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> Scoreline module it is bound to
        for module, names, line in _imports(name):
            if module in MODULES and module != name:
                reach.extend((name, line, f"{module}.{n}") for n in names
                             if n.startswith("_") and not n.startswith("__"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in MODULES:
                        aliases[alias.asname or alias.name] = full
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in MODULES:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__") and aliases[node.value.id] != name):
                reach.append((name, node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    assert reach == [], "private names used across modules: " + ", ".join(
        f"{where}:{line} uses {what}" for where, line, what in reach)
