"""The kernel's modules import each other without cycles: a module-level import graph over
`spurcore.*` (imports inside functions and under `TYPE_CHECKING` are deferred and left out)
must be acyclic, so any kernel module can be imported first."""

from __future__ import annotations

import ast
from pathlib import Path

import spurcore

ROOT = Path(spurcore.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The kernel modules `path` imports when it is imported."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base in modules:
                    found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first search meets (each reported once, from its first module)."""
    seen: set[str] = set()
    found: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        if node in stack:
            found.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, [*stack, node])

    for node in sorted(graph):
        walk(node, [])
    return found


def kernel_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    # a package's submodule imports its package first; that edge is not a cycle of ours
    return {module_name(p): {m for m in top_level_imports(p, modules)
                             if not module_name(p).startswith(m + ".")} for p in paths}


def test_the_kernel_has_no_import_cycle():
    graph = kernel_graph()
    assert len(graph) > 20 and graph["spurcore.runner"], "the graph was not read"
    assert cycles(graph) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
