"""`spur sweep` and `spur report`: settings x seeds, resume, failures, random draws, methods."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from spurcore.testing import TinyPlugin, tiny_pipeline

from spurcore.cli import cli
from spurcore.config import ConfigError, load_pipeline
from spurcore.plugins import PluginManager
from spurcore.sweep import all_methods, expand, parse_grid


def manager() -> PluginManager:
    """Installed plugins (dfr, ...) plus the tiny dataset and backbone."""
    pm = PluginManager(block=["progress"])
    pm.register(TinyPlugin(), "tiny")
    return pm


def invoke(pm, *args):
    return CliRunner().invoke(cli, list(map(str, args)), obj={"manager": pm, "plugin_args": []})


def pipeline(tmp_path, **overrides):
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(tiny_pipeline(train={"epochs": 2, "batch_size": 50, "lr": 0.01}, **overrides)))
    return path


def summaries(out):
    return sorted(p.relative_to(out).as_posix() for p in out.glob("**/summary.json"))


# --- settings ------------------------------------------------------------------------------------


def test_parse_grid_reads_toml_values_and_keeps_lists_whole():
    grid = parse_grid(["train.lr=0.1,1e-3", 'stages.0.options.placement=["block3"],["block2","block3"]',
                       "x=true"])
    assert grid == {"train.lr": [0.1, 0.001], "stages.0.options.placement": [["block3"], ["block2", "block3"]],
                    "x": [True]}


@pytest.mark.parametrize("bad", ["train.lr", "=1,2", "train.lr="])
def test_parse_grid_refuses_malformed_items(bad):
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        parse_grid([bad])


def test_expand_grid_is_every_combination_and_random_draws_are_distinct():
    space = {"a": [1, 2, 3], "b": ["x", "y"]}
    assert len(expand(space, None, random.Random(0))) == 6
    drawn = expand(space, 4, random.Random(0))
    assert len(drawn) == 4 and len({json.dumps(d, sort_keys=True) for d in drawn}) == 4
    assert all(d["a"] in space["a"] and d["b"] in space["b"] for d in drawn)
    assert expand(space, 4, random.Random(0)) == drawn  # the draw seed fixes the draws
    assert len(expand(space, 50, random.Random(0))) == 6  # never more than there are


# --- a sweep of 2 settings x 3 seeds -----------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    path = pipeline(root)
    out = root / "sweep"
    first = invoke(manager(), "sweep", path, "--grid", "train.lr=0.01,0.1", "--seeds", "0,1,2", "--out", out)
    return path, out, first


def test_sweep_runs_one_directory_per_settings_and_seed(swept):
    _, out, first = swept
    assert first.exit_code == 0, first.output
    assert summaries(out) == [f"erm/train.lr={lr}-{h}/seed{s}/summary.json"
                              for lr, h in (("0.01", "71276fc2"), ("0.1", "171d0d81")) for s in (0, 1, 2)]
    config = load_pipeline(out / "erm" / "train.lr=0.1-171d0d81" / "seed2" / "config.toml")
    assert (config.train.lr, config.seed) == (0.1, 2)
    manifest = json.loads((out / "sweep.json").read_text())
    assert len(manifest["trials"]) == 6 and all(t["record"]["status"] == "done" for t in manifest["trials"])
    assert "6 of 6 trials finished" in first.output


def test_sweep_launched_again_skips_finished_runs(swept):
    path, out, _ = swept
    before = {p: (out / p).stat().st_mtime_ns for p in summaries(out)}
    again = invoke(manager(), "sweep", path, "--grid", "train.lr=0.01,0.1", "--seeds", "0,1,2", "--out", out)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier") == 6
    assert {p: (out / p).stat().st_mtime_ns for p in summaries(out)} == before


def test_report_chooses_settings_per_selector_from_validation(swept):
    _, out, _ = swept
    result = invoke(manager(), "report", out, "--selector", "val-wga", "--selector", "val-worst-class",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output.split("figure:")[0])["rows"]
    assert [(r["method"], r["selector"], r["selector_reads_attributes"]) for r in rows] == [
        ("erm", "val-wga", True), ("erm", "val-worst-class", False)]
    runs = {}
    for seed_dir in out.glob("erm/*/seed*"):
        summary = json.loads((seed_dir / "summary.json").read_text())
        runs.setdefault(seed_dir.parent.name, []).append(summary["metrics"])
    for row, key in zip(rows, ("worst_group_acc", "worst_class_acc")):
        best = max(runs, key=lambda s: sum(m["val"][key] for m in runs[s]) / 3)
        chosen = next(s for s in runs if s.startswith(f"train.lr={row['settings']['train.lr']}-"))
        assert chosen == best
        wga = sorted(m["test"]["worst_group_acc"] for m in runs[chosen])
        assert sorted(row["test_wga"]) == pytest.approx(wga)
        mean = 100 * sum(wga) / 3
        std = (sum((100 * w - mean) ** 2 for w in wga) / 3) ** 0.5
        assert row["test_wga_mean_std"] == pytest.approx([mean, std])
        assert row["seeds"] == [0, 1, 2]
        assert row["labels"] == ["epoch by val-wga: val"]  # the tiny pipeline chooses epochs by val-wga
    assert (out / "wga.png").stat().st_size > 5000
    assert (out / "report.md").read_text().startswith("| method | selector | test WGA %")


def test_report_csv_has_a_row_per_method_and_selector(swept):
    _, out, _ = swept
    result = invoke(manager(), "report", out, "--selector", "val-avg", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.output.split("figure:")[0])))
    assert [(r["method"], r["selector"], r["seeds"]) for r in rows] == [("erm", "val-avg", "0 1 2")]
    assert 0 <= float(rows[0]["test_wga_mean"]) <= 100


def test_report_of_a_directory_without_a_sweep(tmp_path):
    result = invoke(manager(), "report", tmp_path)
    assert result.exit_code == 2
    assert f"{tmp_path}: no sweep.json" in result.output


# --- failures, methods, random draws -------------------------------------------------------


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = pipeline(tmp_path)
    out = tmp_path / "sweep"
    # n_train=-1 passes the config, then fails when the dataset is built
    result = invoke(manager(), "sweep", path, "--grid", "dataset.options.n_train=-1,100", "--seeds", "0",
                    "--methods", "dfr-class", "--out", out)
    assert result.exit_code == 1
    trials = {t["path"]: t["record"] for t in json.loads((out / "sweep.json").read_text())["trials"]}
    failed = [p for p, r in trials.items() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0].startswith("erm/dataset.n_train=-1-")
    assert "ValueError" in trials[failed[0]]["error"] and "Traceback" in trials[failed[0]]["traceback"]
    assert [p for p, r in trials.items() if r["status"].startswith("not run")] == [
        "dfr-class/" + failed[0].split("/", 1)[1]]
    assert sorted(p for p, r in trials.items() if r["status"] == "done") == sorted(
        p for p in trials if "n_train=100" in p)
    report = invoke(manager(), "report", out, "--selector", "val-wga")
    assert report.exit_code == 0, report.output
    assert "2 trial(s) without a finished run" in report.output and "ValueError" in report.output


def test_methods_start_from_the_baseline_run_of_the_same_seed(tmp_path):
    path = pipeline(tmp_path)
    out = tmp_path / "sweep"
    result = invoke(manager(), "sweep", path, "--seeds", "3", "--methods", "dfr,neurontune", "--random", "2",
                    "--out", out)
    assert result.exit_code == 0, result.output
    dfr_runs = sorted(out.glob("dfr/*/seed3"))
    assert len(dfr_runs) == 2  # the two values of dfr's declared search space
    drawn = set()
    for run in dfr_runs:
        config = load_pipeline(run / "config.toml")
        assert config.init.run == str((out / "erm" / "default" / "seed3").resolve())
        assert config.seed == 3 and [s.method for s in config.stages] == ["dfr"]
        drawn.add(config.stages[0].options["retrains"])
    assert drawn == {10, 20}
    assert len(list(out.glob("neurontune/*/seed3/summary.json"))) == 2
    rows = json.loads(invoke(manager(), "report", out, "--selector", "val-worst-class", "--format", "json")
                      .output.split("figure:")[0])["rows"]
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"erm", "dfr", "neurontune"}
    assert by_method["dfr"]["labels"] == ["epoch by val-wga: val", "dfr: val"]
    assert set(by_method["dfr"]["settings"]) == {"dfr.options.retrains"}


def test_sweep_refuses_an_unknown_method_before_running(tmp_path):
    result = invoke(manager(), "sweep", pipeline(tmp_path), "--methods", "nope", "--out", tmp_path / "s")
    assert result.exit_code != 0 and "nope" in result.output
    assert not (tmp_path / "s").exists()


TESTS = Path(__file__).parent  # holds tinyplug.py, the tiny plugin as a module


def test_ray_launcher_runs_trials_as_ray_tasks(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # Ray's workers import the test plugin from here
    pm = manager()
    out = tmp_path / "sweep"
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        result = CliRunner().invoke(cli, ["sweep", str(pipeline(tmp_path)), "--seeds", "0", "--methods", "dfr-class",
                                          "--launcher", "ray", "--out", str(out)],
                                    obj={"manager": pm, "plugin_args": ["tinyplug"]})
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert summaries(out) == ["dfr-class/default/seed0/summary.json", "erm/default/seed0/summary.json"]


def test_sweep_refuses_a_bad_method_option_before_running(tmp_path):
    result = invoke(manager(), "sweep", pipeline(tmp_path), "--methods", "dfr", "--grid", "dfr.options.retrains=0,5",
                    "--out", tmp_path / "s")
    assert result.exit_code == 2, result.output
    assert "stages[0].options.retrains: must be positive, got 0" in result.output
    assert not (tmp_path / "s").exists()


def test_an_interrupted_run_continues_from_its_last_checkpoint(tmp_path):
    path = pipeline(tmp_path)
    out = tmp_path / "sweep"
    assert invoke(manager(), "sweep", path, "--seeds", "4", "--out", out).exit_code == 0
    run = out / "erm" / "default" / "seed4"
    finished = json.loads((run / "summary.json").read_text())
    # as if killed during epoch 2: no summary, no stage result, no epoch-2 checkpoint
    for name in ("summary.json", "checkpoints/0-erm/result.json", "checkpoints/0-erm/epoch_002.pt"):
        (run / name).unlink()
    epoch1 = (run / "checkpoints/0-erm/epoch_001.pt").stat().st_mtime_ns
    again = invoke(manager(), "sweep", path, "--seeds", "4", "--out", out)
    assert again.exit_code == 0 and "erm/default/seed4: done" in again.output
    assert (run / "checkpoints/0-erm/epoch_001.pt").stat().st_mtime_ns == epoch1  # not retrained
    assert json.loads((run / "summary.json").read_text())["metrics"] == finished["metrics"]


def test_all_methods_are_the_installed_ones_that_plan_here(tmp_path):
    pm = manager()
    grid = {"dfr.options.retrains": [0], "dfr-class.options.retrains": [3], "train.lr": [0.1]}
    kept, kept_grid, left_out = all_methods(pipeline(tmp_path), pm, grid)
    installed = sorted(set(pm.registry("mitigations")) - {"erm"})
    assert kept == [m for m in installed if m != "dfr"] and "dfr-class" in kept
    assert list(left_out) == ["dfr"] and "retrains: must be positive, got 0" in left_out["dfr"]
    assert kept_grid == {"dfr-class.options.retrains": [3], "train.lr": [0.1]}
