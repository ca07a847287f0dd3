"""What the repository's packages import from outside the standard library and themselves, and
which of those modules this Python lacks, each with the places that import it: for installing
the packages with `pip install --no-deps` onto a Python that holds a fixed set of packages (the
GPU check, `benchmarks/gpu_check.sh`, on machines that may reach no package registry). An import
inside a function is needed only when that function runs (the place names it); one at a module's
top stops that module from importing at all. Tests are left out; imports that this Python's
version skips (`if sys.version_info < (3, 11)`) too. Standard library only: it runs before
anything is installed.

    python benchmarks/imports_check.py               # the lacking modules, or that none lacks
    python benchmarks/imports_check.py --json        # {module: [place, ...]} for what lacks
    python benchmarks/imports_check.py --editables   # `-e DIR` for every package, for pip
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = (68, 0)  # the build backend's floor (pyproject.toml), which --no-build-isolation takes from this Python


def projects(root: Path = ROOT) -> list[Path]:
    """Every distribution of the repository, as `make install` installs them: the kernel, each
    plugin, each third-party example."""
    found = [root, *sorted(root.glob("plugins/*/pyproject.toml")), *sorted(root.glob("examples/third_party/*/pyproject.toml"))]
    return [found[0], *(p.parent for p in found[1:])]


def sources(project: Path) -> list[Path]:
    """The Python files of a distribution's packages (`spurcore*`), tests left out."""
    return [path for package in sorted(project.glob("spurcore*/__init__.py")) for path in sorted(package.parent.rglob("*.py"))
            if not any(part in ("tests", "build") or part.startswith("test_") for part in path.relative_to(project).parts)]


def _taken(test: ast.expr) -> bool | None:
    """Whether this Python takes an `if`: on `sys.version_info` as it says, never on
    `TYPE_CHECKING`; None for any other test (both branches may run)."""
    text = ast.unparse(test)
    if text in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
        return False
    if "version_info" not in text:
        return None
    return bool(eval(compile(ast.Expression(test), "<test>", "eval"), {"sys": sys}))  # noqa: S307 - our own source


def imports(path: Path) -> list[tuple[str, int, str]]:
    """(top-level module, line, where) of every import `path` makes on this Python; `where`
    names the enclosing function (`Class.method`), or is "" for what runs on import."""
    found: list[tuple[str, int, str]] = []

    def visit(nodes: list[ast.stmt], where: str, in_function: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if node.module and not node.level else []
                found.extend((name.split(".")[0], node.lineno, where if in_function else "") for name in names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                named = where if in_function else f"{where}.{node.name}" if where else node.name
                visit(node.body, named, in_function or not isinstance(node, ast.ClassDef))
            elif isinstance(node, ast.If):
                taken = _taken(node.test)
                if taken is None or taken:
                    visit(node.body, where, in_function)
                if taken is None or not taken:
                    visit(node.orelse, where, in_function)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []), where, in_function)

    visit(ast.parse(path.read_text(), filename=str(path)).body, "", False)
    return found


def lacking(root: Path = ROOT) -> dict[str, list[str]]:
    """{module: ["path:line in function" or "path:line (module top)", ...]} for every module the
    packages import that is neither in the standard library, nor theirs, nor importable here."""
    ours = {init.parent.name for project in projects(root) for init in project.glob("spurcore*/__init__.py")}
    missing: dict[str, list[str]] = {}
    for project in projects(root):
        for path in sources(project):
            for module, line, where in imports(path):
                if module in sys.stdlib_module_names or module in ours or module == "__future__":
                    continue
                if module in missing or importlib.util.find_spec(module) is None:
                    place = f"{path.relative_to(root)}:{line} " + (f"in {where}" if where else "(module top)")
                    missing.setdefault(module, []).append(place)
    return dict(sorted(missing.items()))


def describe(missing: dict[str, list[str]]) -> str:
    if not missing:
        return f"imports_check: {sys.executable} has every module the repository's packages import"
    lines = [f"imports_check: {sys.executable} lacks {len(missing)} module(s) the repository's packages import; "
             f"what imports them is skipped (an import at a module's top skips that whole module):"]
    lines += [f"  {module}: {', '.join(places)}" for module, places in missing.items()]
    return "\n".join(lines)


def editables(root: Path = ROOT) -> list[str]:
    """`pip install` arguments for every distribution, editable; refuses a Python without the
    build backend, which `--no-build-isolation` takes from it rather than from a registry."""
    try:
        from importlib.metadata import version

        found = tuple(int(p) for p in version("setuptools").split(".")[:2])
    except Exception:  # noqa: BLE001 - absent or unreadable: the same answer
        found = None
    if found is None or found < SETUPTOOLS:
        raise SystemExit(f"imports_check: {sys.executable} has setuptools {'.'.join(map(str, found or ())) or 'not at all'}; "
                         f"installing without a registry needs setuptools >= {'.'.join(map(str, SETUPTOOLS))} there")
    return [arg for project in projects(root) for arg in ("-e", str(project.relative_to(root) if project != root else "."))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print {module: [place, ...]} as JSON")
    parser.add_argument("--editables", action="store_true", help="print `-e DIR` for every distribution")
    args = parser.parse_args()
    if args.editables:
        print(" ".join(editables()))
    elif args.json:
        print(json.dumps(lacking(), indent=2))
    else:
        print(describe(lacking()))


if __name__ == "__main__":
    main()
