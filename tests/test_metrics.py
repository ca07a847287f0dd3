"""The built-in metrics (through `compute_metrics` and `Predictions`) and selectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from spurcore.builtins.metrics import spurcore_register_metrics
from spurcore.builtins.selectors import spurcore_register_selectors
from spurcore.context import Candidate
from spurcore.evaluation import Predictions, compute_metrics

METRICS = {spec.name: spec for spec in spurcore_register_metrics()}
ALL = list(METRICS.values())
SELECTORS = {spec.name: spec for spec in spurcore_register_selectors()}


def predictions(y, pred, a, n_classes=2, n_attrs=2) -> Predictions:
    return Predictions(
        y=np.asarray(y), pred=np.asarray(pred), a=None if a is None else np.asarray(a),
        class_names=tuple(f"c{i}" for i in range(n_classes)),
        attr_names=tuple(f"a{i}" for i in range(n_attrs)),
    )


def test_registered_metrics():
    assert list(METRICS) == ["avg_acc", "worst_group_acc", "worst_class_acc", "group_acc"]
    needs = {name: spec.needs_attributes for name, spec in METRICS.items()}
    assert needs == {"avg_acc": False, "worst_group_acc": True, "worst_class_acc": False, "group_acc": True}


def test_hand_computed_example():
    #  index    0  1  2  3  4  5  6  7  8  9
    y =       [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    a =       [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    pred =    [0, 0, 1, 0, 1, 1, 1, 1, 0, 1]
    # correct:  1  1  0  1  0  1  1  1  0  1   -> 7 of 10: avg_acc = 0.7
    # group = y * 2 + a:
    #          0  0  0  1  1  3  3  3  2  2
    # c0/a0 (group 0): rows 0,1,2 -> 1,1,0 -> 2/3
    # c0/a1 (group 1): rows 3,4   -> 1,0   -> 1/2
    # c1/a0 (group 2): rows 8,9   -> 0,1   -> 1/2
    # c1/a1 (group 3): rows 5,6,7 -> 1,1,1 -> 3/3
    # worst group = min(2/3, 1/2, 1/2, 1) = 0.5
    # class c0: rows 0-4 -> 1,1,0,1,0 -> 3/5 = 0.6; class c1: rows 5-9 -> 1,1,1,0,1 -> 4/5 = 0.8
    # worst class = 0.6  (note: the mean of group accuracies, 2/3, differs from avg_acc 0.7)
    out = compute_metrics(predictions(y, pred, a), ALL)
    assert out["avg_acc"] == pytest.approx(0.7)
    assert out["worst_group_acc"] == pytest.approx(0.5)
    assert out["worst_class_acc"] == pytest.approx(0.6)
    assert out["group_acc"] == pytest.approx({"c0/a0": 2 / 3, "c0/a1": 0.5, "c1/a0": 0.5, "c1/a1": 1.0})
    assert out["group_count"] == {"c0/a0": 3, "c0/a1": 2, "c1/a0": 2, "c1/a1": 3}
    assert set(out) == {"avg_acc", "worst_group_acc", "worst_class_acc", "group_acc", "group_count"}
    assert all(type(v) is float for v in out["group_acc"].values())
    assert all(type(v) is int for v in out["group_count"].values())


def test_three_classes_three_attributes_group_naming():
    # 3 classes x 3 attributes: group = y * 3 + a, named "c{y}/a{a}"
    y = [2, 2, 1, 0]
    a = [2, 1, 0, 2]
    pred = [2, 0, 1, 0]
    # correct: 1, 0, 1, 1 -> avg 3/4
    # c2/a2 (group 8): 1/1; c2/a1 (group 7): 0/1; c1/a0 (group 3): 1/1; c0/a2 (group 2): 1/1
    # classes: c0 1/1, c1 1/1, c2 1/2 -> worst class 0.5; worst group 0.0
    out = compute_metrics(predictions(y, pred, a, n_classes=3, n_attrs=3), ALL)
    assert out["avg_acc"] == 0.75
    assert out["worst_group_acc"] == 0.0
    assert out["worst_class_acc"] == 0.5
    assert list(out["group_acc"]) == [f"c{c}/a{t}" for c in range(3) for t in range(3)]
    assert {k: v for k, v in out["group_acc"].items() if v is not None} == {
        "c0/a2": 1.0, "c1/a0": 1.0, "c2/a1": 0.0, "c2/a2": 1.0,
    }
    assert sum(out["group_count"].values()) == 4


def test_empty_group_has_accuracy_none_and_is_not_the_worst():
    # no example of c1/a1; every other group is 100% except c0/a1 at 1/2
    y =    [0, 0, 0, 1, 1]
    a =    [0, 1, 1, 0, 0]
    pred = [0, 1, 0, 1, 1]
    # c0/a0: 1/1, c0/a1: 1/2, c1/a0: 2/2, c1/a1: none -> worst group 0.5 (an empty group would read 0 or nan)
    out = compute_metrics(predictions(y, pred, a), ALL)
    assert out["group_acc"] == {"c0/a0": 1.0, "c0/a1": 0.5, "c1/a0": 1.0, "c1/a1": None}
    assert out["group_count"]["c1/a1"] == 0
    assert out["worst_group_acc"] == 0.5


def test_empty_class_is_not_the_worst_class():
    # three classes, none of class 2: worst class over classes 0 (1/2) and 1 (1/1)
    out = compute_metrics(predictions([0, 0, 1], [0, 1, 1], None, n_classes=3), ALL)
    assert out["worst_class_acc"] == 0.5


def test_metrics_needing_attributes_are_skipped_without_attributes():
    out = compute_metrics(predictions([0, 1, 1, 0], [0, 1, 0, 0], None), ALL)
    assert out == {"avg_acc": 0.75, "worst_class_acc": 0.5}


def test_only_requested_metrics_are_computed():
    out = compute_metrics(predictions([0, 1], [0, 0], [0, 1]), [METRICS["worst_group_acc"]])
    assert out == {"worst_group_acc": 0.0}


def test_predictions_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        predictions([0, 1], [0], None)
    with pytest.raises(ValueError, match="same length"):
        predictions([0, 1], [0, 1], [0])


# --- properties -------------------------------------------------------------------------------------


@st.composite
def labelled(draw):
    n_classes = draw(st.integers(2, 4))
    n_attrs = draw(st.integers(2, 3))
    n = draw(st.integers(1, 60))
    ints = lambda k: st.lists(st.integers(0, k - 1), min_size=n, max_size=n)  # noqa: E731
    y, pred, a = draw(ints(n_classes)), draw(ints(n_classes)), draw(ints(n_attrs))
    perm = draw(st.permutations(range(n)))
    return predictions(y, pred, a, n_classes, n_attrs), np.asarray(perm)


@settings(max_examples=100, deadline=None, database=None)
@given(labelled())
def test_metric_properties(case):
    p, _ = case
    out = compute_metrics(p, ALL)
    present = [v for v in out["group_acc"].values() if v is not None]
    # average accuracy is a count-weighted mean of group (and of class) accuracies
    assert out["worst_group_acc"] == min(present)
    assert out["worst_group_acc"] <= out["avg_acc"] <= max(present)
    assert out["worst_class_acc"] <= out["avg_acc"]
    assert out["worst_group_acc"] <= out["worst_class_acc"]
    assert all(0.0 <= v <= 1.0 for v in present)
    counts = out["group_count"]
    assert sum(counts.values()) == len(p.y)
    assert [name for name, c in counts.items() if c == 0] == [n for n, v in out["group_acc"].items() if v is None]
    weighted = sum(out["group_acc"][g] * c for g, c in counts.items() if c) / len(p.y)
    assert weighted == pytest.approx(out["avg_acc"], abs=1e-12)
    assert out["avg_acc"] == np.mean(np.asarray(p.y) == np.asarray(p.pred))


@settings(max_examples=100, deadline=None, database=None)
@given(labelled())
def test_metrics_are_invariant_to_permuting_examples(case):
    p, perm = case
    shuffled = Predictions(y=p.y[perm], pred=p.pred[perm], a=p.a[perm],
                           class_names=p.class_names, attr_names=p.attr_names)
    assert compute_metrics(shuffled, ALL) == compute_metrics(p, ALL)


# --- selectors --------------------------------------------------------------------------------------


def candidate(val: dict, test: dict) -> Candidate:
    return Candidate(stage="0-erm", epoch=1, metrics={"val": val, "test": test})


@pytest.mark.parametrize(
    "name, needs_attributes, metric",
    [("val-wga", True, "worst_group_acc"), ("val-worst-class", False, "worst_class_acc"), ("val-avg", False, "avg_acc")],
)
def test_selectors_declare_attributes_and_score_their_metric(name, needs_attributes, metric):
    spec = SELECTORS[name]
    assert spec.needs_attributes is needs_attributes
    assert spec.metrics == (metric,)
    # distinct values everywhere: the score must be exactly val[metric]
    val = {"avg_acc": 0.81, "worst_group_acc": 0.42, "worst_class_acc": 0.63}
    test = {"avg_acc": 0.11, "worst_group_acc": 0.22, "worst_class_acc": 0.33}
    assert spec.score(candidate(val, test)) == val[metric]


def test_selectors_need_attributes_only_when_their_metric_does():
    assert set(SELECTORS) == {"val-wga", "val-worst-class", "val-avg"}
    for spec in SELECTORS.values():
        assert spec.needs_attributes == any(METRICS[m].needs_attributes for m in spec.metrics), spec.name


def test_val_worst_class_works_on_metrics_computed_without_attributes():
    val = compute_metrics(predictions([0, 1, 1, 0], [0, 1, 0, 0], None), ALL)
    assert SELECTORS["val-worst-class"].score(candidate(val, val)) == 0.5
    with pytest.raises(KeyError):
        SELECTORS["val-wga"].score(candidate(val, val))
