"""LfF: the GCE gradient, the moving losses, the weights, and the stage with its biased network
trained, checkpointed and resumed beside the model and never part of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spurcore_lff
from spurcore.api import RunDir, open_run, run_pipeline
from spurcore.testing import mitigation_conformance
from spurcore_lff import LfFOptions, MovingLoss, gce_loss, relative_difficulty

TestConformance = mitigation_conformance("lff", plugin=spurcore_lff)


def test_gce_has_q_times_the_gradient_of_its_closed_form_as_in_the_authors_code():
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    q = 0.7
    gce_loss(logits, y, q).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    p_y = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    ((1 - p_y.pow(q)) / q).sum().backward()
    assert torch.allclose(ours.double(), q * logits.grad, atol=1e-6)


def test_moving_losses_take_the_first_value_then_average_and_normalise_per_class():
    moving = MovingLoss(torch.tensor([0, 0, 1, 1]), n_classes=2, alpha=0.7)
    moving.update(torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 2.0, 4.0, 8.0]))
    assert moving.values.tolist() == [1.0, 2.0, 4.0, 8.0]
    moving.update(torch.tensor([1, 3]), torch.tensor([4.0, 0.0]))
    assert torch.allclose(moving.values, torch.tensor([1.0, 0.7 * 2 + 0.3 * 4, 4.0, 0.7 * 8], dtype=torch.float64))
    # divided by the largest average of the example's own class
    assert torch.allclose(moving.normalized(torch.tensor([0, 1, 2, 3])),
                          torch.tensor([1 / 2.6, 1.0, 4 / 5.6, 1.0], dtype=torch.float64))
    restored = MovingLoss(torch.tensor([0, 0, 1, 1]), n_classes=2, alpha=0.7)
    restored.load_state_dict(moving.state_dict())
    assert torch.equal(restored.values, moving.values) and torch.equal(restored.seen, moving.seen)


def test_the_weight_is_large_where_the_biased_network_fails_and_the_model_does_not():
    w = relative_difficulty(torch.tensor([1.0, 0.1, 0.5]), torch.tensor([0.1, 1.0, 0.5]))
    assert w[0] > 0.9 and w[1] < 0.1 and abs(float(w[2]) - 0.5) < 1e-6


def test_options_are_validated():
    with pytest.raises(ValueError, match="q"):
        LfFOptions(q=0)
    with pytest.raises(ValueError, match="alpha"):
        LfFOptions(alpha=1.5)


def test_the_biased_network_trains_beside_the_model_and_weights_the_minority_up(spur_plugins, spur_register_plugin,
                                                                                spur_tiny_config, tmp_path):
    spur_register_plugin(spurcore_lff, "lff")
    config = spur_tiny_config(stages=[{"method": "lff"}], train={"epochs": 10, "batch_size": 32, "lr": 0.01})
    run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda m: None)
    folder = RunDir(tmp_path / "run")
    first, last = folder.load_checkpoint("0-lff", 1), folder.load_checkpoint("0-lff", 10)
    # the biased network: its own weights and optimizer state in every checkpoint, trained, not in the model
    biased = last["auxiliary"]["biased"]
    assert set(biased) == {"module", "optimizer"} and biased["optimizer"]["state"]
    assert set(biased["module"]) == set(last["model"])  # a copy of the model's architecture ...
    assert not any(k.startswith("biased") for k in last["model"])  # ... and no part of the model
    key = next(iter(biased["module"]))
    assert not torch.equal(biased["module"][key], first["auxiliary"]["biased"]["module"][key])
    assert not torch.equal(biased["module"][key], last["model"][key])  # trained apart from the model
    # what tracers and later stages get is the model alone
    model = open_run(tmp_path / "run", spur_plugins).load_model(0)
    assert not any("biased" in name for name, _ in model.named_modules())
    # the moving losses in the last checkpoint: the biased network fails the examples that contradict the
    # spurious attribute (tiny: it agrees with the class on most of train) more than the model does, so
    # their weights W are larger than those of the examples that follow it
    data = spur_plugins.get("datasets", "tiny").build(spur_plugins.get("datasets", "tiny").options())
    split = data.splits["train"]
    labels = torch.tensor(split.y)
    moving = {}
    for name in ("biased", "debiased"):
        moving[name] = MovingLoss(labels, data.n_classes, 0.7)
        moving[name].load_state_dict(last["method"][name])
    everyone = torch.arange(len(split))
    w = relative_difficulty(moving["biased"].normalized(everyone), moving["debiased"].normalized(everyone)).numpy()
    conflicting = np.asarray(split.y) != np.asarray(split.a)
    assert 0.05 < conflicting.mean() < 0.2
    flips = torch.as_tensor(conflicting)
    assert moving["biased"].values[flips].mean() > 1.5 * moving["debiased"].values[flips].mean()
    assert w[conflicting].mean() > w[~conflicting].mean() + 0.15, (w[conflicting].mean(), w[~conflicting].mean())
