"""Each baseline's stage object doing what makes it the method: the orders it draws, the weights
and margins of its loss, what it mixes and penalises, and what the last-layer methods keep."""

from __future__ import annotations

import inspect
import json
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spurcore_baselines
from spurcore import hookimpl
from spurcore.api import Batch, Device, RunDir, build_model, run_pipeline
from spurcore.testing import MLPOptions, OnDevice, TinyOptions, make_mlp, make_tiny
from spurcore_baselines import effective_number, inverse_frequency, ldam_margins
from spurcore_baselines.invariance import IRM, Matching, environments, irm_penalty
from spurcore_baselines.mixing import LISA, Mixup, mixup_loss
from spurcore_baselines.sampling import Resample, Subsample
from spurcore_baselines.weighted import LDAM, BalancedSoftmax, ClassBalanced, Reweight, reweighted_epoch
from spurcore_baselines.options import (
    EffectiveNumberOptions, IRMOptions, LDAMOptions, LISAOptions, MatchingOptions, MixupOptions, SubsampleOptions,
)


def fake_run(data, tmp_path=None, seed=0):
    """What a stage object reads of its run, on the CPU; the pipeline starts from a fresh MLP."""
    out = types.SimpleNamespace(stage_dir=lambda key: tmp_path)
    return types.SimpleNamespace(data=data, config=types.SimpleNamespace(seed=seed, init=None), out=out,
                                 log=lambda m: None, device=Device.from_config("cpu", amp=False),
                                 initial_model=lambda: build_model(make_mlp(MLPOptions(), data), data.n_classes))


STAGE = types.SimpleNamespace(index=0, key="0-test", train=types.SimpleNamespace(epochs=10))


def batch_of(data, rows):
    split, index = data.splits["train"], torch.as_tensor(rows)
    a = torch.from_numpy(split.a[index.numpy()]) if split.a is not None else torch.full((len(index),), -1)
    return Batch(index, split.inputs[index], torch.from_numpy(split.y[index.numpy()]), a)


@pytest.fixture
def data():
    return make_tiny(TinyOptions(n_train=2000))


@pytest.fixture
def model(data):
    torch.manual_seed(0)
    return build_model(make_mlp(MLPOptions(), data), data.n_classes)


def test_resample_draws_every_group_equally_often(data):
    method = Resample(None, by="group")
    method.spurcore_stage_start(fake_run(data))
    order = method.spurcore_train_sampler(torch.Generator().manual_seed(0)).numpy()
    counts = np.bincount(data.groups("train")[order], minlength=4)
    assert len(order) == 2000 and np.bincount(data.groups("train")).min() < 150  # rare groups ...
    assert counts.min() > 420 and counts.max() < 580  # ... drawn as often as the others (500 each)


def test_class_resampling_balances_classes_without_attribute_labels():
    data = make_tiny(TinyOptions(n_train=2000, attributes=False))
    labels = data.splits["train"].y
    keep = np.flatnonzero((labels == 1) | (np.arange(2000) % 4 == 0))  # class 0 cut to a quarter
    data.splits["train"] = type(data.splits["train"])(name="train", inputs=data.splits["train"].inputs[keep],
                                                      y=labels[keep], a=None)
    method = Resample(None, by="class")
    method.spurcore_stage_start(fake_run(data))
    order = method.spurcore_train_sampler(torch.Generator().manual_seed(1)).numpy()
    share = np.bincount(data.splits["train"].y[order], minlength=2) / len(order)
    assert np.bincount(data.splits["train"].y).min() < 0.3 * len(keep)
    assert abs(share[0] - 0.5) < 0.04


def test_subg_trains_on_one_group_balanced_subsample_reshuffled_every_epoch(data, tmp_path):
    method = Subsample(SubsampleOptions(epoch="subset"), by="group")
    method.spurcore_stage_start(fake_run(data, tmp_path), STAGE)
    groups = data.groups("train")
    smallest = np.bincount(groups).min()
    first = method.spurcore_train_sampler(torch.Generator().manual_seed(1)).numpy()
    second = method.spurcore_train_sampler(torch.Generator().manual_seed(2)).numpy()
    assert np.bincount(groups[first], minlength=4).tolist() == [smallest] * 4
    assert len(set(first)) == len(first) and sorted(first) == sorted(second) and first.tolist() != second.tolist()
    record = json.loads((tmp_path / "subsample.json").read_text())
    assert record["examples"] == 4 * smallest and record["per_label"] == [smallest] * 4
    other = Subsample(SubsampleOptions(epoch="subset"), by="group")
    other.spurcore_stage_start(fake_run(data, tmp_path, seed=1), STAGE)
    assert other.subset.tolist() != method.subset.tolist()  # drawn from the run's seed


def test_an_epoch_of_the_subsample_is_as_long_as_erms_by_default(data, tmp_path):
    method = Subsample(SubsampleOptions(), by="group")
    method.spurcore_stage_start(fake_run(data, tmp_path), STAGE)
    n, subset = len(data.splits["train"].y), len(method.subset)
    order = method.spurcore_train_sampler(torch.Generator().manual_seed(1)).numpy()
    assert len(order) == n and n > 3 * subset and set(order) == set(method.subset.tolist())
    passes = [order[i:i + subset] for i in range(0, n - subset + 1, subset)]
    assert all(sorted(p) == sorted(method.subset.tolist()) for p in passes)  # every pass is the whole subset
    assert passes[0].tolist() != passes[1].tolist()  # reshuffled each pass
    tail = order[len(passes) * subset:]
    assert len(set(tail)) == len(tail) == n - len(passes) * subset  # the last pass, cut short, repeats nothing


def test_suby_cuts_every_class_to_the_rarest_ones_count(data, tmp_path):
    method = Subsample(SubsampleOptions(), by="class")
    method.spurcore_stage_start(fake_run(data, tmp_path), STAGE)
    y = data.splits["train"].y
    assert np.bincount(y[method.subset]).tolist() == [np.bincount(y).min()] * 2


@pytest.mark.parametrize("method, scheme", [
    (Reweight(None, by="group"), lambda c: inverse_frequency(c)),
    (Reweight(None, by="group", power=0.5), lambda c: inverse_frequency(c, 0.5)),
    (Reweight(None, by="class"), lambda c: inverse_frequency(c)),
    (ClassBalanced(EffectiveNumberOptions(beta=0.99)), lambda c: effective_number(c, 0.99)),
])
def test_a_reweighted_loss_weights_each_example_by_its_labels_weight(method, scheme, data, model):
    method.spurcore_stage_start(fake_run(data))
    labels = data.groups("train") if method.by == "group" else data.splits["train"].y
    weights = scheme(np.bincount(labels))
    batch = batch_of(data, np.arange(0, 2000, 37))
    ce = F.cross_entropy(model(batch.x), batch.y, reduction="none")
    expected = (ce * torch.as_tensor(weights[labels[batch.index.numpy()]], dtype=torch.float32)).mean()
    assert torch.allclose(method.spurcore_train_loss(model=model, batch=batch), expected)


def test_balanced_softmax_trains_on_the_logits_plus_the_log_class_priors(data, model):
    method = BalancedSoftmax(None)
    method.spurcore_stage_start(fake_run(data))
    counts = np.bincount(data.splits["train"].y)
    batch = batch_of(data, np.arange(64))
    priors = torch.log(torch.as_tensor(counts / counts.sum(), dtype=torch.float32))
    expected = F.cross_entropy(model(batch.x) + priors, batch.y)
    assert torch.allclose(method.spurcore_train_loss(model=model, batch=batch), expected)


def test_ldam_takes_the_margins_off_then_defers_its_reweighting_to_the_last_epochs(data, model):
    method = LDAM(LDAMOptions(max_margin=0.5, scale=10.0, drw_start=0.8))
    method.spurcore_stage_start(fake_run(data))
    counts = np.bincount(data.splits["train"].y)
    batch = batch_of(data, np.arange(64))
    logits = model(batch.x)
    margins = ldam_margins(counts, 0.5)
    adjusted = 10.0 * (logits - F.one_hot(batch.y, 2) * margins[batch.y][:, None])
    plain = F.cross_entropy(adjusted, batch.y)
    method.spurcore_epoch_start(stage=STAGE, epoch=8)
    assert torch.allclose(method.spurcore_train_loss(model=model, batch=batch), plain)
    method.spurcore_epoch_start(stage=STAGE, epoch=9)
    weights = torch.as_tensor(effective_number(counts, 0.9999), dtype=torch.float32)
    assert torch.allclose(method.spurcore_train_loss(model=model, batch=batch),
                          F.cross_entropy(adjusted, batch.y, weight=weights))  # the weighted mean, as the paper's code


def test_the_deferred_reweighting_starts_after_its_fraction_of_the_epochs():
    assert [reweighted_epoch(e, 10, 0.8) for e in range(1, 11)] == [False] * 8 + [True] * 2
    assert not any(reweighted_epoch(e, 10, 1.0) for e in range(1, 11))
    assert all(reweighted_epoch(e, 10, 0.0) for e in range(1, 11))


def test_mixup_mixes_inputs_and_labels_with_one_lambda_per_batch(data, model):
    batch = batch_of(data, np.arange(32))
    partner, one = torch.randperm(32), torch.ones(32)
    assert torch.allclose(mixup_loss(model, batch, partner, one, 2), F.cross_entropy(model(batch.x), batch.y))
    lam = torch.full((32,), 0.3)
    mixed = 0.3 * batch.x + 0.7 * batch.x[partner]
    expected = (0.3 * F.cross_entropy(model(mixed), batch.y) + 0.7 * F.cross_entropy(model(mixed), batch.y[partner]))
    assert torch.allclose(mixup_loss(model, batch, partner, lam, 2), expected)
    method = Mixup(MixupOptions(alpha=0.2))
    run = fake_run(data)
    losses = []
    for _ in range(2):  # the same epoch draws the same mixtures
        method.spurcore_epoch_start(run=run, stage=STAGE, epoch=3)
        losses.append(method.spurcore_train_loss(run=run, model=model, batch=batch))
    assert torch.equal(losses[0], losses[1])


def test_lisa_mixes_only_across_attributes_within_a_class_when_it_selects_so(data, model, monkeypatch):
    seen = []
    monkeypatch.setattr("spurcore_baselines.mixing.mixup_loss",
                        lambda model, batch, partner, lam, n: seen.append(partner) or torch.zeros(()))
    method = LISA(LISAOptions(p_select=1.0))
    run = fake_run(data)
    method.spurcore_stage_start(run=run)
    method.spurcore_epoch_start(run=run, stage=STAGE, epoch=1)
    batch = batch_of(data, np.arange(128))
    method.spurcore_train_loss(run=run, model=model, batch=batch)
    y, a, p = batch.y.numpy(), batch.a.numpy(), seen[0].numpy()
    moved = p != np.arange(128)
    assert moved.mean() > 0.9 and np.all(y[p] == y) and np.all(a[p][moved] != a[moved])


def test_irm_weights_its_penalty_one_until_annealed_then_divides_by_the_weight(data, model):
    method = IRM(IRMOptions(penalty=1000.0, anneal_steps=2))
    method.spurcore_stage_start(fake_run(data))
    batch = batch_of(data, np.arange(64))
    logits = model(batch.x)
    groups = environments(batch.a)
    risk = sum(F.cross_entropy(logits[g], batch.y[g]) for g in groups) / len(groups)
    penalty = sum(irm_penalty(logits[g], batch.y[g]) for g in groups) / len(groups)
    losses = [method.spurcore_train_loss(model=model, batch=batch) for _ in range(3)]
    assert torch.allclose(losses[0], risk + penalty) and torch.allclose(losses[1], losses[0])
    assert torch.allclose(losses[2], (risk + 1000.0 * penalty) / 1000.0)
    restored = IRM(IRMOptions(penalty=1000.0, anneal_steps=2))
    restored.load_state_dict(method.state_dict())
    assert restored.steps == 3


@pytest.mark.parametrize("kernel", ["coral", "mmd"])
def test_feature_matching_adds_its_penalty_between_the_attribute_values(kernel, data, model):
    batch = batch_of(data, np.arange(64))
    ce = F.cross_entropy(model(batch.x), batch.y)
    free = Matching(MatchingOptions(penalty=0.0), kernel)
    free.spurcore_stage_start(fake_run(data))
    assert torch.allclose(free.spurcore_train_loss(model=model, batch=batch), ce)
    method = Matching(MatchingOptions(penalty=2.0), kernel)
    method.spurcore_stage_start(fake_run(data))
    features = model.features(batch.x)
    on, off = features[batch.a == 1], features[batch.a == 0]
    distance = free.distance(off, on)
    assert distance > 0
    assert torch.allclose(method.spurcore_train_loss(model=model, batch=batch), ce + 2.0 * distance)


class EmbedMode:
    """Records whether the backbone trains (batch-norm statistics would move) during each step."""

    def __init__(self):
        self.training = []

    @hookimpl
    def spurcore_batch_end(self, stage):
        if stage.index == 1:
            self.training.append(stage.model.embed.training)


@pytest.mark.parametrize("method", ["crt", "crt-class", "reweight-crt"])
def test_last_layer_retraining_keeps_the_features_and_retrains_the_head(method, spur_plugins, spur_register_plugin,
                                                                       spur_tiny_config, tmp_path):
    spur_register_plugin(spurcore_baselines, "baselines")
    probe = spur_register_plugin(EmbedMode(), "probe")
    config = spur_tiny_config(stages=[{"method": "erm", "train": {"epochs": 2}},
                                      {"method": method, "train": {"epochs": 2}}])
    summary = run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda m: None)
    folder = RunDir(tmp_path / "run")
    erm = folder.load_checkpoint("0-erm", summary["stages"][0]["selected"]["epoch"])["model"]
    retrained = folder.load_checkpoint(f"1-{method}", 2)["model"]
    assert [k for k in erm if not torch.equal(erm[k], retrained[k])] == ["head.weight", "head.bias"]
    assert probe.training and not any(probe.training)  # the backbone in eval mode at every step


def test_afr_refits_the_head_and_a_strong_pull_keeps_the_incoming_one(spur_plugins, spur_register_plugin,
                                                                     spur_tiny_config, tmp_path):
    spur_register_plugin(spurcore_baselines, "baselines")
    heads = {}
    for reg in (0.0, 1e6):
        config = spur_tiny_config(stages=[{"method": "erm", "train": {"epochs": 2}},
                                          {"method": "afr", "options": {"reg": reg, "gamma": 4.0}}])
        out = tmp_path / f"reg{reg}"
        summary = run_pipeline(config, out, spur_plugins, log=lambda m: None)
        folder = RunDir(out)
        erm = folder.load_checkpoint("0-erm", summary["stages"][0]["selected"]["epoch"])["model"]
        heads[reg] = folder.load_checkpoint("1-afr", 0)["model"]["head.weight"]
        record = json.loads((folder.stage_dir("1-afr") / "afr.json").read_text())
        assert record["fit_split"] == "val" and record["examples"] == 120
        assert 0 < record["effective_examples"] <= 120
    assert torch.allclose(heads[1e6], erm["head.weight"], atol=1e-3)
    assert not torch.allclose(heads[0.0], erm["head.weight"], atol=1e-2)


def call(hook, **available):
    """A hook implementation called with the arguments it names, as pluggy calls it."""
    return hook(**{name: available[name] for name in inspect.signature(hook).parameters})


TRAINING = sorted(spec.name for spec in spurcore_baselines.specs() if spec.kind == "train")


@pytest.mark.parametrize("name", TRAINING)
def test_every_training_baseline_is_device_safe(name, data, model, tmp_path):
    """Its hooks on a batch whose tensors behave as a GPU's: per-example data indexed on the CPU
    with batch.index.cpu() and moved, never read by numpy from the batch."""
    spec = next(s for s in spurcore_baselines.specs() if s.name == name)
    method = spec.factory(None if spec.options is None else spec.options())
    run = fake_run(data, tmp_path)
    stage = types.SimpleNamespace(index=1, key=f"1-{name}", train=types.SimpleNamespace(epochs=2, eval_batch_size=512),
                                  model=model)
    available = {"run": run, "stage": stage, "epoch": 2, "model": model, "generator": torch.Generator().manual_seed(0)}
    for hook in ("spurcore_stage_start", "spurcore_epoch_start", "spurcore_train_sampler"):
        if hasattr(method, hook):
            call(getattr(method, hook), **available)
    plain = batch_of(data, np.arange(0, 128, 2))
    batch = Batch(*(t.as_subclass(OnDevice) for t in (plain.index, plain.x, plain.y, plain.a)))
    if hasattr(method, "spurcore_train_loss"):  # the samplers leave the loss to the kernel
        loss = call(method.spurcore_train_loss, **available, batch=batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
