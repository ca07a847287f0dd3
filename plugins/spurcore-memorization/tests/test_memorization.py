"""`spur memorization`: the estimate against its definition on hand-made tables, deliberately
mislabeled training examples scored highest, a resumed computation giving the same scores, the
saved pipeline, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import h5py
import numpy as np
import pytest
import torch
from spurcore.testing import TinyPlugin, tiny_pipeline

import spurcore_memorization
import spurcore_sweep
from spurcore.api import (DatasetSpec, PluginManager, SplitData, SpuriousData, cli, hookimpl, load_pipeline,
                          toml_dumps, train_subset_positions)
from spurcore_memorization import Settings, memorization, memorization_scores, read_scores
from spurcore_memorization.procedure import MemorizationError

# --- the estimate ---------------------------------------------------------------------------


def direct(correct, trained):
    """The definition, one example and one model at a time."""
    out = []
    for i in range(correct.shape[1]):
        hits_in = [correct[k, i] for k in range(correct.shape[0]) if trained[k, i]]
        hits_out = [correct[k, i] for k in range(correct.shape[0]) if not trained[k, i]]
        out.append(np.mean(hits_in) - np.mean(hits_out) if hits_in and hits_out else np.nan)
    return np.array(out)


def test_the_estimate_is_accuracy_trained_on_minus_held_out_and_undefined_on_an_empty_side():
    correct = np.array([[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    trained = np.array([[1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 0, 1], [1, 0, 0, 1]], dtype=bool)
    found = memorization(correct, trained)
    # example 0: trained on by models 0, 2, 3 (right 2 of 3), held out from model 1 (right)
    assert found.memorization[0] == pytest.approx(2 / 3 - 1)
    assert found.memorization[1] == pytest.approx(1.0 - 0.5)  # in: models 1, 2 (both right); out: 0 (wrong), 3 (right)
    assert found.memorization[2] == pytest.approx(0.5 - 1.0)
    assert np.isnan(found.memorization[3]) and found.models_out[3] == 0 and found.accuracy_in[3] == 0.75
    assert found.models_in.tolist() == [3, 2, 2, 4] and found.defined.tolist() == [True, True, True, False]
    np.testing.assert_allclose(found.memorization, direct(correct, trained))


def test_the_estimate_matches_the_definition_on_random_tables():
    rng = np.random.default_rng(0)
    correct, trained = rng.random((9, 200)) < 0.8, rng.random((9, 200)) < 0.7
    np.testing.assert_allclose(memorization(correct, trained).memorization, direct(correct, trained))


def test_the_estimate_refuses_tables_of_different_shapes():
    with pytest.raises(ValueError, match=r"correct \(2, 3\) and trained \(3, 2\)"):
        memorization(np.ones((2, 3)), np.ones((3, 2)))


# --- the procedure on data with mislabeled examples ----------------------------------------

FLIPPED = (3, 17, 29, 41)


def make_flipped(options) -> SpuriousData:
    """32-d inputs, the class in dimension 0 and well separated, the attribute in dimension 1;
    the training labels of FLIPPED are wrong, so a model fits them only by memorizing them."""
    rng = np.random.default_rng(5)
    splits = {}
    for name, n in (("train", 80), ("val", 60), ("test", 60)):
        y = rng.integers(0, 2, n)
        a = np.where(rng.random(n) < 0.8, y, 1 - y)
        x = rng.normal(0, 1, (n, 32)).astype(np.float32)
        x[:, 0] += 4.0 * (2 * y - 1)
        x[:, 1] += 1.0 * (2 * a - 1)
        if name == "train":
            y = y.copy()
            y[list(FLIPPED)] = 1 - y[list(FLIPPED)]
        splits[name] = SplitData(name=name, inputs=torch.from_numpy(x), y=y, a=a)
    return SpuriousData(name="flipped", splits=splits, class_names=("neg", "pos"), attr_names=("off", "on"),
                        input_shape=(32,))


@attrs.frozen
class NoOptions:
    pass


class Flipped:
    @hookimpl
    def spurcore_register_datasets(self):
        return [DatasetSpec(name="flipped", build=make_flipped, options=NoOptions, description="mislabeled examples")]


def manager() -> PluginManager:
    """The installed plugins (this one, with its selector last-epoch, and the sweep) and the test data."""
    pm = PluginManager(block=["progress"])
    pm.register(TinyPlugin(), "tiny")
    pm.register(Flipped(), "flipped")
    return pm


def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "flipped.toml"
    data = tiny_pipeline(dataset={"name": "flipped"}, backbone={"name": "mlp", "options": {"hidden": 64}},
                         train={"epochs": 40, "batch_size": 16, "lr": 0.01, "weight_decay": 0.0},
                         selector="val-worst-class")
    path.write_text(toml_dumps(data))
    return path


# scored at their last epoch: validation would stop these models before they fit the mislabeled examples
SETTINGS = Settings(models=10, subset=0.7, epochs=None, seeds=(0,), final_epoch=True)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memorization")
    lines: list[str] = []
    result = memorization_scores(pipeline(tmp), tmp / "out", manager(), SETTINGS, echo=lines.append)
    return tmp, result, lines


def test_mislabeled_training_examples_get_the_highest_scores(scored):
    tmp, result, lines = scored
    assert result["failed"] == []
    mem = read_scores(tmp / "out" / "seed0" / "scores.h5")["memorization"]
    flipped = mem[list(FLIPPED)]
    clean = np.delete(mem, list(FLIPPED))
    assert not np.isnan(flipped).any() and flipped.tolist() == [1.0] * len(FLIPPED)  # fitted only when trained on
    assert np.nanmax(clean) <= flipped.min()
    # one clean example ties them: it sits among the mislabeled ones, misread by every model that
    # fits those and does not train on it (the influence of the mislabeled examples, not noise)
    assert np.sum(clean >= flipped.min()) <= 1 and np.nanmean(clean) < 0.1


def test_each_model_trains_on_the_subset_its_seed_draws_and_every_file_is_written(scored):
    tmp, result, lines = scored
    out = tmp / "out"
    with h5py.File(out / "seed0" / "scores.h5") as handle:
        trained = handle["train/trained"][()]
        assert trained.shape == (10, 80) and handle["test/correct"].shape == (10, 60)
        assert handle["train/index"][()].tolist() == list(range(80))
        assert list(handle["train"].attrs["group_names"]) == ["neg/off", "neg/on", "pos/off", "pos/on"]
        assert handle["train/group"][()].tolist() == (handle["train/y"][()] * 2 + handle["train/a"][()]).tolist()
    for k in range(10):
        assert np.flatnonzero(trained[k]).tolist() == train_subset_positions(80, 0.7, k).tolist()
        run = json.loads((out / "seed0" / f"model{k:03d}" / "summary.json").read_text())
        assert run["stages"][0]["train_eval"] is None  # the scores evaluate the training split once, at the end
    assert trained.sum(1).tolist() == [56] * 10
    saved = load_pipeline(out / "pipeline.toml")
    assert saved.dataset.train_subset == 0.7 and [s.method for s in saved.stages] == ["erm"]
    assert saved.stages[0].train["keep_checkpoints"] == "selected" and saved.selector == "last-epoch"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and set(summary["groups"]) == {"neg/off", "neg/on", "pos/off", "pos/on",
                                                                  "minority", "majority"}
    seed = json.loads((out / "seed0" / "scores.json").read_text())
    assert seed["minority_groups"] == ["neg/on", "pos/off"]
    assert sum(g["examples"] for g in seed["groups"].values()) == 80
    assert (out / "scores.png").stat().st_size > 10_000 and "| **minority** |" in (out / "summary.md").read_text()
    assert lines[0] == "[1/10] seed0/model000: done" and json.loads((out / "sweep.json").read_text())["trials"][9][
        "record"]["status"] == "done"


def test_a_damaged_or_stale_predictions_file_is_named_and_predicted_again(scored, tmp_path):
    """Issue 25, item 10 (and item 1 for predictions): an object array in predictions/*.npz
    ended in `ValueError: Object arrays cannot be loaded when allow_pickle=False`, a wrong length
    in a broadcasting error, and a retrained model's old predictions were read as its own."""
    import os
    import shutil

    from spurcore_memorization.procedure import collect, full_data

    tmp, _, _ = scored
    out = tmp_path / "out"
    shutil.copytree(tmp / "out", out)  # the same files, modification times included
    pm = manager()
    data = full_data(out, pm)
    notes: list[str] = []
    whole = collect(out, 0, 10, data, pm, note=notes.append)
    assert notes == []  # every file whole, and made from these models and this data
    folder = out / "seed0" / "predictions"

    def rewrite(k, **changes):
        with np.load(folder / f"model{k:03d}.npz") as saved:
            arrays = {**dict(saved), **changes}
        np.savez(folder / f"model{k:03d}.npz", **arrays)

    rewrite(1, trained=np.array([object()] * 3, dtype=object))
    with np.load(folder / "model002.npz") as saved:
        rewrite(2, train=saved["train"][:-3])
    (folder / "model003.npz").write_bytes((folder / "model003.npz").read_bytes()[:200])
    with np.load(folder / "model004.npz") as saved:
        rewrite(4, test=saved["test"].astype(str))
    (checkpoint,) = (out / "seed0" / "model005" / "checkpoints").glob("*/epoch_*.pt")
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))  # retrained
    again = collect(out, 0, 10, data, pm, note=notes.append)
    reasons = {1: "'trained' is an array of Python objects (never unpickled)",
               2: "'train' is int64 of shape (77,), not 80 integers", 3: "unreadable (",
               4: "'test' is <U21 of shape (60,), not 60 integers", 5: "made from another model or other data"}
    assert len(notes) == 5
    for note, (k, reason) in zip(notes, reasons.items()):
        assert note.startswith(f"{folder / f'model{k:03d}.npz'}: not used ({reason}"), note
        assert note.endswith(f"predicting again with {out / 'seed0' / f'model{k:03d}'}")
    for name in whole:
        np.testing.assert_array_equal(again[name], whole[name])
    notes.clear()
    collect(out, 0, 10, data, pm, note=notes.append)
    assert notes == []


class Interrupt:
    """Stops model 2's training after its second epoch, as a killed launch would."""

    @hookimpl
    def spurcore_epoch_end(self, run, epoch):
        if run.config.seed == 2 and epoch == 2:
            raise KeyboardInterrupt("stopped")


def test_a_resumed_computation_gives_the_same_scores(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(toml_dumps(tiny_pipeline()))
    settings = Settings(models=4, subset=0.7, epochs=3, seeds=(0,))
    memorization_scores(path, tmp_path / "whole", manager(), settings, echo=lambda line: None)
    pm = manager()
    interrupt = Interrupt()
    pm.register(interrupt, "interrupt")
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        memorization_scores(path, out, pm, settings, echo=lambda line: None)
    assert not (out / "seed0" / "scores.h5").exists() and (out / "seed0/model002/checkpoints/0-erm/epoch_002.pt").exists()
    pm.unregister(interrupt)
    lines: list[str] = []
    memorization_scores(path, out, pm, settings, echo=lines.append)
    assert "[1/4] seed0/model000: finished earlier" in lines and "[3/4] seed0/model002: done" in lines
    again, whole = read_scores(out / "seed0" / "scores.h5"), read_scores(tmp_path / "whole" / "seed0" / "scores.h5")
    np.testing.assert_array_equal(again["memorization"], whole["memorization"])
    np.testing.assert_array_equal(again["correct"], whole["correct"])


def test_a_relaunch_with_another_subset_is_refused_naming_the_key(scored):
    tmp, _, _ = scored
    with pytest.raises(MemorizationError, match=r"key dataset\.train_subset differs"):
        memorization_scores(pipeline(tmp), tmp / "out", manager(), attrs.evolve(SETTINGS, subset=0.5))


def invoke(pm, *args):
    from click.testing import CliRunner

    if pm.pm.get_plugin("sweep") is None:
        pm.register(spurcore_sweep, "sweep")
    pm.hook.spurcore_register_commands(cli=cli)
    return CliRunner().invoke(cli, list(map(str, args)), obj={"manager": pm, "plugin_args": []})


@pytest.mark.parametrize("args, message", [
    (["--models", "1"], "--models 1: must be between 2 and 1000"),
    (["--subset", "1.0"], "--subset 1.0: must be in (0, 1)"),
    (["--epochs", "2", "--pipeline-epochs"], "--epochs and --pipeline-epochs: give one"),
])
def test_the_command_refuses_bad_settings_before_training(tmp_path, args, message):
    result = invoke(manager(), "memorization", pipeline(tmp_path), "--out", tmp_path / "out", *args)
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "out" / "seed0").exists()


def test_the_command_refuses_a_pipeline_that_sets_its_own_subset(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(toml_dumps(tiny_pipeline(dataset={"name": "tiny", "holdout": 0.2})))
    result = invoke(manager(), "memorization", path, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "dataset.holdout and dataset.train_subset must be left at 0 and 1" in result.output


def test_the_command_runs_with_its_small_default_and_prints_the_table(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(toml_dumps(tiny_pipeline()))
    result = invoke(manager(), "memorization", path, "--out", tmp_path / "out", "--models", "3", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "[3/3] seed0/model002: done" in result.output and "| **minority** |" in result.output
    saved = json.loads((tmp_path / "out" / "memorization.json").read_text())
    assert saved["epochs"] == 1 and saved["selector"] == "val-wga" and saved["models"] == 3


def test_the_pipeline_epochs_and_the_final_epoch_are_kept_as_asked(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(toml_dumps(tiny_pipeline()))
    result = invoke(manager(), "memorization", path, "--out", tmp_path / "out", "--models", "2", "--pipeline-epochs",
                    "--final-epoch")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "memorization.json").read_text())
    assert saved["epochs"] == 3 and saved["selector"] == "last-epoch"  # the tiny pipeline trains 3 epochs
    runs = [json.loads((tmp_path / "out" / "seed0" / f"model00{k}" / "summary.json").read_text()) for k in (0, 1)]
    assert [r["selected"]["epoch"] for r in runs] == [3, 3]
