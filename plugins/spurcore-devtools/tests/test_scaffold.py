"""`spur new-plugin`: every kind of generated package installs, passes its own tests (the
launcher's run a sweep with it), and the generated plugins run together in one `spur run` (the
post-hoc mitigation after the training one, the observer watching), whose run `spur trace
--tracer` traces with the generated tracer."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import spurcore_devtools
from spurcore.api import cli
from spurcore_devtools.scaffold import KINDS, registers

BIN = Path(sys.executable).parent


def new_plugin(*args):
    spurcore_devtools.spurcore_register_commands(cli)  # `spur new-plugin` comes from this plugin
    return CliRunner().invoke(cli, ["new-plugin", *map(str, args)], obj={"plugin_args": []})


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_a_complete_package(kind, tmp_path):
    result = new_plugin(f"my-{kind}", "--kind", kind, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    root = tmp_path / f"spurcore-my-{kind}"
    assert f"created {root}" in result.output
    module = f"spurcore_my_{kind.replace('-', '_')}"
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"spurcore-my-{kind}"
    assert project["project"]["entry-points"]["spurcore"] == {f"my-{kind}": module}
    assert project["tool"]["pytest"]["ini_options"]["addopts"] == "-p spurcore.testing"  # the kit, opted into
    code = ast.parse((root / module / "__init__.py").read_text())
    hooks = {n.name for n in ast.walk(code) if isinstance(n, ast.FunctionDef) and n.name.startswith("spurcore_register_")}
    assert hooks == {f"spurcore_register_{registers(kind)}s"}
    tests = (root / "tests" / f"test_{module}.py").read_text()
    ast.parse(tests)
    assert "def test_the_plugin_is_installed" in tests
    assert ("TestConformance = mitigation_conformance(" in tests) == (registers(kind) == "mitigation")
    assert f"spur list {registers(kind)}s" in (root / "README.md").read_text()


def test_bad_names_and_existing_folders_are_refused_before_writing(tmp_path):
    result = new_plugin("My_Method", "--kind", "mitigation", "--out", tmp_path)
    assert result.exit_code == 1
    assert "plugin name 'My_Method': use lowercase letters, digits and single hyphens" in result.output
    assert list(tmp_path.iterdir()) == []
    assert new_plugin("fine", "--kind", "mitigation", "--out", tmp_path).exit_code == 0
    again = new_plugin("fine", "--kind", "dataset", "--out", tmp_path)
    assert again.exit_code == 1 and "spurcore-fine already exists" in again.output
    assert new_plugin("fine", "--kind", "sampler", "--out", tmp_path).exit_code == 2  # click names the choices


PIPELINE = """
selector = "my-selector"
metrics = ["avg_acc", "worst_group_acc", "worst_class_acc", "group_acc", "my-metric"]
device = "cpu"
requires = ["my-dataset", "my-backbone", "my-mitigation", "my-posthoc-mitigation", "my-selector", "my-metric",
            "my-observer"]
[settings.my-observer]
metric = "my-metric"
[dataset]
name = "my-dataset"
[backbone]
name = "my-backbone"
[train]
epochs = 2
[[stages]]
method = "my-mitigation"
[[stages]]
method = "my-posthoc-mitigation"
"""


def test_generated_plugins_install_pass_their_tests_and_run_in_a_pipeline(tmp_path):
    for kind in KINDS:
        assert new_plugin(f"my-{kind}", "--kind", kind, "--out", tmp_path).exit_code == 0
    site = tmp_path / "site"  # a throwaway install target: the venv stays as it was
    packages = sorted(str(p) for p in tmp_path.glob("spurcore-my-*"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--target", str(site), *packages], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("SPURCORE_PLUGINS", None)

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                            *[f"{p}/tests" for p in packages]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout[-3000:]
    passed = [line for line in tests.stdout.splitlines() if line.startswith("PASSED")]
    for kind in KINDS:
        mine = [line for line in passed if f"test_spurcore_my_{kind.replace('-', '_')}.py::" in line]
        assert len(mine) >= 2 and any("test_the_plugin_is_installed" in line for line in mine), tests.stdout[-3000:]
        if registers(kind) == "mitigation":
            assert any("::TestConformance" in line for line in mine), tests.stdout[-3000:]

    listed = subprocess.run([BIN / "spur", "plugins", "--json"], env=env, capture_output=True, text=True, check=True)
    assert {f"my-{kind}" for kind in KINDS} <= {row["name"] for row in json.loads(listed.stdout)}
    (tmp_path / "mine.toml").write_text(PIPELINE)
    run = subprocess.run([BIN / "spur", "run", "mine.toml", "--out", "run", "--quiet"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["selected"]["selector"] == "my-selector"
    assert [(s["method"], s["kind"]) for s in summary["stages"]] == [("my-mitigation", "train"),
                                                                     ("my-posthoc-mitigation", "posthoc")]
    assert 0 <= summary["metrics"]["test"]["my-metric"] <= 1
    curve = json.loads((tmp_path / "run" / "my-observer.json").read_text())  # the training stage's epochs
    assert [(point["stage"], point["epoch"]) for point in curve] == [(0, 1), (0, 2)]
    assert all(0 <= point["my-metric"] <= 1 for point in curve)
    trace = subprocess.run([BIN / "spur", "trace", "run", "--tracer", "my-tracer"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert trace.returncode == 0, trace.stderr[-2000:]
    written = Path("run") / "trace" / "my-tracer" / "spurcore_my_tracer.json"
    assert trace.stdout == f"wrote {written}\n"
    traced = json.loads((tmp_path / written).read_text())
    assert traced["test"] == pytest.approx(summary["metrics"]["test"]["group_acc"])
