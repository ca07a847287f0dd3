"""DFR: the protocol's pieces, and the stage on the tiny dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import spurcore_dfr
from spurcore.runner import RunError, run_pipeline
from spurcore.testing import mitigation_conformance

TestConformanceDFR = mitigation_conformance("dfr", plugin=spurcore_dfr, options={"retrains": 3})
TestConformanceDFRClass = mitigation_conformance("dfr-class", plugin=spurcore_dfr, options={"retrains": 3})


@pytest.fixture
def dfr_plugins(plugins):
    """The test kit's manager (built-ins and the tiny dataset) with this plugin registered."""
    plugins.register(spurcore_dfr, "dfr")
    return plugins


def separable(n=200, d=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, d)) + 2.0 * y[:, None] * np.eye(d)[0]
    return x, y


def test_fit_folds_standardization_into_the_head():
    x, y = separable()
    fit = spurcore_dfr.fit_l1(x, y, c=0.5, n_classes=2)
    mean, std = x.mean(0), x.std(0)
    reference = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=0.5, random_state=0).fit((x - mean) / std, y)
    logits = fit.logits(x)
    assert np.allclose(logits[:, 1] - logits[:, 0], reference.decision_function((x - mean) / std), atol=1e-8)
    assert np.array_equal(logits.argmax(1), reference.predict((x - mean) / std))


def test_c_is_chosen_on_the_held_out_half_and_fitted_on_a_balanced_other_half(monkeypatch):
    x, y = separable(n=101)
    x[:, -1] = np.arange(len(y))  # the last column tells which rows each step saw
    labels = y
    fitted, scored = [], []
    real_fit, real_score = spurcore_dfr.fit_l1, spurcore_dfr.worst_accuracy
    monkeypatch.setattr(spurcore_dfr, "fit_l1", lambda x, y, c, n: fitted.append(x[:, -1].copy()) or real_fit(x, y, c, n))
    monkeypatch.setattr(spurcore_dfr, "worst_accuracy",
                        lambda fit, x, y, g: scored.append(x[:, -1].copy()) or real_score(fit, x, y, g))
    best, scores = spurcore_dfr.tune_c(x, y, labels, [1.0, 0.1], 2, np.random.default_rng(0))
    assert len(fitted) == len(scored) == 2 and set(scores) == {1.0, 0.1} and best in scores
    fit_rows, eval_rows = set(fitted[0].astype(int)), set(scored[0].astype(int))
    assert not fit_rows & eval_rows
    assert len(eval_rows) == 50  # the first half of the shuffled 101
    assert set(fitted[1].astype(int)) == fit_rows  # the same subset for every C
    assert np.bincount(y[list(fit_rows)]).tolist()[0] == np.bincount(y[list(fit_rows)]).tolist()[1]
    assert best == max([1.0, 0.1], key=scores.get)


def test_final_head_is_the_average_of_fits_on_fresh_balanced_subsets():
    x, y = separable(n=120)
    labels = y
    averaged = spurcore_dfr.average_fits(x, y, labels, 0.3, 3, 2, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    fits = []
    for _ in range(3):
        subset = spurcore_dfr.balanced_subset(labels, rng)
        fits.append(spurcore_dfr.fit_l1(x[subset], y[subset], 0.3, 2))
    assert np.allclose(averaged.coef, np.mean([f.coef for f in fits], 0))
    assert np.allclose(averaged.intercept, np.mean([f.intercept for f in fits], 0))
    assert not np.allclose(fits[0].coef, fits[1].coef)  # the subsets really were fresh


def tiny(**overrides):
    from spurcore.config import pipeline_from_dict
    from spurcore.testing import tiny_pipeline

    return pipeline_from_dict(tiny_pipeline(**overrides))


def test_dfr_raises_worst_group_accuracy_on_tiny_data(tmp_path, dfr_plugins):
    summary = run_pipeline(tiny(train={"epochs": 5, "lr": 0.02}, stages=[{"method": "erm"}, {"method": "dfr"}]),
                           tmp_path / "r", dfr_plugins)
    erm, dfr = summary["stages"]
    assert dfr["metrics"]["test"]["worst_group_acc"] > erm["metrics"]["test"]["worst_group_acc"] + 0.2
    report = json.loads((tmp_path / "r" / "checkpoints" / "1-dfr" / "dfr.json").read_text())
    assert report["balance"] == "group" and float(report["best_c"]) in [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01]


def test_variants_declare_the_labels_they_read(tmp_path, dfr_plugins):
    no_attrs = {"name": "tiny", "options": {"attributes": False}}
    with pytest.raises(RunError, match="'dfr' needs attribute labels on 'val'"):
        run_pipeline(tiny(dataset=no_attrs, selector="val-worst-class", stages=[{"method": "erm"}, {"method": "dfr"}]),
                     tmp_path / "a", dfr_plugins)
    dfr, by_class = (dfr_plugins.get("mitigations", n) for n in ("dfr", "dfr-class"))
    assert dfr.attribute_splits(spurcore_dfr.DFROptions()) == ("val",)
    assert dfr.attribute_splits(spurcore_dfr.DFROptions(fit_split="train")) == ("val", "train")
    assert by_class.attribute_splits(spurcore_dfr.DFROptions(fit_split="train")) == ()
    summary = run_pipeline(tiny(dataset=no_attrs, selector="val-worst-class",
                                stages=[{"method": "erm"}, {"method": "dfr-class"}]), tmp_path / "c", dfr_plugins)
    assert summary["stages"][1]["method"] == "dfr-class"
    assert set(summary["metrics"]["test"]) == {"avg_acc", "worst_class_acc"}


def test_dfr_on_train_variant_runs(tmp_path, dfr_plugins):
    summary = run_pipeline(tiny(stages=[{"method": "erm"}, {"method": "dfr", "options": {"fit_split": "train", "retrains": 3}}]),
                           tmp_path / "r", dfr_plugins)
    assert 0 <= summary["metrics"]["test"]["worst_group_acc"] <= 1
