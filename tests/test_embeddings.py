"""The embedding cache: extracted once per model, reused across stages and runs, rebuilt when
the checkpoint changes; and starting a pipeline from another run's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spurcore.embeddings
from spurcore import hookimpl
from spurcore.embeddings import extract
from spurcore.runner import RunError, open_run, run_pipeline
from spurcore.specs import MitigationSpec


class KeepHead:
    """A post-hoc method that records the embeddings it was given and keeps the head."""

    seen: list = []

    def __init__(self, options):
        pass

    @hookimpl
    def spurcore_posthoc_head(self, model, embeddings):
        KeepHead.seen.append(embeddings)
        head = nn.Linear(model.feature_dim, 2)
        head.load_state_dict(model.head.state_dict())
        return head


class Plugin:
    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="keep", kind="posthoc", factory=KeepHead)]


@pytest.fixture
def keep(spur_plugins):
    KeepHead.seen = []
    spur_plugins.register(Plugin(), "keep-plugin")
    return spur_plugins


def test_embeddings_are_extracted_once_and_reused_by_another_run(tmp_path, keep, spur_tiny_config, monkeypatch):
    logs = []
    first = run_pipeline(spur_tiny_config(stages=[{"method": "erm"}, {"method": "keep"}]), tmp_path / "a", keep,
                         log=logs.append)
    files = list((tmp_path / "a" / "embeddings").glob("*.h5"))
    assert len(files) == 1 and any("extracted to" in line for line in logs)
    reopened = open_run(tmp_path / "a", keep)
    direct = extract(reopened.load_model(0), reopened.data, reopened.device)
    for split in ("train", "val", "test"):
        assert np.allclose(KeepHead.seen[0][split].features, direct[split].features, atol=1e-6)
        assert KeepHead.seen[0][split].features.shape == (len(direct[split].y), 16)

    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction should have been skipped")

    monkeypatch.setattr(spurcore.embeddings, "extract", no_extraction)
    logs.clear()
    second = run_pipeline(spur_tiny_config(init={"run": str(tmp_path / "a"), "stage": 0}, stages=[{"method": "keep"}]),
                          tmp_path / "b", keep, log=logs.append)
    assert any(f"reused from {files[0]}" in line for line in logs)
    assert second["metrics"] == first["metrics"]  # same model, same head
    assert np.array_equal(KeepHead.seen[1]["val"].features, KeepHead.seen[0]["val"].features)


def test_a_changed_checkpoint_is_extracted_again(tmp_path, keep, spur_tiny_config):
    run_pipeline(spur_tiny_config(stages=[{"method": "erm"}, {"method": "keep"}]), tmp_path / "a", keep)
    selected = open_run(tmp_path / "a", keep).stage(0).selected
    other = 1 if selected != 1 else 2
    logs = []
    run_pipeline(spur_tiny_config(init={"run": str(tmp_path / "a"), "stage": 0, "epoch": other}, stages=[{"method": "keep"}]),
                 tmp_path / "b", keep, log=logs.append)
    assert any("extracted to" in line for line in logs)
    assert len(list((tmp_path / "a" / "embeddings").glob("*.h5"))) == 2


def test_init_starts_from_the_named_model_and_checks_it(tmp_path, keep, spur_tiny_config):
    run_pipeline(spur_tiny_config(train={"epochs": 2}), tmp_path / "a", keep)
    source = open_run(tmp_path / "a", keep).load_model(0, epoch=1)
    config = spur_tiny_config(init={"run": str(tmp_path / "a"), "epoch": 1}, train={"epochs": 1, "lr": 1e-9})
    run_pipeline(config, tmp_path / "b", keep)
    tuned = open_run(tmp_path / "b", keep).load_model(0, epoch=1)
    assert torch.allclose(tuned.head.weight, source.head.weight, atol=1e-6)  # lr ~ 0: unchanged
    with pytest.raises(RunError, match="post-hoc method; start with a training stage"):
        run_pipeline(spur_tiny_config(stages=[{"method": "keep"}]), tmp_path / "c", keep)
    with pytest.raises(RunError, match="not a run directory"):
        run_pipeline(spur_tiny_config(init={"run": str(tmp_path / "nowhere")}), tmp_path / "d", keep)
