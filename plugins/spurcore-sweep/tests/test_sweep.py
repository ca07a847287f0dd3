"""`spur sweep` and `spur report`: settings x seeds, resume, failures, random draws, methods, chains,
rows by a setting, a killed sweep, the same sweep twice."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch.nn.functional as F
from click.testing import CliRunner
from spurcore.testing import TinyPlugin, TinyRefit, kit_manager, run_folder_free, tiny_pipeline, wait_for

from spurcore.api import (ConfigError, MitigationSpec, PluginManager, SelectorSpec, cli, hookimpl, load_pipeline,
                          runlock, toml_dumps)
import spurcore_sweep
from spurcore_sweep import LauncherSpec
from spurcore_sweep.launchers import Inline, execute
from spurcore_sweep.protocol import LaunchContext, LauncherError
from spurcore_sweep.trials import Sweep, Trial, all_methods, expand, parse_grid, plan_sweep


def manager() -> PluginManager:
    """Installed plugins (dfr, ...) plus the tiny dataset and backbone."""
    pm = PluginManager(block=["progress"])
    pm.register(TinyPlugin(), "tiny")
    return pm


def invoke(pm, *args, plugin_args=()):
    """`spur ARGS` with the plugins `pm`; trials in other processes load `plugin_args` (`-p`)."""
    if pm.pm.get_plugin("sweep") is None:  # managers without entry points (the kit's) get this plugin too
        pm.register(spurcore_sweep, "sweep")
    pm.hook.spurcore_register_commands(cli=cli)  # `spur sweep` and `spur report` come from this plugin
    return CliRunner().invoke(cli, list(map(str, args)), obj={"manager": pm, "plugin_args": list(plugin_args)})


def pipeline(tmp_path, **overrides):
    path = tmp_path / "tiny.toml"
    path.write_text(toml_dumps(tiny_pipeline(train={"epochs": 2, "batch_size": 50, "lr": 0.01}, **overrides)))
    return path


def summaries(out):
    return sorted(p.relative_to(out).as_posix() for p in out.glob("**/summary.json"))


# --- settings ------------------------------------------------------------------------------------


def test_parse_grid_reads_toml_values_and_keeps_lists_whole():
    grid = parse_grid(["train.lr=0.1,1e-3", 'stages.0.options.placement=["block3"],["block2","block3"]',
                       "x=true"])
    assert grid == {"train.lr": [0.1, 0.001], "stages.0.options.placement": [["block3"], ["block2", "block3"]],
                    "x": [True]}


def test_grid_values_are_toml_values_inline_tables_included(tmp_path):
    """Issue 25, item 13: `--grid 'settings.mlflow={}'` raised IndexError and
    `--grid 'backbone.options={hidden=8}'` became the override `backbone.options=8` (the value
    was written through a TOML document's text); each trial now runs exactly the grid's value."""
    pm = manager()
    grid = parse_grid(["backbone.options={hidden=8},{}", "dataset.options={ n_train = 60, attributes = true }"])
    assert grid == {"backbone.options": [{"hidden": 8}, {}], "dataset.options": [{"n_train": 60, "attributes": True}]}
    sweep = plan_sweep(pipeline(tmp_path), tmp_path / "s", pm, grid=grid, seeds=[0])
    assert [t.overrides[:2] for t in sweep.trials] == [
        ("backbone.options={ hidden = 8 }", "dataset.options={ n_train = 60, attributes = true }"),
        ("backbone.options={}", "dataset.options={ n_train = 60, attributes = true }")]
    for trial in sweep.trials:
        config = load_pipeline(pipeline(tmp_path), list(trial.overrides))
        assert config.backbone.options == trial.settings["backbone.options"]
        assert config.dataset.options == {"n_train": 60, "attributes": True}
    empty = plan_sweep(pipeline(tmp_path), tmp_path / "t", pm, grid=parse_grid(["settings={}"]), seeds=[0])
    assert empty.trials[0].overrides == ("settings={}", "seed=0")


@pytest.mark.parametrize("bad", ["train.lr", "=1,2", "train.lr="])
def test_parse_grid_refuses_malformed_items(bad):
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        parse_grid([bad])


def test_expand_grid_is_every_combination_and_random_draws_are_distinct():
    space = {"a": [1, 2, 3], "b": ["x", "y"]}
    assert len(expand(space, {"c": [0, 1]}, None, random.Random(0))) == 6  # no draws: the grid alone
    drawn = expand({}, space, 4, random.Random(0))
    assert len(drawn) == 4 and len({json.dumps(d, sort_keys=True) for d in drawn}) == 4
    assert all(d["a"] in space["a"] and d["b"] in space["b"] for d in drawn)
    assert expand({}, space, 4, random.Random(0)) == drawn  # the draw seed fixes the draws
    assert len(expand({}, space, 50, random.Random(0))) == 6  # never more than there are


def test_expand_crosses_every_grid_value_with_the_same_draws_of_the_other_keys():
    settings = expand({"b": ["y", "z"]}, {"a": [1, 2, 3, 4], "b": ["x"], "c": [5, 6]}, 3, random.Random(0))
    assert len(settings) == 6
    by_b = {b: [{k: v for k, v in s.items() if k != "b"} for s in settings if s["b"] == b] for b in ("y", "z")}
    assert by_b["y"] == by_b["z"] and len({json.dumps(d, sort_keys=True) for d in by_b["y"]}) == 3
    assert all(set(d) == {"a", "c"} for d in by_b["y"])  # "b" is the grid's, never drawn ("x" never appears)


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
    # each trial's folder says what it is, for trackers that do not import the sweep
    origin = json.loads((out / "erm" / "train.lr=0.1-171d0d81" / "seed2" / "origin.json").read_text())
    assert origin == {"launched_by": "spurcore-sweep", "sweep": str(out.resolve()),
                      "trial": "erm/train.lr=0.1-171d0d81/seed2", "method": "erm", "settings": {"train.lr": 0.1},
                      "seed": 2}


def test_sweep_launched_again_skips_finished_runs_and_keeps_their_numbers(swept):
    path, out, _ = swept
    before = {p: (out / p).stat().st_mtime_ns for p in summaries(out)}
    again = invoke(manager(), "sweep", path, "--grid", "train.lr=0.01,0.1", "--seeds", "0,1,2", "--out", out)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier") == 6
    assert {p: (out / p).stat().st_mtime_ns for p in summaries(out)} == before
    for path, trial in trials_of(out).items():  # sweep.json still has each skipped trial's test numbers
        test = json.loads((out / path / "summary.json").read_text())["metrics"]["test"]
        assert trial["record"] == {"status": "done", "skipped": True, "test_wga": test["worst_group_acc"],
                                   "test_avg": test["avg_acc"]}


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
    # quantifier "any" with threshold 0 zeroes every dimension of the tiny model: fix "all", draw the rest
    result = invoke(manager(), "sweep", path, "--seeds", "3", "--methods", "dfr,neurontune", "--random", "2",
                    "--grid", 'neurontune.options.quantifier="all"', "--out", out)
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


def test_ray_launcher_runs_trials_as_ray_tasks(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    pm = manager()
    out = tmp_path / "sweep"
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        result = invoke(pm, "sweep", pipeline(tmp_path), "--seeds", "0", "--methods", "dfr-class", "--launcher", "ray",
                        "--out", out, plugin_args=["spurcore.testing.tinyplug"])
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert summaries(out) == ["dfr-class/default/seed0/summary.json", "erm/default/seed0/summary.json"]


# --- launchers: what a factory receives, the protocol, options, an interrupted sweep --------------


class Recorded(Inline):
    """A launcher from outside the sweep plugin: trials in this process, and every context its
    factory was given kept on the class."""

    contexts: list[LaunchContext] = []

    def __init__(self, context):
        super().__init__(context.plugins)
        self.contexts.append(context)


def with_launcher(pm, name, factory):
    class Registers:
        @hookimpl
        def spurcore_register_launchers(self):
            return [LauncherSpec(name=name, factory=factory)]

    pm.register(Registers(), f"launcher-{name}")
    return pm


def test_a_launcher_factory_gets_the_command_line_and_the_sweeps_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(Recorded, "contexts", [])
    monkeypatch.chdir(tmp_path)
    result = invoke(with_launcher(manager(), "recorded", Recorded), "sweep", pipeline(tmp_path), "--out", "sweep",
                    "--launcher", "recorded", "--jobs", "3", "--threads", "2", "--address", "head:6379",
                    "--launcher-option", "partition=gpu", "--launcher-option", "gpus=2",
                    "--launcher-option", 'setup=["module load cuda", "source env"]')
    assert result.exit_code == 0, result.output
    [context] = Recorded.contexts
    assert (context.name, context.jobs, context.threads, context.address) == ("recorded", 3, 2, "head:6379")
    assert context.options == {"partition": "gpu", "gpus": 2, "setup": ["module load cuda", "source env"]}
    assert context.out == tmp_path / "sweep" and context.out.is_absolute()
    assert context.plugins is not None and summaries(tmp_path / "sweep") == ["erm/default/seed0/summary.json"]


@pytest.mark.parametrize(("options", "message"), [
    (["x=1"], "--launcher local takes no --launcher-option (given: x)"),
    (["partition"], "--launcher-option 'partition': expected KEY=VALUE, e.g. partition=gpu"),
    (["9lives=1"], "--launcher-option '9lives=1': expected KEY=VALUE"),
    (["gpus=1", "gpus=2"], "--launcher-option gpus: given twice"),
])
def test_a_bad_launcher_option_stops_the_sweep_before_it_writes(tmp_path, options, message):
    args = [arg for option in options for arg in ("--launcher-option", option)]
    result = invoke(manager(), "sweep", pipeline(tmp_path), "--out", tmp_path / "sweep", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "sweep").exists()


class CapacityMethod(Recorded):
    """A launcher written from the old docs: `capacity()` a method."""

    def capacity(self):
        return 1


class NoWait:
    capacity = 2

    def __init__(self, context):
        pass

    def submit(self, spec):
        return spec["out"]

    def close(self):
        pass


@pytest.mark.parametrize(("factory", "message"), [
    (CapacityMethod, "launcher 'mine' (CapacityMethod): capacity must be an integer attribute >= 1 (trials submitted "
                     "at a time), got <bound method CapacityMethod.capacity"),
    (NoWait, "launcher 'mine' (NoWait) has no wait method"),
])
def test_a_launcher_that_breaks_the_protocol_is_refused_before_any_trial(tmp_path, factory, message):
    result = invoke(with_launcher(manager(), "mine", factory), "sweep", pipeline(tmp_path), "--launcher", "mine",
                    "--out", tmp_path / "sweep")
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "sweep").exists()


class Stray:
    """Submits nothing anywhere, and answers `wait` with a handle it was never given."""

    capacity = 2

    def __init__(self):
        self.closed = False

    def submit(self, spec):
        return spec["out"]

    def wait(self, pending):
        return [("elsewhere", {"status": "done"})]

    def close(self):
        self.closed = True


class Terminated(Stray):
    """Its `wait` is interrupted as `kill PID` interrupts a sweep."""

    def wait(self, pending):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the sweep")


def two_trials(tmp_path):
    trials = tuple(Trial(method="erm", settings={}, seed=seed, path=f"erm/default/seed{seed}", overrides=())
                   for seed in (0, 1))
    return Sweep(pipeline=pipeline(tmp_path), out=tmp_path / "sweep", trials=trials)


def test_sigterm_interrupts_the_sweep_which_closes_its_launcher(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    launcher = Terminated()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        execute(two_trials(tmp_path), launcher, lambda trial, record: None)
    assert launcher.closed
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_handle_wait_was_not_given_stops_the_sweep_naming_it(tmp_path):
    launcher = Stray()
    with pytest.raises(LauncherError, match="Stray.wait returned 'elsewhere', which is not one of the pending"):
        execute(two_trials(tmp_path), launcher, lambda trial, record: None)
    assert launcher.closed


@pytest.mark.parametrize(("grid", "trial", "error"), [
    ("train.lr=0.01,-1", r"erm/train\.lr=-1-[0-9a-f]{8}/seed1 \(method erm, settings train\.lr=-1, seed 1\)",
     "train.lr: must be positive, got -1.0"),
    ("dfr.options.retrains=5,0",
     r"dfr/dfr\.retrains=0-[0-9a-f]{8}/seed1 \(method dfr, settings dfr\.options\.retrains=0, seed 1\)",
     "stages[0].options.retrains: must be positive, got 0"),
])
def test_a_bad_grid_value_names_its_trial_before_anything_runs(tmp_path, grid, trial, error):
    result = invoke(manager(), "sweep", pipeline(tmp_path), "--methods", "dfr", "--grid", grid, "--seeds", "1",
                    "--out", tmp_path / "s")
    assert result.exit_code == 2, result.output
    assert re.search(f"Error: trial {trial}: .*tiny.toml: {re.escape(error)}", result.output), result.output
    assert not (tmp_path / "s").exists()


def interrupt(run):
    """Leave an ERM run as if killed during epoch 2 (no summary, no stage result, no epoch-2
    checkpoint); returns the time stamp of its epoch-1 checkpoint."""
    for name in ("summary.json", "checkpoints/0-erm/result.json", "checkpoints/0-erm/epoch_002.pt"):
        (run / name).unlink()
    return (run / "checkpoints/0-erm/epoch_001.pt").stat().st_mtime_ns


def test_an_interrupted_run_continues_from_its_last_checkpoint(tmp_path):
    path = pipeline(tmp_path)
    out = tmp_path / "sweep"
    assert invoke(manager(), "sweep", path, "--seeds", "4", "--out", out).exit_code == 0
    run = out / "erm" / "default" / "seed4"
    finished = json.loads((run / "summary.json").read_text())
    epoch1 = interrupt(run)
    again = invoke(manager(), "sweep", path, "--seeds", "4", "--out", out)
    assert again.exit_code == 0 and "erm/default/seed4: done" in again.output
    assert (run / "checkpoints/0-erm/epoch_001.pt").stat().st_mtime_ns == epoch1  # not retrained
    assert json.loads((run / "summary.json").read_text())["metrics"] == finished["metrics"]


def test_a_relaunch_reports_a_trial_whose_folder_is_in_use_and_trains_nothing_there(tmp_path):
    path = pipeline(tmp_path)
    out = tmp_path / "sweep"
    assert invoke(manager(), "sweep", path, "--seeds", "0,1", "--out", out).exit_code == 0
    run = (out / "erm" / "default" / "seed0").resolve()
    epoch1 = interrupt(run)
    with runlock.locked(run):  # as a worker of the killed launch, still training there, would hold it
        again = invoke(manager(), "sweep", path, "--seeds", "0,1", "--methods", "dfr-class", "--out", out)
    assert again.exit_code == 1, again.output
    records = {p: t["record"] for p, t in trials_of(out).items()}
    assert records["erm/default/seed0"]["status"] == "failed"
    assert records["erm/default/seed0"]["error"].startswith(
        f"RunLockedError: {run} is in use by pid {os.getpid()} on host ")
    assert f"erm/default/seed0: failed: RunLockedError: {run} is in use" in again.output
    assert records["dfr-class/default/seed0"] == {"status": "not run: erm/default/seed0 failed"}
    assert records["erm/default/seed1"]["skipped"] and records["dfr-class/default/seed1"]["status"] == "done"
    assert (run / "checkpoints/0-erm/epoch_001.pt").stat().st_mtime_ns == epoch1  # nothing trained there
    assert not (run / "checkpoints/0-erm/epoch_002.pt").exists() and not (run / "summary.json").exists()
    free = invoke(manager(), "sweep", path, "--seeds", "0,1", "--methods", "dfr-class", "--out", out)
    assert free.exit_code == 0, free.output  # the holder gone, the next launch continues the run
    assert (run / "summary.json").exists() and (out / "dfr-class/default/seed0/summary.json").exists()


def test_all_methods_are_the_installed_ones_that_plan_here(tmp_path):
    pm = manager()
    grid = {"dfr.options.retrains": [0], "dfr-class.options.retrains": [3], "train.lr": [0.1],
            "dfr-class+dfr.stages.1.options.retrains": [5]}
    kept, kept_grid, left_out = all_methods(pipeline(tmp_path), pm, grid, others=["dfr-class+dfr"])
    installed = sorted(set(pm.registry("mitigations")) - {"erm"})
    assert kept == [m for m in installed if m != "dfr"] and "dfr-class" in kept
    assert list(left_out) == ["dfr"] and "retrains: must be positive, got 0" in left_out["dfr"]
    assert kept_grid == {"dfr-class.options.retrains": [3], "train.lr": [0.1],
                         "dfr-class+dfr.stages.1.options.retrains": [5]}  # the chain's key stays the chain's


# --- chains, grids crossed with draws, rows by a setting ---------------------------------------


@attrs.frozen(kw_only=True)
class SmoothOptions:
    smoothing: float = 0.0
    width: int = 1  # read by nothing: a second key to draw


class Smooth:
    """A training method: cross-entropy with label smoothing (so its settings change its numbers)."""

    def __init__(self, options: SmoothOptions) -> None:
        self.options = options

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        return F.cross_entropy(model(batch.x, index=batch.index), batch.y, label_smoothing=self.options.smoothing)


@attrs.frozen(kw_only=True)
class HeadOptions:
    alpha: float = 1.0


class ChainMethods:
    """`tiny-train` (trains from scratch) and `tiny-head` (post hoc, reads val attributes),
    each with a search space."""

    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="tiny-train", factory=Smooth, kind="train", options=SmoothOptions,
                               search_space={"smoothing": [0.0, 0.1, 0.2], "width": [1, 2, 3]}),
                MitigationSpec(name="tiny-head", factory=TinyRefit, kind="posthoc", options=HeadOptions,
                               needs_attributes=("val",), search_space={"alpha": [0.5, 2.0]})]


class StageCounter:
    """Which stages ran in which run directory, in order."""

    def __init__(self) -> None:
        self.ran: dict[str, list[str]] = {}

    @hookimpl
    def spurcore_stage_start(self, run, stage):
        self.ran.setdefault(str(run.out.path), []).append(stage.spec.name)


def trials_of(out):
    return {t["path"]: t for t in json.loads((out / "sweep.json").read_text())["trials"]}


CHAIN = "tiny-train+tiny-head"


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    """`--methods all,tiny-train+tiny-head`: erm, tiny-head, tiny-refit, tiny-train (2 x 2
    settings) and the chain, over seeds 0 and 1."""
    root = tmp_path_factory.mktemp("chained")
    counter = StageCounter()
    pm = kit_manager([(ChainMethods(), "chain-methods"), (counter, "counter")])
    out = root / "sweep"
    args = ["sweep", pipeline(root), "--methods", f"all,{CHAIN}", "--seeds", "0,1", "--out", out,
            "--grid", "tiny-train.options.smoothing=0.0,0.3", "--grid", "tiny-train.train.epochs=1,2",
            "--grid", f"{CHAIN}.stages.1.options.alpha=2.0"]
    result = invoke(pm, *args)
    return pm, counter, out, result, args


def test_a_chain_starts_from_its_prefix_trial_and_trains_it_once(chained):
    pm, counter, out, result, args = chained
    assert result.exit_code == 0, result.output
    trials = trials_of(out)
    assert sorted({t["method"] for t in trials.values()}) == ["erm", "tiny-head", "tiny-refit", "tiny-train", CHAIN]
    # every tiny-train model is trained once, in its own trial: 4 settings x 2 seeds
    trained = [path for path, stages in counter.ran.items() if "tiny-train" in stages]
    assert len(trained) == 8 and all(Path(p).relative_to(out).parts[0] == "tiny-train" for p in trained)
    chain = {p: t for p, t in trials.items() if t["method"] == CHAIN}
    assert len(chain) == 8 and {t["after"] for t in chain.values()} == {
        p for p, t in trials.items() if t["method"] == "tiny-train"}
    for path, trial in chain.items():
        prefix = trials[trial["after"]]
        assert trial["seed"] == prefix["seed"]
        assert trial["settings"] == {**prefix["settings"], f"{CHAIN}.stages.1.options.alpha": 2.0}
        config = load_pipeline(out / path / "config.toml")
        assert config.init.run == str((out / prefix["path"]).resolve()) and config.seed == prefix["seed"]
        assert [(s.method, s.options) for s in config.stages] == [("tiny-head", {"alpha": 2.0})]
        assert counter.ran[str((out / path).resolve())] == ["tiny-head"]
    again = invoke(pm, *args)  # launched again: nothing runs
    assert again.exit_code == 0 and again.output.count("finished earlier") == len(trials) == 2 + 2 + 2 + 8 + 8


def test_report_rows_by_a_setting_choose_per_value_and_read_labels_along_the_chain(chained):
    pm, _, out, _, _ = chained
    key = "tiny-train.options.smoothing"
    result = invoke(pm, "report", out, "--selector", "val-wga", "--rows-by", key, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {r["label"]: r for r in json.loads(result.output.split("figure:")[0])["rows"]}
    assert sorted(rows) == ["erm", "tiny-head", "tiny-refit", "tiny-train (smoothing=0.0)", "tiny-train (smoothing=0.3)",
                            f"{CHAIN} (tiny-train.smoothing=0.0)", f"{CHAIN} (tiny-train.smoothing=0.3)"]
    runs: dict[tuple, dict] = {}
    for trial in trials_of(out).values():
        summary = json.loads((out / trial["path"] / "summary.json").read_text())["metrics"]
        settings = json.dumps(trial["settings"], sort_keys=True)
        runs.setdefault((trial["method"], trial["settings"].get(key)), {}).setdefault(settings, []).append(summary)
    for row in rows.values():
        assert row["by"] == ({key: row["settings"][key]} if key in row["settings"] else {})
        group = runs[(row["method"], row["settings"].get(key))]
        assert len(group) == (2 if row["by"] else 1)  # tiny-train.train.epochs=1,2 within each value
        best = max(group, key=lambda s: sum(m["val"]["worst_group_acc"] for m in group[s]))
        assert json.loads(best) == row["settings"]
        wga = [100 * m["test"]["worst_group_acc"] for m in group[best]]
        mean = sum(wga) / 2
        assert row["test_wga_mean_std"] == pytest.approx([mean, (sum((w - mean) ** 2 for w in wga) / 2) ** 0.5])
    # the chain ran tiny-head alone; the epoch selection it relies on is its prefix run's
    assert rows[f"{CHAIN} (tiny-train.smoothing=0.3)"]["labels"] == ["epoch by val-wga: val", "tiny-head: val"]
    assert rows["tiny-train (smoothing=0.0)"]["test_wga"] != rows["tiny-train (smoothing=0.3)"]["test_wga"]
    md = (out / "report.md").read_text()
    assert "| tiny-train (smoothing=0.3) | val-wga (reads attributes) |" in md
    table = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert [r["label"] for r in table] == list(rows) and {r["method"] for r in table} == {
        "erm", "tiny-head", "tiny-refit", "tiny-train", CHAIN}
    assert (out / "wga.png").stat().st_size > 5000


def test_report_refuses_rows_by_a_setting_no_run_has(chained):
    pm, _, out, _, _ = chained
    result = invoke(pm, "report", out, "--selector", "val-wga", "--rows-by", "tiny-train.options.smoothin")
    assert result.exit_code == 1
    assert "--rows-by tiny-train.options.smoothin: no finished run has this setting" in result.output
    assert "tiny-train.options.smoothing" in result.output  # the settings there are


def test_a_chain_without_its_prefix_in_the_sweep_runs_every_stage(spur_plugins, spur_register_plugin, tmp_path):
    spur_register_plugin(ChainMethods())
    counter = spur_register_plugin(StageCounter())
    out = tmp_path / "sweep"
    result = invoke(spur_plugins, "sweep", pipeline(tmp_path), "--methods", f"{CHAIN},tiny-head+tiny-refit",
                    "--random", "2", "--out", out)
    assert result.exit_code == 0, result.output
    trials = trials_of(out)
    chain = [t for t in trials.values() if t["method"] == CHAIN]
    assert len(chain) == 2 and all(t["after"] is None for t in chain)  # trains from scratch
    for trial in chain:
        assert set(trial["settings"]) == {f"{CHAIN}.stages.0.options.smoothing", f"{CHAIN}.stages.0.options.width",
                                          f"{CHAIN}.stages.1.options.alpha"}  # drawn from both stages' spaces
        config = load_pipeline(out / trial["path"] / "config.toml")
        assert config.init is None
        assert [s.method for s in config.stages] == ["tiny-train", "tiny-head"]
        assert config.stages[0].options == {"smoothing": trial["settings"][f"{CHAIN}.stages.0.options.smoothing"],
                                            "width": trial["settings"][f"{CHAIN}.stages.0.options.width"]}
        assert config.stages[1].options == {"alpha": trial["settings"][f"{CHAIN}.stages.1.options.alpha"]}
        assert counter.ran[str((out / trial["path"]).resolve())] == ["tiny-train", "tiny-head"]
    posthoc_first = [t for t in trials.values() if t["method"] == "tiny-head+tiny-refit"]
    assert len(posthoc_first) == 2 and {t["after"] for t in posthoc_first} == {"erm/default/seed0"}
    for trial in posthoc_first:  # a post-hoc first stage starts from the baseline, as a single method would
        config = load_pipeline(out / trial["path"] / "config.toml")
        assert config.init.run == str((out / "erm/default/seed0").resolve())
        assert [s.method for s in config.stages] == ["tiny-head", "tiny-refit"]
        assert counter.ran[str((out / trial["path"]).resolve())] == ["tiny-head", "tiny-refit"]


def test_a_chain_starts_from_its_longest_prefix_in_the_sweep(spur_plugins, spur_register_plugin, tmp_path):
    spur_register_plugin(ChainMethods())
    three = f"{CHAIN}+tiny-refit"
    sweep = plan_sweep(pipeline(tmp_path), tmp_path / "s", spur_plugins, grid={}, seeds=[0],
                       methods=[three, "erm+tiny-head", CHAIN, "tiny-train"])
    by_method = {t.method: t for t in sweep.trials}
    assert list(by_method) == ["erm", "tiny-train", "erm+tiny-head", CHAIN, three]  # prefixes first
    assert by_method[three].after == by_method[CHAIN].path
    assert by_method[CHAIN].after == by_method["tiny-train"].path
    assert by_method["erm+tiny-head"].after == "erm/default/seed0"  # the pipeline is a prefix too
    for method, runs in ((three, ["tiny-refit"]), ("erm+tiny-head", ["tiny-head"])):
        config = load_pipeline(pipeline(tmp_path), by_method[method].overrides)
        assert [s.method for s in config.stages] == runs
        assert config.init.run == str((tmp_path / "s" / by_method[method].after).resolve())


def test_random_draws_are_crossed_with_every_grid_value(tmp_path):
    pm = manager()
    grid = {"prunedtwin.options.criterion": ["magnitude", "gradient"]}
    sweep = plan_sweep(pipeline(tmp_path), tmp_path / "s", pm, grid=grid, seeds=[0, 1], methods=["prunedtwin"],
                       random_draws=6)
    settings = [t.settings for t in sweep.trials if t.method == "prunedtwin" and t.seed == 0]
    assert len(settings) == 12 and len(sweep.trials) == 2 + 24
    draws = {c: [{k: v for k, v in s.items() if k != "prunedtwin.options.criterion"}
                 for s in settings if s["prunedtwin.options.criterion"] == c] for c in ("magnitude", "gradient")}
    assert draws["magnitude"] == draws["gradient"]
    assert len({json.dumps(d, sort_keys=True) for d in draws["magnitude"]}) == 6
    assert all(set(d) == {"prunedtwin.options.q", "prunedtwin.options.lam"} for d in draws["magnitude"])
    # each method draws on its own: adding another leaves these draws as they were
    more = plan_sweep(pipeline(tmp_path), tmp_path / "s", pm, grid=grid, seeds=[0, 1], methods=["dfr", "prunedtwin"],
                      random_draws=6)
    assert [t for t in more.trials if t.method == "prunedtwin"] == [t for t in sweep.trials if t.method == "prunedtwin"]
    no_draws = plan_sweep(pipeline(tmp_path), tmp_path / "s", pm, grid=grid, seeds=[0], methods=["prunedtwin"])
    assert [t.settings for t in no_draws.trials] == [{}, *({"prunedtwin.options.criterion": c}
                                                           for c in ("magnitude", "gradient"))]


@pytest.mark.parametrize(("methods", "grid", "message"), [
    ("fairdropot+dfr", [], "--methods fairdropot+dfr: no mitigation named 'fairdropot' (did you mean 'fairdropout'?)"),
    ("fairdropout,fairdropout+dfr", ["fairdropout+dfr.stages.0.options.p_gen=0.3"],
     "--grid fairdropout+dfr.stages.0.options.p_gen: stage 0 (fairdropout) of fairdropout+dfr is not run again"),
    ("fairdropout+dfr", ["fairdropout+dfr.options.retrains=5"],
     "--grid fairdropout+dfr.options.retrains: a chain's keys are fairdropout+dfr.stages.N.KEY, N from 0 to 1"),
    ("fairdropout+dfr", ["fairdropout+dfr.stages.2.options.retrains=5"], "N from 0 to 1"),
    ("erm+dfr", ["erm+dfr.stages.1.options.retrains=0"], "stages[0].options.retrains: must be positive, got 0"),
])
def test_sweep_refuses_a_bad_chain_naming_it_before_running(tmp_path, methods, grid, message):
    args = [f"--grid={item}" for item in grid]
    result = invoke(manager(), "sweep", pipeline(tmp_path), "--methods", methods, *args, "--out", tmp_path / "s")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "s").exists()


# --- a killed sweep, and the same sweep twice --------------------------------------------------


def alive(pid):
    """Whether process `pid` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def parent_of(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid):
    return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat") if parent_of(stat.parent.name) == pid]


def holder(run):
    """The pid that holds a run folder's lock once it trains there (it writes its pid after
    taking the lock, then checkpoints each epoch), or None before."""
    try:
        pid = json.loads((run / runlock.LOCK_FILE).read_text())["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return None
    return pid if (run / "checkpoints/0-erm/epoch_001.pt").exists() else None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc")
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killing_the_sweep_ends_its_pool_workers(tmp_path, stop):
    """Killed outright, the sweep's workers end themselves; terminated (SIGTERM, as Ctrl-C), the
    sweep closes its pool, which kills them instead of waiting for their trials."""
    path = tmp_path / "slow.toml"  # trials of minutes: 1000 epochs of 20000 examples
    path.write_text(toml_dumps(tiny_pipeline(dataset={"name": "tiny", "options": {"n_train": 20000}},
                                                train={"epochs": 1000, "batch_size": 50, "lr": 0.01})))
    out = tmp_path / "sweep"
    runs = [out / "erm" / "default" / f"seed{seed}" for seed in (0, 1)]
    sweep = subprocess.Popen([sys.executable, "-m", "spurcore", "-p", "spurcore.testing.tinyplug", "sweep", str(path), "--seeds", "0,1",
                              "--jobs", "2", "--out", str(out)], env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = []  # every process the sweep started, to end whatever outlives the test
    try:
        wait_for(lambda: all(holder(run) for run in runs) or sweep.poll() is not None, 120, "both trials training")
        assert sweep.poll() is None, sweep.stderr.read().decode()
        workers = [holder(run) for run in runs]
        started = children(sweep.pid)
        assert set(workers) <= set(started)  # the pool's own processes
        sweep.send_signal(stop)
        assert sweep.wait(30) != 0
        wait_for(lambda: not any(map(alive, workers)), 30, f"workers {workers} exit after their sweep was stopped")
        # A worker's leader thread turns zombie before its other threads have exited and closed
        # the lock's descriptor, so the folders come free a moment after, not at once.
        wait_for(lambda: all(map(run_folder_free, runs)), 30, "the killed workers' run folders come free")
        for run in runs:  # free for the relaunch, which continues each run
            with runlock.locked(run):
                assert not (run / "summary.json").exists()
    finally:
        started = started or children(sweep.pid)
        sweep.kill()
        sweep.wait()
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


WATCHED = """
import os, time
from spurcore_sweep.launchers import watch_parent
watch_parent(os.getppid(), interval=0.1)
print("watching", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc")
def test_a_process_watching_its_parent_ends_when_the_parent_is_killed():
    """The portable way a worker ends with its sweep, without the kernel's help (Linux's
    parent-death signal): the watching thread alone."""
    middle = subprocess.Popen([sys.executable, "-c", "import subprocess, sys\n"
                               f"child = subprocess.Popen([sys.executable, '-c', {WATCHED!r}])\n"
                               "print(child.pid, flush=True)\nchild.wait()"], stdout=subprocess.PIPE, text=True)
    child = int(middle.stdout.readline())
    try:
        assert middle.stdout.readline() == "watching\n" and parent_of(child) == middle.pid
        middle.kill()
        middle.wait()
        wait_for(lambda: not alive(child), 30, f"process {child} ends after its parent was killed")
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
        middle.wait()


def test_the_same_sweep_twice_gives_the_same_tables_and_runs(tmp_path, monkeypatch):
    """Two methods x two seeds, two trials at a time in worker processes, so which worker runs
    which trial, and in which order the records arrive, varies between the launches. Every file
    is the same but for the folder the sweep is in, and each lock's holder."""
    monkeypatch.setenv("SPURCORE_PLUGINS", "dfr")  # and load no other plugin: they start sooner
    path = pipeline(tmp_path)
    launches = []
    for name in ("first", "second"):
        out = tmp_path / name
        result = invoke(manager(), "sweep", path, "--methods", "dfr-class", "--seeds", "0,1", "--jobs", "2",
                        "--out", out, plugin_args=["spurcore.testing.tinyplug"])
        assert result.exit_code == 0, result.output
        report = invoke(manager(), "report", out, "--selector", "val-wga", "--selector", "val-worst-class")
        assert report.exit_code == 0, report.output
        launches.append({f.relative_to(out).as_posix(): f.read_bytes().replace(str(out.resolve()).encode(), b"DIR")
                         for f in out.rglob("*") if f.is_file() and f.name != runlock.LOCK_FILE})
    first, second = launches
    assert len(summaries(tmp_path / "first")) == 4  # 2 methods x 2 seeds
    assert {"report.md", "report.csv", "report.json", "wga.png", "sweep.json"} <= set(first)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


class Peek:
    """A selector that records which splits a candidate carried."""

    def __init__(self):
        self.seen: set[str] = set()

    def score(self, candidate):
        self.seen |= set(candidate.metrics)
        return candidate.metrics["val"]["avg_acc"]

    @hookimpl
    def spurcore_register_selectors(self):
        return [SelectorSpec(name="peek", score=self.score, metrics=["avg_acc"])]


def test_report_scores_give_a_selector_only_the_splits_it_declares(tmp_path):
    from spurcore.api import run_pipeline
    from spurcore_sweep.comparison import Run, score

    pm, peek = manager(), Peek()
    pm.register(peek, "peek")
    run_pipeline(load_pipeline(pipeline(tmp_path)), tmp_path / "run", pm, log=lambda m: None)
    run = Run(path=tmp_path / "run", seed=0, summary=json.loads((tmp_path / "run" / "summary.json").read_text()),
              labels=())
    assert "train" in run.summary["metrics"]
    peek.seen = set()
    assert score(pm.get("selectors", "peek"), run, pm) == run.summary["metrics"]["val"]["avg_acc"]
    assert peek.seen == {"val"}


def test_a_damaged_summary_is_named_by_report_and_by_a_relaunch(tmp_path):
    """Issue 25, item 12: a truncated summary.json ended `spur report` and a relaunch in a bare
    JSONDecodeError."""
    path = pipeline(tmp_path)
    out = tmp_path / "sweep"
    assert invoke(manager(), "sweep", path, "--seeds", "0,1", "--out", out).exit_code == 0
    damaged = out / "erm" / "default" / "seed1" / "summary.json"
    damaged.write_text(damaged.read_text()[:40])
    report = invoke(manager(), "report", out)
    assert report.exit_code == 1 and "Traceback" not in report.output
    assert report.output.startswith(f"Error: {damaged}: not valid JSON (") and "the file is damaged" in report.output
    again = invoke(manager(), "sweep", path, "--seeds", "0,1", "--out", out)
    assert again.exit_code == 1 and isinstance(again.exception, SystemExit), again.output
    assert "erm/default/seed0: finished earlier" in again.output
    assert f"erm/default/seed1: failed: {damaged}: not valid JSON" in again.output
