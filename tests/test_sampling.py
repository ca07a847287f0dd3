"""Balancing by label, and per-label caps (spurcore.sampling), drawn from a numpy generator
(DFR, the runner's training subset) or from the torch generator the sampler hook hands out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spurcore import hookimpl
from spurcore.runner import run_pipeline
from spurcore.sampling import balanced_subset, balanced_weights, capped_subset
from spurcore.specs import MitigationSpec

labels_strategy = st.lists(st.integers(0, 4), min_size=1, max_size=300).map(np.array)
GENERATORS = {"numpy": np.random.default_rng, "torch": lambda seed: torch.Generator().manual_seed(seed)}
each_generator = pytest.mark.parametrize("generator", GENERATORS.values(), ids=list(GENERATORS))


@each_generator
@settings(max_examples=100, deadline=None)
@given(labels=labels_strategy, seed=st.integers(0, 2**32 - 1))
def test_balanced_subset_has_equal_counts_of_every_label(generator, labels, seed):
    subset = balanced_subset(labels, generator(seed))
    values, counts = np.unique(labels, return_counts=True)
    kept = np.unique(labels[subset], return_counts=True)
    assert kept[0].tolist() == values.tolist()  # every label present survives
    assert set(kept[1].tolist()) == {counts.min()}  # each cut to the rarest label's count
    assert len(np.unique(subset)) == len(subset) and np.all(np.diff(subset) > 0)


@each_generator
@settings(max_examples=100, deadline=None)
@given(labels=labels_strategy, caps=st.tuples(st.integers(1, 80), st.integers(0, 80)), seed=st.integers(0, 2**32 - 1))
def test_capped_subset_keeps_up_to_cap_of_every_label_nested_for_growing_caps(generator, labels, caps, seed):
    small_cap, large_cap = caps[0], caps[0] + caps[1]
    small = capped_subset(labels, small_cap, generator(seed))
    large = capped_subset(labels, large_cap, generator(seed))
    values, counts = np.unique(labels, return_counts=True)
    for cap, subset in ((small_cap, small), (large_cap, large)):
        assert np.all(np.diff(subset) > 0)
        assert [int((labels[subset] == v).sum()) for v in values] == np.minimum(counts, cap).tolist()
    assert set(small.tolist()) <= set(large.tolist())
    rarest = int(counts.min())
    assert np.array_equal(capped_subset(labels, rarest, generator(seed)), balanced_subset(labels, generator(seed)))


@settings(max_examples=100, deadline=None)
@given(labels=labels_strategy)
def test_balanced_weights_give_every_label_the_same_mass(labels):
    weights = balanced_weights(labels)
    masses = [weights[labels == v].sum() for v in np.unique(labels)]
    assert np.allclose(masses, 1.0 / len(masses))
    assert np.isclose(weights.sum(), 1.0)


@each_generator
def test_the_same_seed_gives_the_same_subset_and_fresh_draws_differ(generator):
    labels = np.array([0] * 50 + [1] * 10 + [2] * 30)
    for draw in (lambda rng: balanced_subset(labels, rng), lambda rng: capped_subset(labels, 20, rng)):
        assert np.array_equal(draw(generator(0)), draw(generator(0)))
        assert not np.array_equal(draw(generator(0)), draw(generator(1)))
        rng = generator(0)
        assert not np.array_equal(draw(rng), draw(rng))


class BalancedEpochs:
    """Trains every epoch on a fresh class-balanced subset, drawn from the sampler's generator."""

    orders: list[np.ndarray] = []  # every epoch's, in the order the runs train them

    def __init__(self, options):
        self.options = options

    @hookimpl
    def spurcore_train_sampler(self, run, generator):
        self.orders.append(balanced_subset(run.data.splits["train"].y, generator))
        return self.orders[-1]


class RegistersBalancedEpochs:
    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="balanced-epochs", factory=BalancedEpochs, description="class-balanced epochs")]


def test_a_sampler_draws_its_subsets_from_the_generator_the_hook_hands_out(spur_plugins, spur_register_plugin, spur_tiny_config,
                                                                            spur_tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(BalancedEpochs, "orders", [])
    spur_register_plugin(RegistersBalancedEpochs(), "balanced-epochs")
    for name in ("a", "b"):
        config = spur_tiny_config(stages=[{"method": "balanced-epochs"}], train={"epochs": 2})
        run_pipeline(config, tmp_path / name, spur_plugins, log=lambda message: None)
    y = spur_tiny_data.splits["train"].y
    assert len(BalancedEpochs.orders) == 4 and all(len(set(np.bincount(y[order]))) == 1 for order in BalancedEpochs.orders)
    first, second = BalancedEpochs.orders[:2], BalancedEpochs.orders[2:]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # seeded by (seed, stage, epoch)
    assert not np.array_equal(*first)
