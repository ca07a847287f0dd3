"""Properties of the tracer's pieces on tiny networks (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from spurcore.api import Layout, SpurModel
from spurcore_tracer import NeuronIndex, intervene, score_neurons, top_k, top_k_per_layer, top_percent
from spurcore_tracer.criteria import lowest_confidence, magnitude
from spurcore_tracer.selection import percentile_ranks, ranking

FAST = settings(max_examples=15, deadline=None)


def tiny_cnn(seed: int, bias: bool) -> SpurModel:
    torch.manual_seed(seed)
    embed = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=bias), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Conv2d(3, 4, 3, bias=True), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 5), nn.Tanh())
    model = SpurModel(embed, nn.Linear(5, 2), 5)
    with torch.no_grad():  # non-trivial batch-norm statistics
        model.embed[1].running_mean.uniform_(-0.5, 0.5)
        model.embed[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def reference_gradient_norms(model: nn.Module, x, y, include_bias: bool) -> np.ndarray:
    """Slow: one autograd call per neuron, on that neuron's parameters only."""
    index = NeuronIndex.of(model)
    out = []
    for i in range(index.total):
        layer = index.layers[index.layer_ids[i]]
        unit = int(index.unit_ids[i])
        loss = F.cross_entropy(model(x), y, reduction="sum")
        tensors = [t for _, t in layer.parameters(include_bias)]
        grads = torch.autograd.grad(loss, tensors)
        out.append(float(np.sqrt(sum(float((g[unit].double() ** 2).sum()) for g in grads))))
    return np.array(out)


@FAST
@given(seed=st.integers(0, 10_000), n=st.integers(1, 9), bias=st.booleans(), include_bias=st.booleans(),
       batch=st.integers(1, 4))
def test_gradient_scores_equal_a_per_neuron_reference(seed, n, bias, include_bias, batch):
    model = tiny_cnn(seed, bias)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 5, 5, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
    fast = score_neurons(model, batches, "gradient", include_bias=include_bias)
    slow = reference_gradient_norms(model, x, y, include_bias)
    assert fast.shape == (NeuronIndex.of(model).total,) == (3 + 4 + 5 + 2,)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-7)
    mean = score_neurons(model, batches, "gradient", include_bias=include_bias, reduction="mean")
    np.testing.assert_allclose(mean * n, fast, rtol=1e-6, atol=1e-9)


def test_scoring_leaves_the_model_as_it_was():
    model = tiny_cnn(0, True).train()
    model.head.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score_neurons(model, [(torch.randn(3, 2, 5, 5), torch.tensor([0, 1, 1]))])
    assert model.training and not model.head.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@FAST
@given(seed=st.integers(0, 10_000), include_bias=st.booleans())
def test_magnitude_is_the_norm_of_each_slice(seed, include_bias):
    model = tiny_cnn(seed, True)
    index = NeuronIndex.of(model)
    scores = magnitude(index, include_bias)
    for i in range(index.total):
        layer, unit = index.layers[index.layer_ids[i]], index.unit_ids[i]
        parts = [layer.weight[unit].flatten()] + ([layer.bias[unit].reshape(1)] if include_bias else [])
        assert scores[i] == pytest.approx(float(torch.cat(parts).detach().double().norm()), rel=1e-9)


def test_neurons_are_named_by_module_path_in_module_order():
    model = tiny_cnn(0, False)
    index = NeuronIndex.of(model)
    assert index.paths == ("embed.0", "embed.3", "embed.7", "head")
    assert [l.units for l in index.layers] == [3, 4, 5, 2]
    assert str(index.neuron(3)) == "embed.3[0]" and index.global_index(index.neuron(13)) == 13
    assert NeuronIndex.of(model, exclude=["head"]).total == 12


def test_a_backbone_that_declares_its_neurons_is_traced_on_those_only():
    """A transformer declares the first linear layer of each MLP block (one hidden unit per
    neuron); attention, the second MLP layer and the head are left out, even after a method
    wraps a block (the declared modules are found by identity)."""
    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
                             for _ in range(2)])
    layout = Layout(blocks=["0", "1"], neurons=["0.1", "1.1"])
    model = SpurModel(blocks, nn.Linear(4, 2), 4, layout)
    index = NeuronIndex.of(model)
    assert index.paths == ("embed.0.1", "embed.1.1") and index.total == 16
    assert NeuronIndex.of(model, exclude=["embed.1"]).paths == ("embed.0.1",)
    model.embed[1] = nn.Sequential(model.embed[1], nn.Identity())  # as FairDropout wraps a block
    assert NeuronIndex.of(model).paths == ("embed.0.1", "embed.1.0.1")


scores_st = st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]) | st.floats(-5, 5, allow_nan=False), min_size=1, max_size=40)


@given(scores=scores_st)
def test_top_k_is_exactly_k_distinct_nested_and_deterministic(scores):
    scores = np.array(scores)
    previous = []
    for k in range(len(scores) + 1):
        chosen = top_k(scores, k).tolist()
        assert len(chosen) == len(set(chosen)) == k
        assert chosen[: len(previous)] == previous
        previous = chosen
    order = ranking(scores)
    for a, b in zip(order[:-1], order[1:]):  # (score desc, index asc)
        assert scores[a] > scores[b] or (scores[a] == scores[b] and a < b)
    assert np.array_equal(top_k(scores.copy(), len(scores)), top_k(scores, len(scores)))
    with pytest.raises(ValueError):
        top_k(scores, len(scores) + 1)


@given(scores=scores_st, percent=st.floats(0.001, 100))
def test_top_percent_is_a_prefix_with_at_least_one(scores, percent):
    scores = np.array(scores)
    chosen = top_percent(scores, percent)
    assert 1 <= len(chosen) <= len(scores)
    assert np.array_equal(chosen, ranking(scores)[: len(chosen)])
    ranks = percentile_ranks(scores)
    assert ranks.min() >= 0 and ranks.max() <= 100


@given(k=st.integers(1, 6), seed=st.integers(0, 100))
def test_per_layer_top_k_stays_inside_each_layer(k, seed):
    model = tiny_cnn(seed, True)
    index = NeuronIndex.of(model)
    scores = np.random.default_rng(seed).integers(0, 3, index.total).astype(float)  # many ties
    chosen = top_k_per_layer(scores, index, k)
    for layer in index.layers:
        picked = chosen[layer.path]
        assert len(picked) == min(k, layer.units) and len(set(picked.tolist())) == len(picked)
        assert all(layer.offset <= i < layer.offset + layer.units for i in picked)
        assert np.array_equal(picked - layer.offset, top_k(scores[layer.span], len(picked)))


@FAST
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["zero", "init", "noise"]),
       picks=st.lists(st.integers(0, 13), min_size=1, max_size=6), include_bias=st.booleans())
def test_interventions_touch_only_selected_neurons_and_are_undone_bitwise(seed, kind, picks, include_bias):
    model = tiny_cnn(seed, True)
    index = NeuronIndex.of(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    chosen = set(picks)
    def keys(layer):  # (state key, is a bias) of what the intervention may touch
        touched = layer.silencing_parameters(True) if kind == "zero" else layer.parameters(True)
        return [(f"{layer.norm_path}.{n[5:]}" if n.startswith("norm.") else f"{layer.path}.{n}", n.endswith("bias"))
                for n, _ in touched]

    with intervene(index, picks, kind, sigma=0.05, generator=generator, include_bias=include_bias):
        during = model.state_dict()
        for layer in index.layers:
            for key, bias in keys(layer):
                for unit in range(layer.units):
                    same = torch.equal(during[key][unit], before[key][unit])
                    selected = layer.offset + unit in chosen and (not bias or include_bias)
                    assert same != selected or (kind == "zero" and torch.all(before[key][unit] == 0))
                    if selected and kind == "zero":
                        assert torch.all(during[key][unit] == 0)
        others = set(during) - {key for layer in index.layers for key, _ in keys(layer)}
        assert all(torch.equal(during[k], before[k]) for k in others)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_interventions_are_undone_when_the_body_raises():
    model = tiny_cnn(1, True)
    index = NeuronIndex.of(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        with intervene(index, [0, 5, 13], "noise", sigma=1.0, generator=torch.Generator().manual_seed(0)):
            raise RuntimeError("boom")
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_random_interventions_repeat_with_the_seed():
    model = tiny_cnn(2, True)
    index = NeuronIndex.of(model)
    seen = []
    for _ in range(2):
        with intervene(index, [1, 4], "init", sigma=0.1, generator=torch.Generator().manual_seed(7)):
            seen.append(model.embed[0].weight.clone())
    assert torch.equal(seen[0], seen[1])


def test_lowest_confidence_picks_the_highest_loss_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
    y = np.array([0, 0, 0, 0, 1])
    assert lowest_confidence(logits, y, np.arange(5), 2).tolist() == [1, 3]
    assert lowest_confidence(logits, y, np.array([0, 2, 4]), 1).tolist() == [2]  # tie -> lower row
    assert lowest_confidence(logits, y, np.array([0, 2]), 10).tolist() == [0, 2]
