"""The one-run estimators' arithmetic on hand-made per-epoch tables, against their definitions
written one example at a time, and the input-loss curvature against Hessians known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from spurcore_memorization.curvature import input_curvature
from spurcore_memorization.estimators import cumulative_loss, forgetting, learning_time, mean_curvature

# columns: examples; rows: epochs 1..4
CORRECT = np.array([
    [1, 0, 1, 1, 0, 0],
    [1, 1, 0, 1, 0, 1],
    [1, 1, 1, 1, 0, 0],
    [1, 1, 1, 0, 0, 1],
], dtype=bool)


def test_learning_time_is_the_epoch_from_which_an_example_stays_right():
    # right throughout: 1; wrong at 1 only: 2; wrong at 2: 3; wrong at the last epoch or never right: 5 (E + 1);
    # wrong at 1 and 3, right at 4: 4
    assert learning_time(CORRECT).tolist() == [1, 2, 3, 5, 5, 4]


def test_forgetting_counts_right_to_wrong_transitions_and_never_learned_examples_count_most():
    # example 2: right, wrong, right, right -> 1; example 3: right until the last -> 1; example 4: never right -> 4
    # (E), more than example 5's 1 (right at 2 and 4, wrong at 3)
    assert forgetting(CORRECT).tolist() == [0, 0, 1, 1, 4, 1]


def test_cumulative_loss_and_curvature_sum_and_average_over_the_epochs():
    loss = np.array([[0.5, 2.0], [0.25, 1.0], [0.125, 3.0]])
    assert cumulative_loss(loss).tolist() == [0.875, 6.0]
    assert mean_curvature(loss).tolist() == [0.875 / 3, 2.0]


def test_a_table_that_is_not_epochs_by_examples_is_refused():
    with pytest.raises(ValueError, match=r"epochs x examples table with at least one epoch, got shape \(3,\)"):
        learning_time(np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match=r"got shape \(0, 2\)"):
        forgetting(np.ones((0, 2), dtype=bool))


def learned_at(column: list[bool]) -> int:
    """The definition, one epoch at a time: the first epoch from which every later one is right."""
    for start in range(1, len(column) + 1):
        if all(column[start - 1:]):
            return start
    return len(column) + 1


def forgotten(column: list[bool]) -> int:
    if not any(column):
        return len(column)
    return sum(1 for before, after in zip(column, column[1:]) if before and not after)


tables = arrays(bool, st.tuples(st.integers(1, 8), st.integers(1, 12)))


@settings(max_examples=200, deadline=None)
@given(tables)
def test_the_estimators_follow_their_definitions_on_any_table(correct):
    epochs = correct.shape[0]
    columns = [correct[:, i].tolist() for i in range(correct.shape[1])]
    assert learning_time(correct).tolist() == [learned_at(c) for c in columns]
    assert forgetting(correct).tolist() == [forgotten(c) for c in columns]
    learned = correct.any(0)
    assert (forgetting(correct)[learned] <= epochs // 2).all()  # below the never-learned examples' E
    # one more epoch at which everything is right changes no learning time but the never-right ones'
    more = learning_time(np.vstack([correct, np.ones((1, correct.shape[1]), dtype=bool)]))
    assert more.tolist() == [t if t <= epochs else epochs + 1 for t in learning_time(correct).tolist()]


# --- the curvature ------------------------------------------------------------------------------


def test_the_curvature_of_a_logistic_model_along_one_input_coordinate_is_exact():
    """Logits W x + b whose two rows differ only in coordinate 0 by `delta`: the input Hessian of
    the cross-entropy is p (1 - p) delta^2 e0 e0^T, so Tr(H^2) = (p (1 - p) delta^2)^2, and every
    Rademacher direction gives it exactly (H^2 is diagonal): only the finite difference errs."""
    torch.manual_seed(0)
    delta = 1.5
    model = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[delta, 0.3, -0.2], [0.0, 0.3, -0.2]], dtype=torch.float64))
        model.bias.zero_()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1])
    p = torch.softmax(model(x).detach(), 1)[:, 0]
    expected = (p * (1 - p) * delta**2) ** 2
    found = input_curvature(model, x, y, h=1e-5, directions=3, generator=torch.Generator().manual_seed(1))
    assert found.dtype == torch.float32 and found.shape == (5,)
    np.testing.assert_allclose(found.numpy(), expected.numpy(), rtol=1e-3)


def test_the_curvature_estimates_the_trace_of_the_squared_input_hessian_of_a_small_network():
    """Against the exact input Hessians H_i of a small tanh network: the estimate is the mean of
    ||H_i v||^2 over the very directions v its generator draws (up to the finite difference), and
    that mean is near Tr(H_i^2), which it estimates without bias."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    y = torch.tensor([2, 0])
    hessians = [torch.autograd.functional.hessian(
        lambda inputs: torch.nn.functional.cross_entropy(model(inputs[None]), y[i:i + 1]), x[i]) for i in range(2)]
    directions = 1500
    draws = torch.Generator().manual_seed(0)
    v = torch.stack([torch.randint(0, 2, x.shape, generator=draws) * 2 - 1 for _ in range(directions)]).double()
    same_directions = [float((v[:, i] @ hessians[i]).pow(2).sum(1).mean()) for i in range(2)]
    found = input_curvature(model, x, y, h=1e-5, directions=directions, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(found.numpy(), same_directions, rtol=1e-4)
    np.testing.assert_allclose(found.numpy(), [float(torch.trace(h @ h)) for h in hessians], rtol=0.1)


def test_the_curvature_refuses_integer_inputs():
    with pytest.raises(TypeError, match="floating-point inputs, got torch.int64"):
        input_curvature(torch.nn.Linear(2, 2), torch.ones(1, 2, dtype=torch.long), torch.tensor([0]), h=1e-3,
                        directions=1, generator=torch.Generator())
