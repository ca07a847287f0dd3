"""Reading a finished run back: its stages, epochs and models, through `open_run`."""

from __future__ import annotations

import pytest
import torch

from spurcore.finished import FinishedRunError
from spurcore.finished import open_run
from spurcore.runner import run_pipeline


@pytest.fixture
def finished(tmp_path, spur_plugins, spur_tiny_config):
    config = spur_tiny_config(train={"epochs": 3, "batch_size": 32, "lr": 0.01},
                         stages=[{"method": "erm"}, {"method": "erm", "name": "again", "train": {"epochs": 2}}])
    summary = run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda m: None)
    return open_run(tmp_path / "run", spur_plugins), summary


def test_stages_say_their_epochs_and_the_selected_one(finished):
    run, summary = finished
    assert [(s.index, s.key, s.name, s.method, s.kind, s.epochs) for s in run.stages] == [
        (0, "0-erm", "erm", "erm", "train", (1, 2, 3)), (1, "1-again", "again", "erm", "train", (1, 2))]
    assert [s.selected for s in run.stages] == [s["selected"]["epoch"] for s in summary["stages"]]
    assert run.stage("again") is run.stage(-1) is run.stage("1-again") and run.stages[1].train.epochs == 2


def test_epochs_resolve_by_name_or_number_and_wrong_ones_say_what_exists(finished):
    run, summary = finished
    assert run.resolve_epoch(0, "last") == 3
    assert run.resolve_epoch(0, "selected") == summary["stages"][0]["selected"]["epoch"]
    assert run.resolve_epoch("again", 1) == 1
    with pytest.raises(FinishedRunError, match=r"stage '0-erm' has no checkpoint for epoch 7 \(it has 1, 2, 3"):
        run.resolve_epoch(0, 7)
    with pytest.raises(FinishedRunError, match=r"stage 5: the run has 2 stage\(s\)"):
        run.stage(5)
    with pytest.raises(FinishedRunError, match=r"no stage 'dfr' \(stages: 0-erm, 1-again\)"):
        run.stage("dfr")


def test_models_and_weights_are_those_of_the_checkpoints(finished):
    run, _ = finished
    model = run.load_model(0, 2)
    weights = run.load_weights(0, 2)
    assert all(torch.equal(model.state_dict()[k].cpu(), v) for k, v in weights.items())
    assert not model.training
    last = run.load_model()
    assert torch.equal(last.head.weight, run.load_model(-1, "selected").head.weight)
