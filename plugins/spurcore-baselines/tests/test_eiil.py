"""EIIL: the environments it infers from a reference model whose errors are planted, the groups
Group DRO then trains over, and whole runs that start it after ERM and from an ERM run."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spurcore_baselines
from spurcore.api import Batch, RunDir, open_run, run_pipeline
from spurcore.testing import TinyOptions, make_tiny
from spurcore_baselines import EIILOptions, environment_penalties, infer_environments
from spurcore_baselines.inferred import EIIL, EIILError, scale_gradients

from test_stages import fake_run

N, PLANTED = 400, np.arange(0, 400, 10)  # the reference model gets every tenth example wrong


def planted_logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A binary reference model's logits: each example's class ahead by a random margin, except
    on PLANTED, where the other class is ahead."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N)
    margin = rng.uniform(0.5, 4.0, N)
    margin[PLANTED] *= -1
    logits = np.zeros((N, 2))
    logits[np.arange(N), y] = margin
    return torch.from_numpy(logits), torch.from_numpy(y)


def test_scale_gradients_are_those_of_the_risk_with_respect_to_a_scale_on_the_logits():
    logits, y = torch.randn(50, 3, dtype=torch.float64), torch.randint(0, 3, (50,))
    scale = torch.ones((), dtype=torch.float64, requires_grad=True)
    autograd = [torch.autograd.grad(F.cross_entropy(logits[i:i + 1] * scale, y[i:i + 1]), scale)[0]
                for i in range(50)]
    assert torch.allclose(scale_gradients(logits, y), torch.stack(autograd))


def test_the_inferred_environments_put_the_reference_models_errors_apart():
    logits, y = planted_logits()
    environments = infer_environments(logits, y, 10000, 0.001, torch.Generator().manual_seed(0))
    errors = np.zeros(N, dtype=bool)
    errors[PLANTED] = True
    assert len(np.unique(environments[errors])) == 1 and len(np.unique(environments[~errors])) == 1
    assert environments[errors][0] != environments[~errors][0]
    gradients = scale_gradients(logits, y)
    inferred = environment_penalties(gradients, torch.from_numpy(1.0 - environments)).mean()
    rng = np.random.default_rng(1)
    for _ in range(20):  # random splits, the errors' share and balanced, are far less variant
        for share in (0.1, 0.5):
            random = torch.from_numpy((rng.random(N) < share).astype(np.float64))
            assert inferred > 5 * environment_penalties(gradients, random).mean()


class PlantedModel(torch.nn.Module):
    """A reference model that answers `planted_logits` by example index."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits.float())

    def forward(self, x, index=None):
        return self.logits[index.to(self.logits.device)]


@pytest.mark.parametrize("by, n_groups", [("environment-class", 4), ("environment", 2)])
def test_group_dro_trains_over_the_inferred_groups_from_the_starting_model(by, n_groups, tmp_path):
    data = make_tiny(TinyOptions(n_train=N))
    logits, y = planted_logits()
    train = data.splits["train"]
    data.splits["train"] = type(train)(name="train", inputs=train.inputs, y=y.numpy(), a=train.a)
    run = fake_run(data, tmp_path)
    stage = types.SimpleNamespace(index=1, key="1-eiil", model=PlantedModel(logits),
                                  train=types.SimpleNamespace(eval_batch_size=64))
    method = EIIL(EIILOptions(steps=3000, lr=0.01, groups=by, eta=1.0))
    method.spurcore_stage_start(run, stage)

    record = json.loads((tmp_path / "eiil.json").read_text())
    environments = np.array(record["environments"])
    minority = environments[PLANTED[0]]
    assert sorted(record["errors_per_environment"]) == [0, len(PLANTED)]
    expected = y.numpy() * 2 + environments if by == "environment-class" else environments
    assert np.array_equal(method.groups.numpy(), expected) and len(method.q) == n_groups
    assert not isinstance(stage.model, PlantedModel)  # retrained from the pipeline's starting model

    # one step on a batch whose loss is the planted errors': their groups' weights grow
    rows = np.arange(N)
    batch = Batch(torch.from_numpy(rows), train.inputs, y, torch.tensor(train.a))
    method.spurcore_train_loss(model=PlantedModel(logits), batch=batch)
    heavier = np.unique(expected[environments == minority])
    assert method.q[heavier].sum() > 0.5 + 0.1 * len(heavier)


def test_eiil_without_a_model_before_it_is_refused(tmp_path):
    data = make_tiny(TinyOptions(n_train=N))
    stage = types.SimpleNamespace(index=0, key="0-eiil", model=None, train=types.SimpleNamespace(eval_batch_size=64))
    with pytest.raises(EIILError, match="put an ERM stage before it"):
        EIIL(EIILOptions()).spurcore_stage_start(fake_run(data, tmp_path), stage)


def test_after_erm_and_from_an_erm_run_eiil_retrains_the_erm_runs_starting_weights(
        spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    spur_register_plugin(spurcore_baselines, "baselines")
    eiil = {"method": "eiil", "options": {"steps": 300, "lr": 0.01}, "train": {"epochs": 1}}
    erm = {"method": "erm", "train": {"epochs": 2}}
    run_pipeline(spur_tiny_config(stages=[erm, eiil]), tmp_path / "chain", spur_plugins, log=lambda m: None)
    run_pipeline(spur_tiny_config(stages=[erm]), tmp_path / "erm", spur_plugins, log=lambda m: None)
    summary = run_pipeline(spur_tiny_config(stages=[eiil], init={"run": str(tmp_path / "erm")}),
                           tmp_path / "from-erm", spur_plugins, log=lambda m: None)
    assert summary["stages"][0]["method"] == "eiil"

    start = open_run(tmp_path / "erm", spur_plugins).initial_model().state_dict()
    trained = RunDir(tmp_path / "erm").load_checkpoint("0-erm", 2)["model"]
    environments = []
    for folder, key in (("chain", "1-eiil"), ("from-erm", "0-eiil")):
        out = RunDir(tmp_path / folder)
        epoch0 = out.load_checkpoint(key, 0)["model"]  # the model the stage starts from
        assert all(torch.equal(epoch0[k].cpu(), start[k].cpu()) for k in start)
        assert not all(torch.equal(epoch0[k].cpu(), trained[k].cpu()) for k in trained)
        record = json.loads((out.stage_dir(key) / "eiil.json").read_text())
        assert sum(record["environment_sizes"]) == record["n_train"] == 200
        environments.append(record["environments"])
    assert environments[0] == environments[1]  # the same ERM model (same seed) in both: the same split
