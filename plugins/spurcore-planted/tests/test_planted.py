"""Planted memorization: the data, and what the tracer and Feldman-Zhang's estimate must find in
it. Hypothesis draws seeds, sizes and the number of planted examples; every model is a
seconds-long full-batch fit (`memorizer`), so few examples keep the suite fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from spurcore.api import FieldError, train_subset_positions
from spurcore_memorization import memorization
from spurcore_planted import PlantedOptions, make_planted, memorizer, planted_mask, recover

# derandomized: the same draws on every run, so the suite does not depend on luck
FEW = settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the data -------------------------------------------------------------------------------


def stroke_class(x: torch.Tensor) -> np.ndarray:
    """The class the stroke says: a bright row (0) or a bright column (1)."""
    image = x[:, 0]
    return (image.mean(2).max(1).values < image.mean(1).max(1).values).long().numpy()


@pytest.mark.parametrize("kind", ["patch", "relabel"])
def test_planted_examples_carry_the_other_class_and_are_marked(kind):
    data = make_planted(PlantedOptions(n_train=120, planted=6, kind=kind, seed=3))
    for name, split in data.splits.items():
        mask = planted_mask(data, name)
        assert mask.sum() == 6 and np.flatnonzero(mask).tolist() == data.provenance["planted"][name]
        assert sorted(split.y[mask].tolist()) == [0, 0, 0, 1, 1, 1]  # both planted groups populated
        assert (stroke_class(split.inputs)[~mask] == split.y[~mask]).all()
        assert (stroke_class(split.inputs)[mask] != split.y[mask]).mean() >= 5 / 6  # a trigger may hide a stroke
    assert data.group_counts("train")["vertical/planted"] == 3 and data.input_shape == (1, 8, 8)
    again = make_planted(PlantedOptions(n_train=120, planted=6, kind=kind, seed=3))
    assert torch.equal(again.splits["train"].inputs, data.splits["train"].inputs)


def test_only_planted_examples_with_kind_patch_carry_a_trigger():
    patched = make_planted(PlantedOptions(n_train=60, planted=2, kind="patch", seed=1)).splits["train"]
    plain = make_planted(PlantedOptions(n_train=60, planted=2, kind="relabel", seed=1)).splits["train"]
    clean = patched.a == 0
    assert torch.equal(patched.inputs[clean], plain.inputs[clean])
    assert (patched.inputs[~clean] - plain.inputs[~clean]).abs().max() == pytest.approx(1.5, abs=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"planted": 1}, "must be at least 2"),
    ({"planted": 60, "n_train": 100}, "at most half of n_train"),
    ({"kind": "swap"}, "must be one of patch, relabel"),
    ({"side": 3}, "must be at least 4"),
])
def test_bad_options_name_the_field(options, message):
    with pytest.raises(FieldError, match=message):
        PlantedOptions(**options)


# --- what the tracer must find ----------------------------------------------------------------


@FEW
@given(seed=st.integers(0, 10_000), n_train=st.integers(150, 400), planted=st.integers(2, 6))
def test_zeroing_the_tracers_top_neurons_for_a_planted_example_removes_it_and_little_else(seed, n_train, planted):
    """The gradient criterion's top 30% of hidden neurons for each planted example (its own
    loss's gradient), zeroed (BatchNorm included), remove at least a third of the planted
    examples' training accuracy, at least twice what they remove of the others', and 30 points
    more than as many random neurons do. (Memorization spreads over units here: at 10% about a
    third of the planted examples go, at 30% most; docs/methods/planted-memorization.md.)"""
    data = make_planted(PlantedOptions(n_train=n_train, planted=planted, seed=seed))
    model = memorizer(data, seed)
    found = recover(model, data.splits["train"], planted_mask(data), "gradient", 0.3, seed=seed)
    assert found.planted_before == found.others_before == 100.0
    assert found.planted_drop >= 100 / 3 - 1e-9, found
    assert found.planted_drop >= 2 * found.others_drop, found
    assert found.planted_drop >= found.control_planted_drop + 30, found
    assert found.k == 39 and len(found.neurons) == planted  # ceil(0.3 x 128 hidden units)


def test_recover_refuses_a_mask_that_marks_nothing_or_everything():
    data = make_planted(PlantedOptions(n_train=40, planted=2))
    model = memorizer(data)
    for mask in (np.zeros(40, bool), np.ones(40, bool), np.ones(3, bool)):
        with pytest.raises(ValueError, match="planted must mark some but not all of the 40 examples"):
            recover(model, data.splits["train"], mask, "gradient")
    with pytest.raises(ValueError, match="unknown criterion 'loss'"):
        recover(model, data.splits["train"], planted_mask(data), "loss")


# --- what Feldman-Zhang's estimate must find ---------------------------------------------------


@FEW
@given(seed=st.integers(0, 10_000), n_train=st.integers(100, 300), planted=st.integers(2, 6))
def test_feldman_zhang_ranks_the_planted_examples_at_the_top(seed, n_train, planted):
    """K = 12 memorizers, each on a 0.7 subset drawn as `spur memorization` draws it: the planted
    examples are fitted when trained on and missed when held out (score at least 0.5, above 99%
    of the others'), the others are fitted either way (score near 0)."""
    data = make_planted(PlantedOptions(n_train=n_train, planted=planted, seed=seed))
    train, mask = data.splits["train"], planted_mask(data)
    trained = np.zeros((12, n_train), bool)
    correct = np.zeros((12, n_train), bool)
    for k in range(12):
        positions = train_subset_positions(n_train, 0.7, seed * 1000 + k)
        trained[k, positions] = True
        model = memorizer(data, seed * 1000 + k, positions=positions)
        with torch.no_grad():
            correct[k] = model(train.inputs).argmax(1).numpy() == train.y
    scores = memorization(correct, trained).memorization
    defined = ~np.isnan(scores)
    assert (defined & mask).any()
    assert scores[defined & mask].min() >= 0.5
    assert scores[defined & mask].min() > np.quantile(scores[defined & ~mask], 0.99)
    # ranked by score, the first as many as there are scored planted examples are planted but at
    # most one: a clean example beside a planted one is misread by the models that fit it and
    # did not train on the clean one (its influence, as in spurcore-memorization's own test)
    top = np.argsort(-np.where(defined, scores, -np.inf), kind="stable")[:int((defined & mask).sum())]
    assert mask[top].sum() >= len(top) - 1
