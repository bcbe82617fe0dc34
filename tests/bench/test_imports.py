"""The package's modules import one another without a circle (functions' deferred imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import wersa

ROOT = Path(wersa.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["wersa", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The ``wersa`` modules ``path`` imports anywhere in its body (the nearest existing module of each name)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t.startswith("wersa"):
                found.add(t)
    # Importing an ancestor package (``import wersa`` inside wersa.bench) is not a dependency cycle.
    return {t for t in found if t != name and not name.startswith(t + ".")}


def test_no_import_circle():
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: _imports(p, set(files)) for m, p in files.items()}
    assert "wersa.bench.cell" in graph["wersa.bench.scale"]  # the walk sees deferred imports
    cycles = []
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
