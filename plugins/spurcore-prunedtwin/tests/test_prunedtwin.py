"""Pruned-twin fine-tuning: mask, shared weights, NT-Xent, loss, and the stage in a pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import spurcore_prunedtwin as pt
from spurcore.api import Batch, SpurModel, open_run, pipeline_from_dict, run_pipeline
from spurcore.testing import TinyOptions, make_tiny, tiny_pipeline
from spurcore_tracer import NeuronIndex, magnitude, top_percent


def small_model(seed=0, hidden=16, n_classes=2):
    torch.manual_seed(seed)
    embed = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
    return SpurModel(embed, nn.Linear(hidden, n_classes), hidden)


def tiny_batch(n=32, seed=0):
    data = make_tiny(TinyOptions(n_train=n, seed=seed))
    split = data.splits["train"]
    idx = torch.arange(n)
    return data, Batch(idx, split.inputs, torch.tensor(split.y), torch.tensor(split.a))


@pytest.mark.parametrize("q, expected", [(0.0001, 1), (0.1, 4), (0.5, 16)])
def test_mask_covers_exactly_the_top_q_units_by_magnitude(q, expected):
    model = small_model()
    mask = pt.neuron_mask(model, q, "magnitude")
    index = NeuronIndex.of(model, exclude=["head"])
    assert index.total == 32 and len(mask) == expected == math.ceil(max(1, q * 32 - 1e-9))
    scores = magnitude(index)
    assert set(mask.selected) == set(top_percent(scores, 100 * q))
    chosen = scores[mask.selected]
    rest = np.delete(scores, mask.selected)
    assert chosen.min() >= rest.max()
    # the twin's masked units output 0 (seen as the input of the next module, after the mask's
    # hook has run); the others are untouched; outside the block nothing is masked
    x = torch.randn(5, 8)
    seen = {}
    after = {"embed.0": "embed.1", "embed.2": "embed.3"}
    hooks = [model.get_submodule(nxt).register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, i[0].detach()))
             for p, nxt in after.items()]
    mask.features(model, x)
    twin = dict(seen)
    model.features(x)
    for h in hooks:
        h.remove()
    by_path = {layer.path: units for layer, units in mask.by_layer.items()}
    assert set(by_path) <= set(after)
    for path, units in by_path.items():
        assert torch.all(twin[path][:, units] == 0)
        assert not torch.all(seen[path][:, units] == 0)
        if path == "embed.0":
            others = np.setdiff1d(np.arange(16), units)
            assert torch.equal(twin[path][:, others], seen[path][:, others])


def test_gradient_mask_uses_high_loss_examples_without_group_labels():
    model = small_model()
    data = make_tiny(TinyOptions(n_train=200, attributes=False))
    g = torch.Generator().manual_seed(0)
    batches, rows = pt.high_loss_batches(model, data.splits["train"], g, pool=64, sample=32)
    assert len(rows) == 32 and len(set(rows.tolist())) == 32
    mask = pt.neuron_mask(model, 0.1, "gradient", split=data.splits["train"], generator=g, pool=64, sample=32)
    assert len(mask) == 4


def test_smallest_weight_mask_zeroes_exactly_the_smallest_weights():
    model = small_model()
    mask = pt.smallest_weight_mask(model, 1.0)
    n = 8 * 16 + 16 * 16
    assert len(mask) == math.ceil(0.01 * n)
    flat = torch.cat([model.embed[0].weight.abs().flatten(), model.embed[2].weight.abs().flatten()])
    keep = torch.cat([mask.keep["embed.0.weight"].flatten(), mask.keep["embed.2.weight"].flatten()])
    assert flat[keep == 0].max() <= flat[keep == 1].min()


@pytest.mark.parametrize("kind", ["neurons", "weights"])
def test_a_step_on_the_twin_loss_changes_the_target_weights(kind):
    model = small_model()
    mask = pt.neuron_mask(model, 0.1, "magnitude") if kind == "neurons" else pt.smallest_weight_mask(model, 5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = len(list(model.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 8)
    loss = mask.features(model, x).pow(2).mean()  # a loss of the twin alone
    loss.backward()
    opt.step()
    assert len(list(model.parameters())) == n_params  # no copy was made
    assert not torch.equal(before["embed.0.weight"], model.embed[0].weight)
    assert not torch.equal(before["embed.2.weight"], model.embed[2].weight)


def direct_nt_xent(r, r_p, tau):
    z = torch.cat([r, r_p]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(r)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        num = math.exp(float(z[i] @ z[j]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(num / den)
    return total / (2 * n)


def test_nt_xent_equals_the_direct_formula_and_ignores_feature_scale():
    g = torch.Generator().manual_seed(1)
    r, r_p = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for tau in (0.1, 0.5, 1.0):
        assert float(pt.nt_xent(r, r_p, tau)) == pytest.approx(direct_nt_xent(r, r_p, tau), rel=1e-5)
    base = float(pt.nt_xent(r, r_p, 0.5))
    assert float(pt.nt_xent(7.0 * r, 0.01 * r_p, 0.5)) == pytest.approx(base, rel=1e-5)
    scale = torch.rand(5, 1, generator=g) + 0.1  # per-example scale too
    assert float(pt.nt_xent(r * scale, r_p, 0.5)) == pytest.approx(base, rel=1e-5)
    # aligned pairs give a lower loss than random ones
    assert float(pt.nt_xent(r, r + 0.01 * r_p, 0.5)) < base


def test_alignment_is_one_minus_cosine_and_ignores_the_other_examples():
    r = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(pt.alignment(r, 3 * r)) == pytest.approx(0.0)
    assert float(pt.alignment(r, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))) == pytest.approx(0.5)


def test_supervised_term():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    onehot = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # ||y_hat - y||^2: summed over the classes, averaged over the batch
    assert float(pt.supervised(logits, y)) == pytest.approx(float(((logits.softmax(1) - onehot) ** 2).sum(1).mean()))
    assert float(pt.supervised(logits, y, "logits")) == pytest.approx((1 + 0 + 1 + 1) / 2)
    assert float(pt.supervised(logits, y, kind="ce")) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))


def test_augmentation_is_identity_for_vectors_and_seeded_for_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8)
    assert pt.augment(x, g) is x
    images = torch.rand(3, 3, 16, 16)
    a = pt.augment(images, torch.Generator().manual_seed(3))
    b = pt.augment(images, torch.Generator().manual_seed(3))
    state = torch.random.get_rng_state()
    v1, v2 = pt.two_views(images, torch.Generator().manual_seed(4))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is not touched
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, images)
    assert not torch.equal(v1, v2)
    s1, s2 = pt.two_views(images, torch.Generator().manual_seed(4), same_view=True)
    assert s1 is s2


def test_colour_distortion_changes_channel_means_but_not_geometry():
    # two flat images: a brown one and a blue one; geometry-only views keep each flat colour
    images = torch.stack([torch.tensor([0.4, 0.3, -0.6]), torch.tensor([-0.7, -0.4, 0.1])])[:, :, None, None]
    images = images.expand(2, 3, 12, 12).clone()
    images[:, :, 4:8, 4:8] = 0.9  # a bright stroke, so each image has a spread
    g = torch.Generator().manual_seed(0)
    shifts = []
    for _ in range(50):
        out = pt.distort_colour(images[0], g)
        assert out.shape == images[0].shape
        # a per-channel affine map (or grayscale) keeps the stroke where it was
        assert bool((out[:, 4:8, 4:8].mean() - out[:, 0:2, 0:2].mean()).abs() > 0)
        shifts.append((out[:, 0, 0] - images[0, :, 0, 0]).abs().max().item())
    assert max(shifts) > 0.1 and min(shifts) < 1e-6  # distorted most of the time, not always
    a = pt.augment(images, torch.Generator().manual_seed(1), colour=True)
    b = pt.augment(images, torch.Generator().manual_seed(1), colour=True)
    plain = pt.augment(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, plain)
    x = torch.randn(4, 8)
    assert pt.augment(x, g, colour=True) is x


@pytest.mark.parametrize("options", [{}, {"criterion": "gradient", "pool": 64, "sample": 32},
                                     {"mask": "smallest-weights", "space": "output", "projection": False,
                                      "supervised": "ce", "same_view": True}])
def test_the_loss_falls_on_a_tiny_problem(options):
    data, batch = tiny_batch(64)
    model = small_model()
    stage = pt.PrunedTwinStage(pt.PrunedTwinOptions(q=0.05, **options))

    class Run:
        pass

    run, ctx, auxiliary = Run(), Run(), {}
    run.data, ctx.model, ctx.index = data, model, 1
    ctx.add_auxiliary = lambda name, module: auxiliary.setdefault(name, module)  # as StageContext's
    stage.spurcore_prepare_model(ctx, model)
    assert list(auxiliary) == ([pt.PROJECTION] if stage.options.projection else [])
    opt = torch.optim.Adam([*model.parameters(), *(p for m in auxiliary.values() for p in m.parameters())], lr=0.01)
    losses = []
    for epoch in range(1, 6):
        stage.spurcore_epoch_start(run, ctx, epoch)
        for _ in range(10):
            loss = stage.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


@pytest.mark.parametrize("contrast", ["positives", "none"])
def test_the_controls_losses(contrast):
    """`none` is the supervised term alone; `positives` adds 1 - cosine of each pair and no more."""
    data, batch = tiny_batch(32)
    model = small_model()
    stage = pt.PrunedTwinStage(pt.PrunedTwinOptions(contrast=contrast, projection=False, lam=0.7))
    stage.mask = pt.neuron_mask(model, 0.1, "magnitude")
    logits = model(batch.x)
    expected = 0.7 * pt.supervised(logits, batch.y)
    if contrast == "positives":  # vectors are not augmented: both branches see batch.x
        expected = expected + pt.alignment(model.features(batch.x), stage.mask.features(model, batch.x))
    assert float(stage.loss(model, batch)) == pytest.approx(float(expected), rel=1e-6)


def test_options_are_validated():
    with pytest.raises(ValueError, match="q"):
        pt.PrunedTwinOptions(q=0)
    with pytest.raises(ValueError, match="sample"):
        pt.PrunedTwinOptions(pool=64, sample=128)
    with pytest.raises(ValueError, match="projection"):
        pt.PrunedTwinOptions(space="output")


def test_stage_runs_after_erm_in_a_tiny_pipeline(tmp_path, spur_plugins):
    spur_plugins.register(pt, "prunedtwin")
    config = pipeline_from_dict(tiny_pipeline(
        train={"epochs": 2, "batch_size": 32, "lr": 0.01},
        stages=[{"method": "erm"}, {"method": "prunedtwin", "train": {"epochs": 2},
                                   "options": {"q": 0.05, "criterion": "gradient"}}]))
    summary = run_pipeline(config, tmp_path / "run", spur_plugins)
    stages = summary["stages"]
    assert [s["method"] for s in stages] == ["erm", "prunedtwin"]
    result = json.loads((tmp_path / "run" / "checkpoints" / "1-prunedtwin" / "result.json").read_text())
    assert [h["epoch"] for h in result["history"] if h["epoch"] > 0] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in result["history"] if h["epoch"] > 0)
    resolved = (tmp_path / "run" / "config.toml").read_text()
    assert "prunedtwin" in resolved
    first, state = (torch.load(tmp_path / "run" / "checkpoints" / "1-prunedtwin" / f"epoch_00{e}.pt", weights_only=True)
                    for e in (1, 2))
    # the projection head is an auxiliary network of the stage: trained and checkpointed beside the
    # model, with its own optimizer state, and no part of the model
    assert not any(pt.PROJECTION in k for k in state["model"])
    projection = state["auxiliary"][pt.PROJECTION]
    assert not torch.equal(projection["module"]["0.weight"], first["auxiliary"][pt.PROJECTION]["module"]["0.weight"])
    assert projection["optimizer"]["param_groups"][0]["lr"] <= 2e-4
    assert state["optimizer"]["param_groups"][0]["lr"] <= 2e-4  # the stage's own Adam 2e-4 (train_defaults)
    model = open_run(tmp_path / "run", spur_plugins).load_model(1)  # what tracers and later stages get
    assert not any(pt.PROJECTION in name for name, _ in model.named_modules())
    assert not any(pt.PROJECTION in path for path in NeuronIndex.of(model).by_path)
    assert 0 <= summary["metrics"]["test"]["avg_acc"] <= 1


def test_the_twins_masked_channel_is_silent_after_batchnorm():
    """A conv channel masked before BatchNorm would come out as beta; the mask acts after it,
    and the target's own forward (and the BatchNorm's statistics) are left alone."""
    torch.manual_seed(0)
    embed = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    embed[1].bias.data.fill_(1.0)
    model = SpurModel(embed, nn.Linear(6, 2), 6).train()
    mask = pt.NeuronMask(NeuronIndex.of(model, exclude=["head"]), np.array([3]))
    x = torch.randn(8, 3, 5, 5)
    twin = mask.features(model, x)
    target = model.features(x)
    assert torch.all(twin[:, 3] == 0) and torch.all(target[:, 3] > 0)
    assert torch.allclose(twin[:, [0, 1, 2, 4, 5]], target[:, [0, 1, 2, 4, 5]])
