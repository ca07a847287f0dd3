"""Properties of the FairDropout layer and its example-tied masks."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spurcore.api import ForwardContext
from spurcore_fairdropout import FairDropout, keep_mask

probability = st.floats(0.0, 1.0)
shapes = st.lists(st.integers(1, 5), min_size=0, max_size=2)


def layer(p_gen, p_mem, seed=0, mode="drop"):
    return FairDropout(ForwardContext(), p_gen, p_mem, seed, mode)


def train_forward(fd, x, index):
    fd.train()
    fd.context.index = index
    return fd(x)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31), p=probability, n=st.integers(1, 64), units=st.integers(1, 32),
       perm_seed=st.integers(0, 1000))
def test_same_index_same_mask_across_calls_and_batch_orders(seed, p, n, units, perm_seed):
    index = torch.randint(0, 10**6, (n,), generator=torch.Generator().manual_seed(perm_seed))
    cols = torch.arange(units)
    first = keep_mask(index, cols, p, seed)
    assert torch.equal(first, keep_mask(index, cols, p, seed))  # another call, another "epoch"
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed + 1))
    assert torch.equal(keep_mask(index[perm], cols, p, seed), first[perm])  # another batch order
    assert torch.equal(keep_mask(index.to(torch.int32), cols, p, seed), first)  # index dtype irrelevant
    single = torch.stack([keep_mask(index[i : i + 1], cols, p, seed)[0] for i in range(n)])
    assert torch.equal(single, first)  # batch of one == whole batch: no dependence on neighbours


@settings(max_examples=40, deadline=None, derandomize=True)
@given(p=probability, seed=st.integers(0, 2**31))
def test_keep_rate_is_near_p_mem(p, seed):
    """Hoeffding: with n independent draws, P(|rate - p| > eps) <= 2 exp(-2 n eps^2). With
    eps chosen for a failure probability of 1e-12 per example, a failure means a broken hash."""
    index, units = torch.arange(20_000), torch.arange(16)
    n = len(index) * len(units)
    eps = math.sqrt(math.log(2 / 1e-12) / (2 * n))
    rate = keep_mask(index, units, p, seed).float().mean().item()
    assert abs(rate - p) <= eps
    # and the draws of two units, or of two seeds, are not the same draws
    if 0.05 < p < 0.95:
        masks = keep_mask(index, units, p, seed)
        assert not torch.equal(masks[:, 0], masks[:, 1])
        assert not torch.equal(masks, keep_mask(index, units, p, seed + 1))


@settings(max_examples=100, deadline=None)
@given(p_gen=probability, p_mem=probability, n=st.integers(1, 8), units=st.integers(1, 12),
       spatial=shapes, seed=st.integers(0, 100))
def test_generalizing_units_are_never_dropped_and_memorizing_ones_follow_the_mask(p_gen, p_mem, n, units, spatial, seed):
    fd = layer(p_gen, p_mem, seed)
    x = torch.rand(n, units, *spatial) + 1.0  # no zeros in the input
    index = torch.arange(100, 100 + n)
    y = train_forward(fd, x, index)
    assert y.shape == x.shape
    n_gen = int(round(p_gen * units))
    assert torch.equal(y[:, :n_gen], x[:, :n_gen])
    kept = keep_mask(index, torch.arange(n_gen, units), p_mem, seed)
    expected = x[:, n_gen:] * kept.reshape(n, units - n_gen, *([1] * len(spatial)))
    assert torch.equal(y[:, n_gen:], expected)


@settings(max_examples=100, deadline=None)
@given(p_gen=probability, p_mem=probability, n=st.integers(1, 8), units=st.integers(1, 12), spatial=shapes)
def test_inference_modes(p_gen, p_mem, n, units, spatial):
    x = torch.rand(n, units, *spatial) + 1.0
    n_gen = int(round(p_gen * units))
    drop = layer(p_gen, p_mem, mode="drop").eval()(x)
    assert torch.equal(drop[:, :n_gen], x[:, :n_gen])
    assert torch.all(drop[:, n_gen:] == 0)  # exactly the memorizing units are zero
    assert torch.equal(layer(p_gen, p_mem, mode="keep").eval()(x), x)
    scaled = layer(p_gen, p_mem, mode="scale").eval()(x)
    assert torch.allclose(scaled[:, n_gen:], x[:, n_gen:] * p_mem) and torch.equal(scaled[:, :n_gen], x[:, :n_gen])
    if p_gen > 0:
        rescaled = layer(p_gen, p_mem, mode="drop-rescale").eval()(x)
        assert torch.allclose(rescaled[:, :n_gen], x[:, :n_gen] * (p_gen + p_mem) / p_gen)
        assert torch.all(rescaled[:, n_gen:] == 0)


def test_training_without_indices_is_a_clear_error():
    fd = layer(0.5, 0.5).train()
    try:
        fd(torch.ones(2, 4))
    except RuntimeError as error:
        assert "model(x, index=batch.index)" in str(error)
    else:
        raise AssertionError("expected an error")


@settings(max_examples=50, deadline=None)
@given(p_gen=probability, p_mem=probability, n=st.integers(1, 8), tokens=st.integers(1, 6), units=st.integers(1, 12),
       seed=st.integers(0, 1000))
def test_on_token_sequences_the_units_are_the_last_dimension_and_every_token_shares_the_mask(
        p_gen, p_mem, n, tokens, units, seed):
    x = torch.rand(n, tokens, units) + 1.0
    fd = FairDropout(ForwardContext(), p_gen, p_mem, seed, tokens=True)
    index = torch.arange(n) * 7
    out = train_forward(fd, x, index)
    # the same per-unit multiplier as a (N, C) input of the same examples, for every token
    per_unit = train_forward(layer(p_gen, p_mem, seed), torch.ones(n, units), index)
    assert torch.equal(out, x * per_unit[:, None, :])
    n_gen = int(round(p_gen * units))
    dropped = fd.eval()(x)
    assert torch.equal(dropped[..., :n_gen], x[..., :n_gen]) and torch.all(dropped[..., n_gen:] == 0)
    maps = torch.rand(n, units, 3, 3) + 1.0  # a (N, C, h, w) map is still dropped over its channels
    assert torch.equal(fd.eval()(maps), layer(p_gen, p_mem, seed).eval()(maps))


def test_the_cpu_table_gives_the_hashed_multipliers_and_grows_with_the_indices(monkeypatch):
    from spurcore_fairdropout import layer

    context = ForwardContext()
    fd = FairDropout(context, p_gen=0.5, p_mem=0.3, seed=4).train()
    x = torch.ones(6, 10, 3, 3)
    for index in (torch.tensor([0, 5, 3, 1, 2, 4]), torch.tensor([3000, 7, 2, 2999, 1, 0])):
        context.index = index
        out = fd(x)
        hashed = fd._training_scale(index, 10, x.device, x.dtype)
        assert torch.equal(out, x * hashed[:, :, None, None])
        assert torch.equal(hashed[:, 5:].bool(), keep_mask(index, torch.arange(5, 10), 0.3, 4))
        assert len(fd._table) > int(index.max())
    monkeypatch.setattr(layer, "TABLE_BUDGET", 100)  # past the budget: hashed per batch, no table
    fresh = FairDropout(context, p_gen=0.5, p_mem=0.3, seed=4).train()
    assert torch.equal(fresh(x), out) and fresh._table is None
