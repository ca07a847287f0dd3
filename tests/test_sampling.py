"""Balancing by label, and per-label caps (spurcore.sampling)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from spurcore.sampling import balanced_subset, balanced_weights, capped_subset

labels_strategy = st.lists(st.integers(0, 4), min_size=1, max_size=300).map(np.array)


@settings(max_examples=100, deadline=None)
@given(labels=labels_strategy, seed=st.integers(0, 2**32 - 1))
def test_balanced_subset_has_equal_counts_of_every_label(labels, seed):
    subset = balanced_subset(labels, np.random.default_rng(seed))
    values, counts = np.unique(labels, return_counts=True)
    kept = np.unique(labels[subset], return_counts=True)
    assert kept[0].tolist() == values.tolist()  # every label present survives
    assert set(kept[1].tolist()) == {counts.min()}  # each cut to the rarest label's count
    assert len(np.unique(subset)) == len(subset) and np.all(np.diff(subset) > 0)


@settings(max_examples=100, deadline=None)
@given(labels=labels_strategy, caps=st.tuples(st.integers(1, 80), st.integers(0, 80)), seed=st.integers(0, 2**32 - 1))
def test_capped_subset_keeps_up_to_cap_of_every_label_nested_for_growing_caps(labels, caps, seed):
    small_cap, large_cap = caps[0], caps[0] + caps[1]
    small = capped_subset(labels, small_cap, np.random.default_rng(seed))
    large = capped_subset(labels, large_cap, np.random.default_rng(seed))
    values, counts = np.unique(labels, return_counts=True)
    for cap, subset in ((small_cap, small), (large_cap, large)):
        assert np.all(np.diff(subset) > 0)
        assert [int((labels[subset] == v).sum()) for v in values] == np.minimum(counts, cap).tolist()
    assert set(small.tolist()) <= set(large.tolist())
    rarest = int(counts.min())
    assert np.array_equal(capped_subset(labels, rarest, np.random.default_rng(seed)),
                          balanced_subset(labels, np.random.default_rng(seed)))


@settings(max_examples=100, deadline=None)
@given(labels=labels_strategy)
def test_balanced_weights_give_every_label_the_same_mass(labels):
    weights = balanced_weights(labels)
    masses = [weights[labels == v].sum() for v in np.unique(labels)]
    assert np.allclose(masses, 1.0 / len(masses))
    assert np.isclose(weights.sum(), 1.0)


def test_fresh_subsets_differ_and_are_seeded():
    labels = np.array([0] * 50 + [1] * 10)
    a = balanced_subset(labels, np.random.default_rng(0))
    b = balanced_subset(labels, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    first, second = balanced_subset(labels, rng), balanced_subset(labels, rng)
    assert np.array_equal(a, b) and not np.array_equal(first, second)
