"""TensorBoard event files of tiny runs, read back with tensorboard's own EventAccumulator."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import spurcore_tensorboard
from spurcore.api import ConfigError, run_pipeline
from spurcore_tracking.testing import Interrupt, interrupted, recorded

GROUPS = {"neg/off": "neg_off", "neg/on": "neg_on", "pos/off": "pos_off", "pos/on": "pos_on"}


@pytest.fixture
def tb_plugins(spur_plugins, spur_register_plugin):
    spur_register_plugin(spurcore_tensorboard, "tensorboard")
    return spur_plugins


def events(run_dir, logdir="tensorboard"):
    accumulator = EventAccumulator(str(run_dir / logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def series(accumulator, tag):
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def same(logged, expected):
    """(step, value) pairs: the same steps, values equal up to TensorBoard's float32."""
    return [s for s, _ in logged] == [s for s, _ in expected] and [v for _, v in logged] == pytest.approx(
        [v for _, v in expected], rel=1e-6)


def test_every_epoch_split_and_group_is_a_scalar_and_the_run_is_unchanged(tb_plugins, spur_tiny_config, tmp_path):
    config = spur_tiny_config(settings={"tensorboard": {}})
    summary = run_pipeline(config, tmp_path / "run", tb_plugins, log=lambda m: None)
    plain = run_pipeline(spur_tiny_config(), tmp_path / "plain", tb_plugins, log=lambda m: None)
    assert summary == plain and not (tmp_path / "plain" / "tensorboard").exists()

    acc = events(tmp_path / "run")
    rows = recorded(tmp_path / "run")
    for split in ("train", "val", "test"):
        for metric in ("avg_acc", "worst_group_acc", "worst_class_acc"):
            assert same(series(acc, f"{split}/{metric}"),
                [(e, rows[("0-erm", e, split)][metric]) for e in (1, 2, 3)])
        for group, tag in GROUPS.items():
            assert same(series(acc, f"{split}/group_acc/{tag}"),
                [(e, rows[("0-erm", e, split)]["group_acc"][group]) for e in (1, 2, 3)])
    assert same(series(acc, "train_loss"), [(e, rows[("0-erm", e, "val")]["train_loss"]) for e in (1, 2, 3)])
    assert series(acc, "epoch") == [(1, 1), (2, 2), (3, 3)]
    selected = summary["selected"]["epoch"]
    assert series(acc, "selected_epoch") == [(3, selected)]
    assert same(series(acc, "final/test/worst_group_acc"), [(3, summary["metrics"]["test"]["worst_group_acc"])])

    assert {"figures/group_acc", "figures/group_acc_epochs"} <= set(acc.Tags()["images"])
    assert acc.Images("figures/group_acc")[0].width > 100
    text = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert "[train]" in text["config/text_summary"] and "lr = 0.01" in text["config/text_summary"]
    assert json.loads(text["summary/text_summary"].strip("`json\n")) == summary
    assert "worst" in text["report/text_summary"].lower()

    hparams = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.lr"].number_value == 0.01 and start.hparams["stages.0.method"].string_value == "erm"
    assert start.hparams["seed"].number_value == 0
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert "final/test/worst_group_acc" in {m.name.tag for m in experiment.metric_infos}


def test_stages_follow_each_other_on_the_step_axis(tb_plugins, spur_tiny_config, tmp_path):
    config = spur_tiny_config(settings={"tensorboard": {"logdir": "tb/events"}},
                              stages=[{"method": "erm"}, {"method": "tiny-refit"}])
    run_pipeline(config, tmp_path / "run", tb_plugins, log=lambda m: None)
    acc = events(tmp_path / "run", "tb/events")
    assert series(acc, "stage") == [(1, 0), (2, 0), (3, 0), (4, 1)]
    assert series(acc, "epoch") == [(1, 1), (2, 2), (3, 3), (4, 0)]
    assert [step for step, _ in series(acc, "selected_epoch")] == [3, 4]
    assert [step for step, _ in series(acc, "train_loss")] == [1, 2, 3]  # a post-hoc stage has no loss
    rows = recorded(tmp_path / "run")
    assert same(series(acc, "test/avg_acc")[-1:], [(4, rows[("1-tiny-refit", 0, "test")]["avg_acc"])])


@pytest.mark.parametrize("during", ["evaluation", "epoch_end"])
def test_a_resumed_run_logs_every_step_once(tb_plugins, spur_tiny_config, tmp_path, during):
    config = spur_tiny_config(settings={"tensorboard": {}})
    interrupted(config, tmp_path / "run", tb_plugins, Interrupt(epoch=2, during=during))
    logged_before = [step for step, _ in series(events(tmp_path / "run"), "epoch")]
    assert logged_before == [1]  # epoch 2 was cut in evaluation, or checkpointed and never logged
    summary = run_pipeline(config, tmp_path / "run", tb_plugins, resume=True, log=lambda m: None)
    acc = events(tmp_path / "run")
    rows = recorded(tmp_path / "run")
    assert series(acc, "epoch") == [(1, 1), (2, 2), (3, 3)]
    assert same(series(acc, "test/group_acc/pos_on"),
        [(e, rows[("0-erm", e, "test")]["group_acc"]["pos/on"]) for e in (1, 2, 3)])
    assert series(acc, "selected_epoch") == [(3, summary["selected"]["epoch"])]
    assert len(acc.Tensors("config/text_summary")) == 1


def test_steps_an_earlier_process_logged_past_the_resume_point_are_purged(tb_plugins, spur_tiny_config, tmp_path):
    config = spur_tiny_config(settings={"tensorboard": {}})
    interrupted(config, tmp_path / "run", tb_plugins, Interrupt(epoch=2, during="epoch_end"))
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "run" / "tensorboard")) as stray:  # half of epoch 2, as a kill may leave it
        stray.add_scalar("test/avg_acc", -1.0, 2)
    run_pipeline(config, tmp_path / "run", tb_plugins, resume=True, log=lambda m: None)
    rows = recorded(tmp_path / "run")
    assert same(series(events(tmp_path / "run"), "test/avg_acc"),
                [(e, rows[("0-erm", e, "test")]["avg_acc"]) for e in (1, 2, 3)])


def test_an_entry_that_failed_to_write_is_written_at_the_next_epoch_and_nothing_twice(tb_plugins, spur_tiny_config,
                                                                                      tmp_path, monkeypatch):
    from spurcore_tensorboard.writer import TensorBoardRun

    write, calls = TensorBoardRun.log, []

    def flaky(self, entry):
        calls.append(entry.step)
        if len(calls) == 2:
            raise OSError("disk full")
        write(self, entry)

    monkeypatch.setattr(TensorBoardRun, "log", flaky)
    said = []
    run_pipeline(spur_tiny_config(settings={"tensorboard": {}}), tmp_path / "run", tb_plugins, log=said.append)
    assert calls[:4] == [1, 2, 2, 3] and any("tensorboard: could not log (OSError: disk full)" in s for s in said)
    assert series(events(tmp_path / "run"), "epoch") == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("bad, message", [
    ({"logdirr": "x"}, "settings.tensorboard.logdirr: unknown key (did you mean 'logdir'?)"),
    ({"logdir": "/tmp/elsewhere"}, "settings.tensorboard.logdir: must be a folder inside the run directory"),
    ({"logdir": "../up"}, "settings.tensorboard.logdir: must be a folder inside the run directory"),
])
def test_bad_settings_stop_the_run_before_it_writes_anything(tb_plugins, spur_tiny_config, tmp_path, bad, message):
    with pytest.raises(ConfigError) as info:
        run_pipeline(spur_tiny_config(settings={"tensorboard": bad}), tmp_path / "run", tb_plugins, log=lambda m: None)
    assert message in str(info.value)
    assert not (tmp_path / "run").exists()
