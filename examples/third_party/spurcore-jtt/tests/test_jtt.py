"""JTT against spurcore's test kit, as any third-party plugin would test itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import spurcore_jtt
from spurcore import hookimpl
from spurcore.api import open_run, predict, run_pipeline
from spurcore.testing import mitigation_conformance

IDENTIFY = {"method": "erm", "name": "identify", "train": {"epochs": 1}}

TestConformance = mitigation_conformance("jtt", plugin=spurcore_jtt, before=[IDENTIFY], options={"upweight": 5})


class Watch:
    """Records the JTT stage's first weights and every training index it is fed."""

    def __init__(self):
        self.first = None
        self.fed = {}

    @hookimpl
    def spurcore_epoch_start(self, run, stage, epoch):
        if stage.name == "jtt" and epoch == 1:
            self.first = {k: v.clone() for k, v in stage.model.state_dict().items()}
            self.initial = run.initial_model().state_dict()

    @hookimpl
    def spurcore_batch_end(self, stage, epoch, batch):
        if stage.name == "jtt":
            self.fed.setdefault(epoch, []).extend(batch.index.tolist())


@pytest.fixture
def jtt_run(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    spur_register_plugin(spurcore_jtt, "jtt")
    watch = spur_register_plugin(Watch(), "watch")
    config = spur_tiny_config(selector="val-worst-class", stages=[IDENTIFY, {"method": "jtt", "options": {"upweight": 3}}],
                         train={"epochs": 2, "batch_size": 32, "lr": 0.01})
    run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda m: None)
    return tmp_path / "run", watch


def test_error_set_is_what_the_identification_model_gets_wrong(jtt_run, spur_plugins):
    out, _ = jtt_run
    record = json.loads((out / "checkpoints" / "1-jtt" / "jtt_errors.json").read_text())
    reopened = open_run(out, spur_plugins)
    identify = reopened.load_model(0)
    train = reopened.data.splits["train"]
    wrong = np.flatnonzero(predict(identify, train, reopened.device).argmax(1) != train.y)
    assert record["errors"] == wrong.tolist()
    assert 0 < record["n_errors"] < record["n_train"] == 200


def test_each_error_appears_one_plus_upweight_times_per_epoch(jtt_run):
    out, watch = jtt_run
    errors = json.loads((out / "checkpoints" / "1-jtt" / "jtt_errors.json").read_text())["errors"]
    for epoch in (1, 2):
        counts = np.bincount(watch.fed[epoch], minlength=200)
        expected = np.ones(200, dtype=int)
        expected[errors] = 4
        assert counts.tolist() == expected.tolist()
    assert watch.fed[1] != watch.fed[2]  # reshuffled every epoch


def test_final_model_is_retrained_from_the_initial_weights(jtt_run):
    _, watch = jtt_run
    assert watch.first.keys() == watch.initial.keys()
    assert all(torch.equal(watch.first[k], watch.initial[k]) for k in watch.first)


def test_upsampled_order_is_reproducible_from_the_generator():
    errors = np.array([1, 4])
    a = spurcore_jtt.upsampled_order(6, errors, 2, torch.Generator().manual_seed(0))
    b = spurcore_jtt.upsampled_order(6, errors, 2, torch.Generator().manual_seed(0))
    assert a.tolist() == b.tolist() and sorted(a.tolist()) == [0, 1, 1, 1, 2, 3, 4, 4, 4, 5]


def test_without_an_identification_stage_it_says_what_to_add(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    spur_register_plugin(spurcore_jtt, "jtt")
    with pytest.raises(spurcore_jtt.JTTError, match="put an ERM stage before it"):
        run_pipeline(spur_tiny_config(stages=[{"method": "jtt"}]), tmp_path / "run", spur_plugins, log=lambda m: None)


def test_identification_epoch_takes_the_errors_of_that_epoch_of_the_init_run(spur_plugins, spur_register_plugin, spur_tiny_config,
                                                                              tmp_path):
    spur_register_plugin(spurcore_jtt, "jtt")
    erm = spur_tiny_config(train={"epochs": 3, "batch_size": 32, "lr": 0.01})
    run_pipeline(erm, tmp_path / "erm", spur_plugins, log=lambda m: None)
    stages = [{"method": "jtt", "options": {"upweight": 3, "identification_epoch": 1}, "train": {"epochs": 1}}]
    run_pipeline(spur_tiny_config(stages=stages, init={"run": str(tmp_path / "erm")}), tmp_path / "jtt", spur_plugins,
                 log=lambda m: None)
    record = json.loads((tmp_path / "jtt" / "checkpoints" / "0-jtt" / "jtt_errors.json").read_text())
    reopened = open_run(tmp_path / "erm", spur_plugins)
    train = reopened.data.splits["train"]
    wrong = np.flatnonzero(predict(reopened.load_model(0, 1), train, reopened.device).argmax(1) != train.y)
    assert record["identification_epoch"] == 1 and record["errors"] == wrong.tolist() and len(wrong) > 0
    with pytest.raises(spurcore_jtt.JTTError, match="identification_epoch = 1 names an epoch of the \\[init\\] run"):
        run_pipeline(spur_tiny_config(stages=[IDENTIFY, *stages]), tmp_path / "no-init", spur_plugins, log=lambda m: None)


def test_started_from_an_init_run_it_retrains_from_that_runs_initialization(spur_plugins, spur_register_plugin,
                                                                            spur_tiny_config, tmp_path):
    """A sweep starts JTT from the ERM run ([init]): the final model must restart from the weights
    that ERM run started from, as in the paper, not continue from the ERM model it identified with."""
    spur_register_plugin(spurcore_jtt, "jtt")
    watch = spur_register_plugin(Watch(), "watch")
    run_pipeline(spur_tiny_config(train={"epochs": 2, "batch_size": 32, "lr": 0.01}), tmp_path / "erm", spur_plugins,
                 log=lambda m: None)
    stages = [{"method": "jtt", "options": {"upweight": 3}, "train": {"epochs": 1}}]
    run_pipeline(spur_tiny_config(stages=stages, init={"run": str(tmp_path / "erm")}), tmp_path / "jtt", spur_plugins,
                 log=lambda m: None)
    erm = open_run(tmp_path / "erm", spur_plugins)
    started = erm.initial_model().state_dict()
    trained = erm.load_model(0).state_dict()
    assert all(torch.equal(watch.first[k], started[k].cpu()) for k in started)
    assert not all(torch.equal(watch.first[k], trained[k].cpu()) for k in trained)
