"""The shared mechanisms, pinned by their definitions: per-label weights, the losses for
imbalance, CVaR, the mixing, the invariance penalties and AFR's weights and fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spurcore_baselines import (
    afr_weights, coral_distance, cvar, effective_number, fit_head, focal_loss, inverse_frequency, irm_penalty,
    label_counts, ldam_margins, lisa_partners, log_priors, mixed_targets, mmd_distance, soft_cross_entropy,
    subtract_margin,
)

COUNTS = np.array([3498, 184, 56, 1057])  # waterdigits' (and Waterbirds') training groups


def test_inverse_frequency_weights_each_label_by_one_over_its_count_averaging_one():
    w = inverse_frequency(COUNTS)
    assert np.allclose(w * COUNTS, (w * COUNTS)[0])  # every group the same total weight
    assert np.isclose(w.mean(), 1.0)
    sqrt = inverse_frequency(COUNTS, power=0.5)
    assert np.allclose(sqrt * np.sqrt(COUNTS), (sqrt * np.sqrt(COUNTS))[0]) and np.isclose(sqrt.mean(), 1.0)
    assert sqrt.max() / sqrt.min() == pytest.approx(np.sqrt(3498 / 56))


def test_a_label_without_examples_weighs_nothing_and_the_others_still_average_one():
    w = inverse_frequency(np.array([10, 0, 40]))
    assert w[1] == 0 and np.isclose(w[[0, 2]].mean(), 1.0) and np.isclose(w[0] / w[2], 4.0)


def test_effective_number_is_its_formula_between_no_weighting_and_inverse_frequency():
    beta = 0.999
    raw = (1 - beta) / (1 - beta ** COUNTS.astype(float))
    assert np.allclose(effective_number(COUNTS, beta), raw / raw.mean())
    assert np.allclose(effective_number(COUNTS, 1 - 1e-12), inverse_frequency(COUNTS), rtol=1e-3)
    assert np.allclose(effective_number(COUNTS, 1e-9), 1.0)
    assert np.all(np.diff(effective_number(COUNTS, beta)[np.argsort(COUNTS)]) < 0)  # rarer weighs more


def test_label_counts_count_every_label_including_absent_ones():
    assert label_counts(np.array([0, 2, 2, 3]), 5).tolist() == [1, 0, 2, 1, 0]


def test_focal_loss_at_gamma_zero_is_the_cross_entropy_in_value_and_gradient():
    logits = torch.randn(7, 3, requires_grad=True, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    focal = focal_loss(logits, y, 0.0)
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    assert torch.allclose(focal, ce)
    (grad_focal,) = torch.autograd.grad(focal.sum(), logits)
    (grad_ce,) = torch.autograd.grad(ce.sum(), logits)
    assert torch.allclose(grad_focal, grad_ce)


def test_focal_loss_scales_each_cross_entropy_by_one_minus_p_to_the_gamma():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.5], [-1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    p = logits.softmax(1)[torch.arange(3), y]
    assert torch.allclose(focal_loss(logits, y, 2.0), (1 - p) ** 2 * -torch.log(p), atol=1e-6)
    ratio = focal_loss(logits, y, 2.0) / F.cross_entropy(logits, y, reduction="none")
    assert ratio[0] < 0.001 < ratio[1]  # the confident example is all but ignored


def test_ldam_margins_follow_n_to_the_minus_quarter_with_the_rarest_class_at_the_maximum():
    counts = np.array([5000, 500, 50])
    m = ldam_margins(counts, 0.5).double().numpy()
    assert m[2] == pytest.approx(0.5)
    assert m[0] / m[2] == pytest.approx((50 / 5000) ** 0.25) and m[1] / m[2] == pytest.approx((50 / 500) ** 0.25)
    assert ldam_margins(np.array([10, 0]), 0.3).tolist() == pytest.approx([0.3, 0.0])


def test_the_margin_comes_off_the_true_class_logit_only():
    logits = torch.zeros(2, 3)
    out = subtract_margin(logits, torch.tensor([2, 0]), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, -0.3], [-0.1, 0.0, 0.0]]))


def test_balanced_softmax_adds_the_log_class_priors():
    assert torch.allclose(log_priors(np.array([30, 10])), torch.log(torch.tensor([0.75, 0.25])))
    assert torch.isfinite(log_priors(np.array([30, 0]))).all()  # an empty class is counted once


def test_cvar_averages_the_worst_alpha_fraction():
    losses = torch.arange(1.0, 11.0)  # 1 .. 10
    assert cvar(losses, 0.3).item() == pytest.approx((10 + 9 + 8) / 3)
    assert cvar(losses, 0.25).item() == pytest.approx((10 + 9 + 0.5 * 8) / 2.5)  # the next one's share
    assert cvar(losses, 1.0).item() == pytest.approx(losses.mean().item())
    assert cvar(losses, 0.01).item() == pytest.approx(10.0)
    shuffled = losses[torch.randperm(10)].requires_grad_()
    cvar(shuffled, 0.3).backward()
    assert torch.equal(shuffled.grad != 0, shuffled.detach() >= 8)  # only the worst three pull


@pytest.mark.parametrize("alpha", [0.05, 0.2, 0.37, 0.5, 0.9])
def test_cvar_is_the_largest_expectation_under_weights_capped_at_one_over_alpha_m(alpha):
    losses = torch.rand(20, generator=torch.Generator().manual_seed(1))
    m, cap = 20, 1 / (alpha * 20)
    p, left = torch.zeros(m), 1.0  # the greedy solution of max <p, v>, 0 <= p <= cap, sum p = 1
    for i in torch.argsort(losses, descending=True):
        p[i] = min(cap, left)
        left -= p[i].item()
    assert cvar(losses, alpha).item() == pytest.approx((p * losses).sum().item(), rel=1e-5)


def test_soft_cross_entropy_of_one_hot_targets_is_the_cross_entropy():
    logits, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(soft_cross_entropy(logits, F.one_hot(y, 3)), F.cross_entropy(logits, y, reduction="none"))


def test_mixed_targets_are_the_convex_combination_of_the_two_labels():
    targets = mixed_targets(torch.tensor([0, 1, 1]), torch.tensor([1, 0, 2]), torch.tensor([0.7, 0.2, 1.0]), 2)
    assert torch.allclose(targets, torch.tensor([[0.7, 0.3], [0.8, 0.2], [0.0, 1.0]]))


def test_lisa_pairs_within_a_class_across_attributes_or_within_an_attribute_across_classes():
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    a = np.array([0, 0, 1, 1, 1, 0, 0])
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = lisa_partners(y, a, True, rng)
        assert np.all(y[p] == y) and np.all(a[p] != a)
        q = lisa_partners(y, a, False, rng)
        assert np.all(a[q] == a) and np.all(y[q] != y)
    lonely = lisa_partners(np.array([0, 0, 1]), np.array([0, 0, 1]), True, rng)
    assert lonely.tolist() == [0, 1, 2]  # no partner of another attribute in its class: not mixed


def test_the_irm_penalty_is_the_product_of_the_two_halves_risk_gradients_in_the_scale():
    logits, y = torch.randn(8, 2, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])

    def slope(rows, h=1e-5):
        risk = lambda s: F.cross_entropy(s * logits[rows], y[rows]).item()  # noqa: E731
        return (risk(1 + h) - risk(1 - h)) / (2 * h)

    expected = slope(slice(0, None, 2)) * slope(slice(1, None, 2))
    assert irm_penalty(logits.float(), y).item() == pytest.approx(expected, rel=1e-3)


def test_coral_and_mmd_vanish_between_equal_sets_and_grow_with_a_shift():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    for distance in (coral_distance, mmd_distance):
        assert distance(x, x.clone()).item() == pytest.approx(0.0, abs=1e-5)
        assert distance(x, x + 0.5).item() > distance(x, x + 0.1).item() > 1e-4
    scaled = x * torch.tensor([1.0, 1.0, 1.0, 3.0])
    assert coral_distance(x, scaled).item() > 0.5  # same mean, other covariance
    features = x.clone().requires_grad_()
    mmd_distance(features, features[:15]).backward()  # coinciding points: the gradient stays finite
    assert torch.isfinite(features.grad).all()


def test_biased_mmd_between_samples_of_one_distribution_is_its_diagonal_until_the_features_shrink():
    # what docs/methods/mmd.md's collapse rests on: two samples of one distribution, spread
    # beyond every bandwidth's reach, still pay each kernel's self-comparisons, 1/n + 1/m per
    # bandwidth; only features shrunk towards one point pay less
    generator = torch.Generator().manual_seed(0)
    x, y = 100 * torch.randn(40, 8, generator=generator), 100 * torch.randn(20, 8, generator=generator)
    diagonal = 7 * (1 / 40 + 1 / 20)  # 7 bandwidths, 0.001 to 1000
    assert mmd_distance(x, y).item() == pytest.approx(diagonal, rel=0.05)
    paid = [mmd_distance(scale * x, scale * y).item() for scale in (1.0, 1e-2, 1e-3, 1e-5)]
    assert paid == sorted(paid, reverse=True) and paid[-1] < 0.01 * diagonal


def test_afr_weights_fall_with_the_models_confidence_and_every_class_weighs_the_same():
    p = np.array([0.99, 0.5, 0.1, 0.9, 0.8])
    y = np.array([0, 0, 0, 1, 1])
    w = afr_weights(p, y, 2, gamma=4.0)
    assert w.sum() == pytest.approx(1.0) and w[y == 0].sum() == pytest.approx(0.5)
    assert w[2] > w[1] > w[0]
    assert w[0] / w[1] == pytest.approx(np.exp(-4 * 0.49))
    assert np.allclose(afr_weights(p, y, 2, gamma=0.0), [1 / 6] * 3 + [1 / 4] * 2)


def test_afr_fit_minimises_the_weighted_loss_and_a_large_pull_keeps_the_start():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(int)
    w = np.full(60, 1 / 60)
    w0, b0 = np.zeros((2, 3)), np.zeros(2)
    weight, bias = fit_head(x, y, w, w0, b0, reg=0.01, steps=200)
    params = [torch.tensor(weight, requires_grad=True), torch.tensor(bias, requires_grad=True)]
    loss = (torch.tensor(w) * F.cross_entropy(torch.tensor(x) @ params[0].T + params[1], torch.tensor(y),
                                              reduction="none")).sum()
    loss = loss + 0.01 * (params[0].pow(2).sum() + params[1].pow(2).sum())
    grads = torch.autograd.grad(loss, params)
    assert all(g.abs().max() < 1e-5 for g in grads)  # a stationary point of the (convex) objective
    assert ((x @ weight.T + bias).argmax(1) == y).mean() > 0.9
    kept, _ = fit_head(x, y, w, w0 + 1.0, b0, reg=1e6, steps=50)
    assert np.allclose(kept, 1.0, atol=1e-4)
