"""The documentation is built from, and checked against, the code: the plugin API page names
what exists and what plugin authors use, the metric and selector definitions cover every one
installed, every installed mitigation has a page documenting each of its options, and every
relative link resolves. (The hook reference has its own drift test in test_hookspecs_docs.py.)"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import attrs
import pytest

from spurcore.plugins import PluginManager
from spurcore.scaffold import KINDS, new_plugin

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + sorted((DOCS / "methods").glob("*.md")) + [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]


@pytest.fixture(scope="module")
def installed() -> PluginManager:
    return PluginManager(block=["progress"])


def documented_api() -> dict[str, set[str]]:
    """module -> names, from docs/api.md: a `## `module`` heading, then `- `name`` bullets."""
    api: dict[str, set[str]] = {}
    module = None
    for line in (DOCS / "api.md").read_text().splitlines():
        if heading := re.match(r"## `(spurcore[\w.]*)`", line):
            module = heading.group(1)
            api[module] = set()
        elif module and re.match(r"- `(\w+)`(?:, `(\w+)`)*", line):
            api[module] |= set(re.findall(r"`(\w+)`", line.split(":", 1)[0]))
    return api


def spurcore_imports(source: str) -> set[tuple[str, str]]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "spurcore":
            found |= {(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "spurcore"}
    return found


def test_every_documented_name_exists():
    api = documented_api()
    assert len(api) >= 15 and sum(map(len, api.values())) >= 50
    for module, names in api.items():
        imported = importlib.import_module(module)
        missing = sorted(n for n in names if not hasattr(imported, n))
        assert not missing, f"docs/api.md lists {module}.{missing}, which does not exist"


def undocumented(source: str) -> list[str]:
    api = documented_api()
    def known(module: str, name: str) -> bool:  # a documented name, or a documented module (`from spurcore import atomic`)
        return f"{module}.{name}" in api or (module in api and (not name or name in api[module]))

    return sorted(f"{m}.{n}" for m, n in spurcore_imports(source) if not known(m, n))


def test_the_third_party_example_uses_only_the_documented_api():
    files = sorted((ROOT / "examples" / "third_party").rglob("*.py"))
    assert any(f.name == "__init__.py" for f in files) and any(f.name.startswith("test_") for f in files)
    for path in files:
        assert not undocumented(path.read_text()), f"{path.relative_to(ROOT)} imports undocumented {undocumented(path.read_text())}"


@pytest.mark.parametrize("kind", KINDS)
def test_generated_plugins_use_only_the_documented_api(kind, tmp_path):
    root = new_plugin("probe", kind, tmp_path)
    for path in root.rglob("*.py"):
        assert not undocumented(path.read_text()), f"the {kind} template imports undocumented {undocumented(path.read_text())}"


def test_a_name_outside_the_api_is_caught():
    assert undocumented("from spurcore.runner import Runner\nfrom spurcore.data import Batch\n") == ["spurcore.runner.Runner"]


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table after `heading`, keyed by the first cell's `name`."""
    section = text.split(heading, 1)[1]
    rows = {}
    for line in section.splitlines():
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and (name := re.match(r"`([\w-]+)`", cells[0])):
            rows[name.group(1)] = cells
    return rows


def test_metrics_page_defines_every_installed_metric_and_selector(installed):
    text = (DOCS / "metrics.md").read_text()
    for kind, heading in (("metrics", "## Metrics"), ("selectors", "## Selectors")):
        rows = table_rows(text, heading)
        registered = installed.registry(kind)
        assert set(registered) <= set(rows), f"docs/metrics.md does not define {kind} {sorted(set(registered) - set(rows))}"
        for name, entry in registered.items():
            says = rows[name][-1].split()[0]
            assert says == ("yes" if entry.spec.needs_attributes else "no"), (
                f"docs/metrics.md says {kind[:-1]} {name!r} needs attribute labels: {says}; its spec says {entry.spec.needs_attributes}")
            if kind == "selectors":
                splits = tuple(s.strip() for s in rows[name][-2].split(","))
                assert splits == entry.spec.splits, (
                    f"docs/metrics.md says selector {name!r} reads splits {splits}; its spec says {entry.spec.splits}")


def page_and_readmes(page: Path) -> str:
    """A method page with the plugin READMEs it points to (by link or by `plugins/...` path)."""
    text = page.read_text()
    for folder in re.findall(r"(?:plugins|examples/third_party)/spurcore-[\w-]+", text):
        readme = ROOT / folder / "README.md"
        if readme.exists():
            text += readme.read_text()
    return text


def test_every_installed_mitigation_has_a_page_documenting_its_options(installed):
    index = table_rows((DOCS / "methods" / "README.md").read_text(), "| method |")
    mitigations = installed.registry("mitigations")
    assert set(mitigations) <= set(index), f"docs/methods/README.md does not list {sorted(set(mitigations) - set(index))}"
    for name, entry in mitigations.items():
        link = re.search(r"\]\(([\w.-]+\.md)\)", " ".join(index[name]))
        assert link, f"docs/methods/README.md: no page linked for {name!r}"
        text = page_and_readmes(DOCS / "methods" / link.group(1))
        assert f"`{name}`" in text or name in text.lower()
        options = entry.spec.options
        for field in attrs.fields(options) if options is not None else ():
            assert f"`{field.name}`" in text, f"{name!r}: option {field.name!r} is not documented in docs/methods/{link.group(1)}"


def test_quickstart_lists_every_installed_mitigation(installed):
    line = next(l for l in (DOCS / "quickstart.md").read_text().splitlines() if l.startswith("spur list mitigations"))
    assert {n.strip() for n in line.split("#", 1)[1].split(",")} == set(installed.registry("mitigations"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"
