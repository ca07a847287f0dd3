"""`[settings.dynamics]` through real runs (the record against the checkpoints it was taken
from, training unchanged by it, a resumed run keeping and repeating the right epochs, its
refusals) and `spur memorization --estimator` end to end (the files, their readers, the errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from spurcore.testing import TinyPlugin, tiny_pipeline
from test_memorization import invoke

from spurcore.api import PluginManager, hookimpl, load_pipeline, open_run, predict, run_pipeline, toml_dumps
from spurcore_memorization import read_dynamics, read_scores
from spurcore_memorization.dynamics import DynamicsError
from spurcore_memorization.estimators import ESTIMATORS, learning_time

WATERDIGITS = {"dataset": {"name": "waterdigits", "options": {"scale": 0.05, "size": 16}},
               "backbone": {"name": "small-cnn", "options": {"width": 8}},
               "train": {"epochs": 2, "batch_size": 32}}


def manager(*extra) -> PluginManager:
    pm = PluginManager(block=["progress"])
    pm.register(TinyPlugin(), "tiny")
    for i, plugin in enumerate(extra):
        pm.register(plugin, f"extra{i}")
    return pm


def write(tmp_path: Path, name: str, **overrides) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(toml_dumps(tiny_pipeline(**overrides)))
    return path


# --- recording in `spur run` --------------------------------------------------------------------


def test_spur_run_records_every_epochs_losses_correctness_and_curvature_of_the_checkpointed_model(tmp_path):
    pipeline = write(tmp_path, "wd", **WATERDIGITS, settings={"dynamics": {"curvature_every": 2,
                                                                             "curvature_directions": 2}})
    result = invoke(manager(), "run", pipeline, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    record = read_dynamics(tmp_path / "run", "0-erm")
    run = open_run(tmp_path / "run", manager())
    train = run.data.splits["train"]
    assert record.epochs.tolist() == [1, 2] and record.examples == len(train) == 240
    assert record.positions.tolist() == list(range(240)) and record.loss.shape == (2, 240)
    assert record.curvature_epochs.tolist() == [2] and record.curvature.shape == (1, 240)
    assert np.isfinite(record.curvature).all() and (record.curvature >= 0).all() and record.curvature.max() > 0
    assert (record.seconds > 0).all() and record.curvature_seconds[0] == 0 < record.curvature_seconds[1]
    assert record.threads.tolist() == [torch.get_num_threads()] * 2
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for epoch in (1, 2):
        logits = torch.from_numpy(predict(run.load_model(0, epoch), train, run.device))
        y = torch.tensor(train.y)
        np.testing.assert_allclose(record.loss[epoch - 1], F.cross_entropy(logits, y, reduction="none").numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(record.correct[epoch - 1], (logits.argmax(1) == y).numpy())
        avg = next(m["avg_acc"] for m in metrics if m["split"] == "train" and m["epoch"] == epoch)
        assert record.correct[epoch - 1].mean() == pytest.approx(avg)


def test_recording_changes_nothing_the_run_computes(tmp_path):
    plain = run_pipeline(load_pipeline(write(tmp_path, "plain")), tmp_path / "plain", manager(), quiet=True)
    watched = run_pipeline(load_pipeline(write(tmp_path, "watched", settings={"dynamics": {"curvature_every": 1}})),
                           tmp_path / "watched", manager(), quiet=True)
    assert watched["metrics"] == plain["metrics"]
    for epoch in (1, 2, 3):
        a = torch.load(tmp_path / "plain" / f"checkpoints/0-erm/epoch_{epoch:03d}.pt", weights_only=True)["model"]
        b = torch.load(tmp_path / "watched" / f"checkpoints/0-erm/epoch_{epoch:03d}.pt", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_dynamics(tmp_path / "watched", "0-erm").curvature_epochs.tolist() == [1, 2, 3]


class StopAfterTrainEvaluation:
    """Stops the run in epoch 2 after its training split was evaluated (and recorded) but
    before the epoch's checkpoint, as a kill there would."""

    @hookimpl
    def spurcore_evaluation_end(self, epoch, split):
        if epoch == 2 and split == "val":
            raise KeyboardInterrupt("stopped")


def test_a_resumed_run_keeps_the_recorded_epochs_and_records_the_repeated_one_once(tmp_path):
    pipeline = load_pipeline(write(tmp_path, "p", settings={"dynamics": {"curvature_every": 1}}))
    run_pipeline(pipeline, tmp_path / "whole", manager(), quiet=True)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(pipeline, tmp_path / "cut", manager(StopAfterTrainEvaluation()), quiet=True)
    folder = tmp_path / "cut" / "dynamics" / "0-erm"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_001.npz", "epoch_002.npz"]
    first = (folder / "epoch_001.npz").stat().st_mtime_ns
    run_pipeline(pipeline, tmp_path / "cut", manager(), quiet=True, resume=True)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_001.npz", "epoch_002.npz", "epoch_003.npz"]
    assert (folder / "epoch_001.npz").stat().st_mtime_ns == first  # kept, not recorded again
    whole, resumed = read_dynamics(tmp_path / "whole", "0-erm"), read_dynamics(tmp_path / "cut", "0-erm")
    for name in ("epochs", "positions", "loss", "correct", "curvature", "curvature_epochs"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))


@pytest.mark.parametrize("settings, train, message", [
    ({}, {"train_eval": "none"}, 'settings.dynamics: stages[0] (0-erm) does not evaluate its training split '
                                 '(train_eval = "none")'),
    ({"curvature_every": 4}, {}, "settings.dynamics.curvature_every: 4 is more than the 3 epochs of stages[0]"),
    ({"curvature_h": 0.0}, {}, "settings.dynamics.curvature_h: must be positive, got 0.0"),
])
def test_settings_that_cannot_record_stop_the_run_before_it_writes(tmp_path, settings, train, message):
    pipeline = write(tmp_path, "p", settings={"dynamics": settings},
                     train={"epochs": 3, "batch_size": 32, "lr": 0.01, **train})
    result = invoke(manager(), "run", pipeline, "--out", tmp_path / "run")
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "run").exists()


def test_a_missing_or_incomplete_record_is_named(tmp_path):
    with pytest.raises(DynamicsError, match=r"dynamics/0-erm: no recorded epochs; run the pipeline with "
                                            r"\[settings.dynamics\]"):
        read_dynamics(tmp_path, "0-erm")
    run_pipeline(load_pipeline(write(tmp_path, "p", settings={"dynamics": {}})), tmp_path / "run", manager(),
                 quiet=True)
    (tmp_path / "run" / "dynamics" / "0-erm" / "epoch_002.npz").unlink()
    with pytest.raises(DynamicsError, match=r"epochs \[2\] are not recorded \(found 1 to 3\)"):
        read_dynamics(tmp_path / "run", "0-erm")


# --- spur memorization --estimator ----------------------------------------------------------------


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one-run")
    result = invoke(manager(), "memorization", write(tmp, "p"), "--out", tmp / "out", "--estimator", "one-run",
                    "--epochs", "3", "--curvature-every", "1", "--seeds", "0,1")
    return tmp / "out", result


def test_one_run_per_seed_gives_every_estimator_in_the_shared_layout(one_run):
    out, result = one_run
    assert result.exit_code == 0, result.output
    assert "[2/2] runs/seed1: done" in result.output and "learning-time:\n| group |" in result.output
    for seed in (0, 1):
        record = read_dynamics(out / "runs" / f"seed{seed}", "0-erm")
        assert record.epochs.tolist() == [1, 2, 3] and record.curvature_epochs.tolist() == [1, 2, 3]
        for name, estimator in ESTIMATORS.items():
            scores = read_scores(out / name / f"seed{seed}" / "scores.h5")
            expected = estimator.score(record.table(estimator.reads))
            np.testing.assert_allclose(scores["memorization"], expected, rtol=1e-6)
            assert scores["index"].tolist() == list(range(200)) and scores[estimator.reads].shape == (3, 200)
            seed_summary = json.loads((out / name / f"seed{seed}" / "scores.json").read_text())
            assert seed_summary["direction"] == "higher = more memorized" and "minority" in seed_summary
            assert seed_summary["cost"]["cpu_minutes"] >= 0 and seed_summary["cost"]["threads"] == 1
        np.testing.assert_array_equal(read_scores(out / "learning-time" / f"seed{seed}" / "scores.h5")["memorization"],
                                      learning_time(record.correct))
    summary = json.loads((out / "forgetting" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["cost"]) == {"0", "1"} and "Toneva" in summary["paper"]
    assert {"minority", "majority"} <= set(summary["groups"]) and "share_above_0.5" not in summary["groups"]["minority"]
    assert (out / "curvature" / "scores.png").stat().st_size > 10_000
    saved = load_pipeline(out / "pipeline.toml")
    assert saved.selector == "last-epoch" and saved.stages[0].train["train_eval"] == "full"
    assert saved.settings["dynamics"]["curvature_every"] == 1 and saved.dataset.train_subset == 1.0


def test_the_html_report_shows_a_gallery_of_the_one_run_scores(one_run):
    out, _ = one_run
    path = out / "cumulative-loss" / "seed0" / "scores.h5"
    groups = json.loads((path.parent / "scores.json").read_text())["groups"]
    names = [name for name in groups if name not in ("minority", "majority")]
    result = invoke(manager(), "report", out / "runs" / "seed0", "--html", "--scores", path, "--gallery", "2")
    assert result.exit_code == 0, result.output
    page = (out / "runs" / "seed0" / "report.html").read_text()
    train = read_scores(path)
    assert len(names) == 4 and all(f'data-group="{name}"' in page for name in names)
    top = int(np.nanargmax(train["memorization"]))
    assert f'alt="training example {int(train["index"][top])}"' in page
    assert f"{train['memorization'][top]:.2f}</figcaption>" in page
    assert page.count('alt="training example') == 2 * len(names)


def test_a_relaunch_asking_for_curvature_from_runs_that_did_not_measure_it_is_refused(tmp_path):
    pipeline = write(tmp_path, "p", train={"epochs": 1, "batch_size": 32, "lr": 0.01})
    first = invoke(manager(), "memorization", pipeline, "--out", tmp_path / "out", "--estimator", "forgetting",
                   "--epochs", "1")
    assert first.exit_code == 0, first.output
    again = invoke(manager(), "memorization", pipeline, "--out", tmp_path / "out", "--estimator", "curvature",
                   "--epochs", "1", "--curvature-every", "1")
    assert again.exit_code == 1 and "key settings.dynamics.curvature_every differs" in again.output
    assert not (tmp_path / "out" / "curvature").exists()


@pytest.mark.parametrize("args, message", [
    (["--estimator", "forgeting"], "--estimator 'forgeting': unknown (did you mean 'forgetting'?"),
    (["--estimator", "feldman-zhang,forgetting"], "launch them into two --out folders"),
    (["--estimator", "one-run", "--models", "4"], "--models: a setting of --estimator feldman-zhang"),
    (["--estimator", "forgetting", "--curvature-every", "2"], "--curvature-every: only with --estimator curvature"),
    (["--estimator", "curvature", "--epochs", "2", "--curvature-every", "3"],
     "--curvature-every 3: more than the 2 epochs each run trains"),
])
def test_the_command_refuses_bad_estimator_settings_before_training(tmp_path, args, message):
    result = invoke(manager(), "memorization", write(tmp_path, "p"), "--out", tmp_path / "out", *args)
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "out" / "runs").exists()
