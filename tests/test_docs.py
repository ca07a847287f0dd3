"""The documentation is built from, and checked against, the code: the metric and selector
definitions cover every one of this repository's plugins, every mitigation of this repository
has a page documenting each of its options, every relative link and every repository path a
page names resolves, and the examples marked as tested run (the tutorial's mitigations in a
pipeline, the launcher of docs/sweeps.md in a sweep). (The hook reference and the plugin API
page are generated, with their own drift tests in test_hookspecs_docs.py and test_public_api.py.)"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
import sys
import textwrap
import types
import urllib.parse
import urllib.request
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spurcore_sweep
from spurcore import hookimpl
from spurcore.cli import cli
from spurcore.data import Batch
from spurcore.model import build_model, linear_head
from spurcore.plugins import ENTRY_POINT_GROUP, PluginManager, Registered
from spurcore.runner import run_pipeline
from spurcore_devtools.scaffold import KINDS, new_plugin
from spurcore.specs import MitigationSpec
from spurcore.testing import MLPOptions, OnDevice, make_mlp, run_folder_free, tiny_pipeline, wait_for
from spurcore.api import toml_dumps
from spurcore_sweep import start_launcher

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + sorted((DOCS / "methods").glob("*.md")) + [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
# where this repository's plugins live: the built-ins, the first-party and the third-party examples
SOURCES = (ROOT / "spurcore", ROOT / "plugins", ROOT / "examples" / "third_party")


@pytest.fixture(scope="module")
def installed() -> PluginManager:
    return PluginManager(block=["progress"])


def _in_sources(path: Path) -> bool:
    return any(path.resolve().is_relative_to(folder) for folder in SOURCES)


def from_this_repository(manager: PluginManager, plugin_name: str) -> bool:
    """Whether a loaded plugin is one of this repository's (the docs describe those, not whatever
    else is installed): its module file is in the repository's sources, or its distribution was
    installed from them (pip's `direct_url.json`, for a non-editable install)."""
    plugin = manager.pm.get_plugin(plugin_name)
    module = plugin if inspect.ismodule(plugin) else sys.modules.get(type(plugin).__module__)
    if getattr(module, "__file__", None) and _in_sources(Path(module.__file__)):
        return True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=plugin_name):
        url = json.loads((entry_point.dist and entry_point.dist.read_text("direct_url.json")) or "{}").get("url", "")
        if url.startswith("file:") and _in_sources(Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))):
            return True
    return False


def ours(manager: PluginManager, kind: str) -> dict[str, Registered]:
    """The specs of one kind that this repository's plugins register."""
    return {name: entry for name, entry in manager.registry(kind).items() if from_this_repository(manager, entry.plugin)}


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


def check_metrics_page(manager: PluginManager) -> None:
    text = (DOCS / "metrics.md").read_text()
    for kind, heading in (("metrics", "## Metrics"), ("selectors", "## Selectors")):
        rows = table_rows(text, heading)
        registered = ours(manager, kind)
        assert set(registered) <= set(rows), f"docs/metrics.md does not define {kind} {sorted(set(registered) - set(rows))}"
        for name, entry in registered.items():
            says = rows[name][-1].split()[0]
            assert says == ("yes" if entry.spec.needs_attributes else "no"), (
                f"docs/metrics.md says {kind[:-1]} {name!r} needs attribute labels: {says}; its spec says {entry.spec.needs_attributes}")
            if kind == "selectors":
                splits = tuple(s.strip() for s in rows[name][-2].split(","))
                assert splits == entry.spec.splits, (
                    f"docs/metrics.md says selector {name!r} reads splits {splits}; its spec says {entry.spec.splits}")


def test_metrics_page_defines_every_metric_and_selector(installed):
    check_metrics_page(installed)


def page_and_readmes(page: Path) -> str:
    """A method page with the plugin READMEs it points to (by link or by `plugins/...` path)."""
    text = page.read_text()
    for folder in re.findall(r"(?:plugins|examples/third_party)/spurcore-[\w-]+", text):
        readme = ROOT / folder / "README.md"
        if readme.exists():
            text += readme.read_text()
    return text


def check_method_pages(manager: PluginManager) -> None:
    index = table_rows((DOCS / "methods" / "README.md").read_text(), "| method |")
    mitigations = ours(manager, "mitigations")
    assert set(mitigations) <= set(index), f"docs/methods/README.md does not list {sorted(set(mitigations) - set(index))}"
    for name, entry in mitigations.items():
        link = re.search(r"\]\(([\w.-]+\.md)\)", " ".join(index[name]))
        assert link, f"docs/methods/README.md: no page linked for {name!r}"
        text = page_and_readmes(DOCS / "methods" / link.group(1))
        assert f"`{name}`" in text or name in text.lower()
        options = entry.spec.options
        for field in attrs.fields(options) if options is not None else ():
            assert f"`{field.name}`" in text, f"{name!r}: option {field.name!r} is not documented in docs/methods/{link.group(1)}"


def test_every_mitigation_has_a_page_documenting_its_options(installed):
    check_method_pages(installed)


def check_quickstart(manager: PluginManager) -> None:
    line = next(l for l in (DOCS / "quickstart.md").read_text().splitlines() if l.startswith("spur list mitigations"))
    assert {n.strip() for n in line.split("#", 1)[1].split(",")} == set(ours(manager, "mitigations"))


def test_quickstart_lists_every_mitigation(installed):
    check_quickstart(installed)


OUTSIDE = """
from spurcore import hookimpl
from spurcore.specs import MetricSpec, MitigationSpec, SelectorSpec


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(name="{name}", factory=lambda options: object(), description="from elsewhere")]


@hookimpl
def spurcore_register_selectors():
    return [SelectorSpec(name="{name}-selector", score=lambda candidate: 0.0, description="from elsewhere")]


@hookimpl
def spurcore_register_metrics():
    return [MetricSpec(name="{name}-metric", compute=lambda predictions: {{}}, description="from elsewhere")]
"""


def install_fake(site: Path, name: str, direct_url: str | None = None) -> None:
    """A distribution `spurcore-<name>` in `site`, its entry point `<name>` registering a
    mitigation, a selector and a metric; `direct_url` is where pip would say it came from."""
    info = site / f"spurcore_{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: spurcore-{name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[spurcore]\n{name} = fake_{name}\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps({"url": direct_url, "dir_info": {}}))
    (site / f"fake_{name}.py").write_text(textwrap.dedent(OUTSIDE.format(name=name)))


def test_the_docs_checks_ignore_plugins_from_outside_this_repository(tmp_path, monkeypatch):
    install_fake(tmp_path, "outsider")
    install_fake(tmp_path, "copied", direct_url=(ROOT / "plugins" / "spurcore-copied").as_uri())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SPURCORE_PLUGINS", raising=False)
    try:
        manager = PluginManager(block=["progress"])
        assert {"outsider", "copied"} <= set(manager.registry("mitigations")), "the fakes are installed"
        assert not from_this_repository(manager, "outsider")
        assert from_this_repository(manager, "copied")  # installed from plugins/, not editable
        assert {"erm", "dfr", "jtt"} <= set(ours(manager, "mitigations")) and "outsider" not in ours(manager, "mitigations")
        outside = PluginManager(block=["progress", "copied"])
        for check in (check_metrics_page, check_method_pages, check_quickstart):
            check(outside)
    finally:
        for name in ("fake_afr", "fake_copied"):
            sys.modules.pop(name, None)


# a path into this repository named in backticks (`docs/hooks.md`), without placeholders
REPOSITORY_PATH = re.compile(r"`((?:docs|plugins|examples|spurcore|tests|benchmarks)/[^`\s<>*{}$:]*)`")


def broken_references(text: str, folder: Path) -> list[str]:
    """Relative links (outside code blocks) that do not resolve from `folder`, and repository
    paths that do not exist in this repository."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    links = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in t and not t.startswith("mailto:")]
    return ([f"broken link {t}" for t in links if not (folder / t).exists()]
            + [f"no such file in the repository: {t}" for t in REPOSITORY_PATH.findall(text) if not (ROOT / t).exists()])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert not broken_references(page.read_text(), page.parent), f"{page.relative_to(ROOT)}: {broken_references(page.read_text(), page.parent)}"


@pytest.mark.parametrize("kind", KINDS)
def test_generated_files_point_at_pages_that_exist(kind, tmp_path):
    """A generated package lives outside this repository: it names spurcore's pages by their path
    in the repository, and links only its own files."""
    root = new_plugin("probe", kind, tmp_path)
    for path in (p for p in root.rglob("*") if p.is_file()):
        broken = broken_references(path.read_text(), path.parent)
        assert not broken, f"the {kind} template's {path.relative_to(root)}: {broken}"


def test_a_broken_reference_is_caught():
    assert broken_references("see [a](nowhere.md) and `docs/writing-a-mitigation.md`; `runs/<name>`", DOCS) == [
        "broken link nowhere.md", "no such file in the repository: docs/writing-a-mitigation.md"]


# --- the tutorial's examples run -----------------------------------------------------------------


def marked_examples(page: Path) -> list[str]:
    """The python blocks of a page marked `<!-- tested in tests/test_docs.py -->` (whole plugins)."""
    return re.findall(r"<!-- tested in tests/test_docs.py -->\s*```python\n(.*?)```", page.read_text(), flags=re.S)


def call(hook, **available):
    """Call a hook implementation with the arguments it names, as pluggy does."""
    return hook(**{name: available[name] for name in inspect.signature(hook).parameters})


EXAMPLES = marked_examples(DOCS / "writing-plugins.md")


def test_the_tutorial_marks_its_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("source", EXAMPLES, ids=lambda s: re.search(r"^class (\w+)", s, flags=re.M).group(1))
def test_a_tutorial_example_runs_in_a_pipeline_and_is_device_safe(source, spur_plugins, spur_register_plugin, spur_tiny_config,
                                                                 spur_tiny_data, tmp_path):
    example = types.ModuleType("tutorial_example")
    exec(compile(source, "docs/writing-plugins.md", "exec"), example.__dict__)
    spur_register_plugin(example, "tutorial")
    for spec in example.spurcore_register_mitigations():
        stages = ([{"method": "erm", "train": {"epochs": 2}}] if spec.kind == "posthoc" else []) + [{"method": spec.name}]
        summary = run_pipeline(spur_tiny_config(stages=stages), tmp_path / spec.name, spur_plugins, log=lambda message: None)
        assert 0 <= summary["metrics"]["test"]["worst_group_acc"] <= 1
        method = spec.factory(None if spec.options is None else spec.options())
        if hasattr(method, "spurcore_train_loss"):  # every batch tensor on a device numpy cannot read
            run = types.SimpleNamespace(data=spur_tiny_data)
            if hasattr(method, "spurcore_stage_start"):
                call(method.spurcore_stage_start, run=run, stage=None)
            split, index = spur_tiny_data.splits["train"], torch.arange(0, 64, 2)
            batch = Batch(index.as_subclass(OnDevice), split.inputs[index].as_subclass(OnDevice),
                          torch.from_numpy(split.y[index.numpy()]).as_subclass(OnDevice),
                          torch.from_numpy(split.a[index.numpy()]).as_subclass(OnDevice))
            model = build_model(make_mlp(MLPOptions(), spur_tiny_data), spur_tiny_data.n_classes)
            loss = call(method.spurcore_train_loss, run=run, stage=None, model=model, batch=batch)
            assert loss.ndim == 0 and torch.isfinite(loss)


def test_a_device_unsafe_loss_is_caught(spur_tiny_data):
    index = torch.arange(4).as_subclass(OnDevice)
    with pytest.raises(TypeError, match="cuda"):
        spur_tiny_data.groups("train")[index]
    with pytest.raises(RuntimeError, match="same device"):
        torch.zeros(10)[index]
    assert spur_tiny_data.groups("train")[index.cpu()].shape == (4,)


def test_the_posthoc_contract_holds_as_documented(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    """What docs/api.md and the tutorial promise a `spurcore_posthoc_head` implementation."""
    seen = {}

    class Inspects:
        def __init__(self, options):
            pass

        @hookimpl
        def spurcore_posthoc_head(self, run, model, embeddings):
            seen["grad"] = torch.is_grad_enabled()
            seen["splits"] = {name: (e.features.dtype, e.features.shape[1], e.y.dtype, None if e.a is None else e.a.dtype)
                              for name, e in embeddings.splits.items()}
            seen["feature_dim"] = model.feature_dim
            val = embeddings["val"]
            return linear_head(np.zeros((run.data.n_classes, val.features.shape[1])), np.zeros(run.data.n_classes))

    class Registers:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="inspects", kind="posthoc", factory=Inspects, needs_attributes=("val",),
                                   description="records what it receives")]

    spur_register_plugin(Registers(), "inspects")
    config = spur_tiny_config(dataset={"name": "tiny", "options": {"attributes": ["val"]}},
                         stages=[{"method": "erm", "train": {"epochs": 1}}, {"method": "inspects"}], selector="val-worst-class")
    run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda message: None)
    assert seen["grad"] is True
    float32, int64 = np.dtype(np.float32), np.dtype(np.int64)
    assert seen["splits"] == {"train": (float32, 16, int64, None), "val": (float32, 16, int64, int64),
                              "test": (float32, 16, int64, None)}
    assert seen["feature_dim"] == 16


# --- docs/sweeps.md: the launcher example runs ---------------------------------------------------

[LAUNCHER] = marked_examples(DOCS / "sweeps.md")


def test_the_launcher_example_is_what_new_plugin_writes(tmp_path):
    root = new_plugin("command", "launcher", tmp_path)
    assert (root / "spurcore_command" / "__init__.py").read_text() == LAUNCHER


@pytest.fixture
def command(spur_plugins, spur_register_plugin):
    """The page's launcher plugin, registered (as `command`) with the sweep on `spur_plugins`."""
    example = types.ModuleType("launcher_example")
    exec(compile(LAUNCHER, "docs/sweeps.md", "exec"), example.__dict__)
    spur_register_plugin(spurcore_sweep, "sweep")
    spur_register_plugin(example, "command")
    return spur_plugins


def test_the_launcher_example_runs_a_sweep_each_trial_in_a_process_of_its_own(command, tmp_path):
    pipeline, out = tmp_path / "tiny.toml", tmp_path / "sweep"
    pipeline.write_text(toml_dumps(tiny_pipeline(train={"epochs": 2})))
    command.hook.spurcore_register_commands(cli=cli)
    result = CliRunner().invoke(cli, ["sweep", str(pipeline), "--seeds", "0,1", "--jobs", "2", "--out", str(out),
                                      "--launcher", "command", "--launcher-option", 'prefix=["nice", "-n", "10"]'],
                                obj={"manager": command, "plugin_args": ["spurcore.testing.tinyplug"]})
    assert result.exit_code == 0, result.output
    assert "2 of 2 trials finished" in result.output
    trials = json.loads((out / "sweep.json").read_text())["trials"]
    assert [t["record"]["status"] for t in trials] == ["done", "done"]
    logs = sorted((out / ".command").glob("*.log"))
    assert len(logs) == 2 and all(log.read_text().startswith("nice -n 10 ") for log in logs)


def test_closing_the_launcher_example_stops_its_trials(command, tmp_path):
    """What an interrupted sweep does: `close` while a trial trains."""
    pipeline, run = tmp_path / "slow.toml", tmp_path / "sweep" / "trial"
    pipeline.write_text(toml_dumps(tiny_pipeline(dataset={"name": "tiny", "options": {"n_train": 20000}},
                                                 train={"epochs": 1000})))  # a trial of minutes
    launcher = start_launcher(command, "command", out=tmp_path / "sweep")
    process = launcher.submit({"pipeline": str(pipeline), "overrides": [], "out": str(run),
                               "plugin_args": ["spurcore.testing.tinyplug"], "threads": 1})
    try:
        wait_for(lambda: (run / "checkpoints" / "0-erm" / "epoch_001.pt").exists() or process.poll() is not None, 120,
                 "the trial training")
        assert process.poll() is None and not run_folder_free(run)
        launcher.close()
        wait_for(lambda: run_folder_free(run), 30, "the trial gone, its run folder free")
        assert process.returncode != 0 and not (run / "summary.json").exists()
    finally:
        process.kill()
        process.wait()
