"""The pipeline observer on the tiny dataset, and `spur activations` on a finished run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spurcore_activations
from spurcore import hookimpl
from spurcore.api import ConfigError, cli, open_run, run_pipeline
from spurcore_activations import ActivationError, ActivationFile


@pytest.fixture
def act_plugins(spur_plugins):
    spur_plugins.register(spurcore_activations, "activations")
    return spur_plugins


def settings(**kw):
    return {"activations": {"modules": ["embed.0", "embed"], **kw}}


def metrics_lines(path):
    return (path / "metrics.jsonl").read_text()


def test_observer_records_every_evaluated_example_and_changes_nothing(act_plugins, spur_tiny_config, tmp_path, spur_plugins):
    lines = []
    logged = run_pipeline(spur_tiny_config(settings=settings()), tmp_path / "logged", act_plugins, log=lines.append)
    size = (tmp_path / "logged" / "activations.h5").stat().st_size
    assert f"activations: {len(ActivationFile(tmp_path / 'logged' / 'activations.h5'))} rows in " \
           f"{tmp_path / 'logged' / 'activations.h5'} ({size / 2**20:.1f} MiB, " in "\n".join(lines)
    act_plugins.unregister(spurcore_activations)
    plain = run_pipeline(spur_tiny_config(), tmp_path / "plain", act_plugins, log=lambda m: None)
    assert logged == plain
    assert metrics_lines(tmp_path / "logged") == metrics_lines(tmp_path / "plain")
    assert not (tmp_path / "plain" / "activations.h5").exists()

    f = ActivationFile(tmp_path / "logged" / "activations.h5")
    assert f.modules == ["embed", "embed.0"] and f.units == {"embed": 16, "embed.0": 16}
    assert f.splits == ["val", "test"] and f.epochs == [1, 2, 3] and f.stages == [0]
    assert f.attrs["source"] == "pipeline" and len(f.config_hash) == 64
    runner = open_run(tmp_path / "logged", act_plugins)
    data = runner.data
    assert len(f) == 3 * (len(data.splits["val"]) + len(data.splits["test"]))
    for split in ("val", "test"):
        for epoch in (1, 2, 3):
            rows = f.index(split=split, epoch=epoch)
            split_data = data.splits[split]
            assert np.array_equal(rows["index"], np.arange(len(split_data)))
            assert np.array_equal(rows["y"], split_data.y) and np.array_equal(rows["a"], split_data.a)
            assert np.array_equal(rows["group"], data.groups(split))
        model = runner.load_model(0, 3)
        x = data.splits[split].inputs
        with torch.no_grad():
            pre = model.embed[0](x)
            expected = model.embed(x)
        assert np.allclose(f.read("embed", split=split, epoch=3), expected.numpy(), atol=1e-6)
        assert np.allclose(f.read("embed.0", split=split, epoch=3), pre.numpy(), atol=1e-6)
        assert f.read("embed.0", split=split, epoch=3).min() < 0  # taken before the ReLU
    group = f.read("embed", split="test", group="pos/on", epoch=2)
    assert len(group) == int((data.groups("test") == 3).sum())


@pytest.mark.parametrize("epochs, expected", [("last", [3]), ([1, 3], [1, 3])])
def test_chosen_epochs_and_splits_only(act_plugins, spur_tiny_config, tmp_path, epochs, expected):
    config = spur_tiny_config(settings=settings(epochs=epochs, splits=["test"], path="sub/acts.h5", reduce="max"))
    run_pipeline(config, tmp_path / "run", act_plugins, log=lambda m: None)
    f = ActivationFile(tmp_path / "run" / "sub" / "acts.h5")
    assert f.epochs == expected and f.splits == ["test"] and len(f) == 160 * len(expected)
    assert f.attrs["reduce"] == "max"


def test_without_settings_the_plugin_does_nothing(act_plugins, spur_tiny_config, tmp_path):
    run_pipeline(spur_tiny_config(), tmp_path / "run", act_plugins, log=lambda m: None)
    assert not list((tmp_path / "run").glob("*.h5"))


@pytest.mark.parametrize("bad, where", [
    ({"modulez": ["embed"]}, "settings.activations.modulez: unknown key (did you mean 'modules'?)"),
    ({"reduce": "median"}, "settings.activations.reduce"),
    ({"modules": []}, "settings.activations.modules: must not be empty"),
    ({"splits": ["holdout"]}, "settings.activations.splits[0]: 'holdout' is not an evaluated split"),
    ({"stages": ["nope"]}, "settings.activations.stages[0]: no stage named 'nope'"),
    ({"epochs": "first"}, "settings.activations.epochs"),
])
def test_bad_settings_stop_the_run_before_training(act_plugins, spur_tiny_config, tmp_path, bad, where):
    with pytest.raises(ConfigError) as info:
        run_pipeline(spur_tiny_config(settings=settings(**bad)), tmp_path / "run", act_plugins, log=lambda m: None)
    assert where in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_is_refused_only_when_no_stage_evaluates_it(act_plugins, spur_tiny_config, tmp_path):
    config = spur_tiny_config(settings=settings(splits=["val", "train"]),
                         train={"epochs": 3, "batch_size": 32, "lr": 0.01, "train_eval": "none"})
    with pytest.raises(ConfigError, match=r"settings.activations.splits\[1\]: no stage evaluates 'train'"):
        run_pipeline(config, tmp_path / "run", act_plugins, log=lambda m: None)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("train_eval", ["full", "subset:20"])
def test_train_is_recorded_through_the_evaluation_hooks(act_plugins, spur_tiny_config, tmp_path, train_eval):
    config = spur_tiny_config(settings=settings(splits=["train"], epochs=[1, 3]),
                         train={"epochs": 3, "batch_size": 32, "lr": 0.01, "train_eval": train_eval})
    summary = run_pipeline(config, tmp_path / "run", act_plugins, log=lambda m: None)
    f = ActivationFile(tmp_path / "run" / "activations.h5")
    runner = open_run(tmp_path / "run", act_plugins)
    train = runner.data.splits["train"]
    counts = summary["metrics"]["train"]["group_count"]
    assert f.splits == ["train"] and f.epochs == [1, 3]
    for epoch in (1, 3):
        rows = f.index(split="train", epoch=epoch)
        assert len(rows) == sum(counts.values()) == summary["stages"][0]["train_eval"]["examples"]
        assert np.all(np.diff(rows["index"]) > 0)  # real positions in the split, in order
        assert np.array_equal(rows["y"], train.y[rows["index"]]) and np.array_equal(rows["a"], train.a[rows["index"]])
    if train_eval == "full":
        assert np.array_equal(f.index(split="train", epoch=3)["index"], np.arange(len(train)))
    else:
        assert np.bincount(f.index(split="train", epoch=3)["group"]).tolist() == list(counts.values())
    positions = torch.from_numpy(np.ascontiguousarray(f.index(split="train", epoch=3)["index"]))
    with torch.no_grad():
        expected = runner.load_model(0, 3).embed(train.inputs[positions])
    assert np.allclose(f.read("embed", split="train", epoch=3), expected.numpy(), atol=1e-6)


def test_unknown_module_stops_the_run_before_training(act_plugins, spur_tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"settings\.activations\.modules: module 'embed.2' not found.*embed\.0"):
        run_pipeline(spur_tiny_config(settings=settings(modules=["embed.2"])), tmp_path / "run", act_plugins,
                     log=lambda m: None)
    assert not (tmp_path / "run").exists()  # refused before anything was written


class FailDuringEvaluation:
    def __init__(self):
        self.model = None

    @hookimpl
    def spurcore_evaluation_batch(self, stage, epoch, split):
        self.model = stage.model
        if epoch == 2 and split == "test":
            raise RuntimeError("boom")


def test_an_error_during_evaluation_removes_the_hooks_and_keeps_the_file(act_plugins, spur_tiny_config, tmp_path):
    failing = FailDuringEvaluation()
    act_plugins.register(failing, "failing")
    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(spur_tiny_config(settings=settings()), tmp_path / "run", act_plugins, log=lambda m: None)
    assert all(not m._forward_hooks for m in failing.model.modules())
    f = ActivationFile(tmp_path / "run" / "activations.h5")
    assert f.epochs == [1, 2] and len(f.index(epoch=2, split="val")) == 120


def interrupt_during_evaluation(config, out, act_plugins):
    """Run `config` into `out` until an evaluation pass fails, as a crash mid-run would."""
    failing = FailDuringEvaluation()
    act_plugins.register(failing, "failing")
    with pytest.raises(RuntimeError):
        run_pipeline(config, out, act_plugins, log=lambda m: None)
    act_plugins.unregister(failing)


def test_resume_keeps_checkpointed_epochs_and_drops_the_rest(act_plugins, spur_tiny_config, tmp_path):
    config = spur_tiny_config(settings=settings())
    interrupt_during_evaluation(config, tmp_path / "run", act_plugins)
    run_pipeline(config, tmp_path / "run", act_plugins, resume=True, log=lambda m: None)
    f = ActivationFile(tmp_path / "run" / "activations.h5")
    rows = f.index()
    assert f.epochs == [1, 2, 3] and len(f) == 3 * 280
    assert [(int(e), s) for e, s in {(r["epoch"], r["split"]): 0 for r in rows}] == [
        (e, s) for e in (1, 2, 3) for s in ("val", "test")]


@pytest.mark.parametrize("left", [b"", b"\x89HDF\r\n"])
def test_a_file_a_kill_left_empty_at_creation_counts_as_no_rows_on_resume(act_plugins, spur_tiny_config, tmp_path, left):
    config = spur_tiny_config(settings=settings())
    interrupt_during_evaluation(config, tmp_path / "run", act_plugins)
    (tmp_path / "run" / "activations.h5").write_bytes(left)  # as if killed while the file was created
    run_pipeline(config, tmp_path / "run", act_plugins, resume=True, log=lambda m: None)
    f = ActivationFile(tmp_path / "run" / "activations.h5")
    assert f.epochs == [2, 3] and len(f) == 2 * 280  # epoch 1 had its checkpoint: the run does not repeat it


def test_spur_activations_on_a_finished_run(act_plugins, spur_tiny_config, tmp_path):
    run_pipeline(spur_tiny_config(), tmp_path / "run", act_plugins, log=lambda m: None)
    spurcore_activations.spurcore_register_commands(cli)
    out = tmp_path / "acts.h5"
    result = CliRunner().invoke(cli, ["activations", str(tmp_path / "run"), "--module", "embed", "--module", "embed.1",
                                      "--split", "train", "--split", "test", "--out", str(out), "--quiet"],
                                obj={"manager": act_plugins, "plugin_args": []})
    assert result.exit_code == 0, result.output
    assert "wrote 360 rows" in result.output
    f = ActivationFile(out)
    runner = open_run(tmp_path / "run", act_plugins)
    selected = json.loads((tmp_path / "run" / "summary.json").read_text())["selected"]["epoch"]
    assert f.splits == ["train", "test"] and f.epochs == [selected] and f.attrs["source"] == "finished-run"
    model = runner.load_model()
    with torch.no_grad():
        expected = model.embed(runner.data.splits["train"].inputs).numpy()
    assert np.allclose(f.read("embed", split="train"), expected, atol=1e-6)
    assert np.array_equal(f.read("embed"), f.read("embed.1"))
    default = CliRunner().invoke(cli, ["activations", str(tmp_path / "run"), "--module", "embed", "--quiet"],
                                 obj={"manager": act_plugins, "plugin_args": []})
    assert default.exit_code == 0, default.output
    assert ActivationFile(tmp_path / "run" / "activations" / f"0-erm-epoch_{selected:03d}.h5").splits == [
        "train", "val", "test"]
    bad = CliRunner().invoke(cli, ["activations", str(tmp_path / "run"), "--module", "embed.9", "--quiet"],
                             obj={"manager": act_plugins, "plugin_args": []})
    assert bad.exit_code != 0 and "not found" in bad.output and "embed.0" in bad.output
    assert not list((tmp_path / "run" / "activations").glob(".*tmp"))


def test_spur_activations_on_a_read_only_run_is_one_sentence(act_plugins, spur_tiny_config, tmp_path, spur_read_only):
    """Issue 25, item 5: the run folder (and its activations/ folder, for the second call)
    cannot be written: one line naming the folder, nothing computed, no traceback."""
    run_pipeline(spur_tiny_config(), tmp_path / "run", act_plugins, log=lambda m: None)
    (tmp_path / "run" / "activations").mkdir()
    spur_read_only(tmp_path / "run")
    spurcore_activations.spurcore_register_commands(cli)
    for where in (tmp_path / "run" / "activations", tmp_path / "run" / "new"):
        args = [] if where.name == "activations" else ["--out", str(where / "acts.h5")]
        result = CliRunner().invoke(cli, ["activations", str(tmp_path / "run"), "--module", "embed", "--quiet", *args],
                                    obj={"manager": act_plugins, "plugin_args": []})
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.startswith(f"Error: {where}: cannot write (") and "read-only" in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
