"""DFR: the protocol's pieces, and the stage on the tiny dataset."""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import spurcore_dfr
from spurcore_dfr import stage
from spurcore.api import Embeddings, RunError, SplitEmbeddings, open_run, run_pipeline
from spurcore.testing import mitigation_conformance

TestConformanceDFR = mitigation_conformance("dfr", plugin=spurcore_dfr, options={"retrains": 3})
TestConformanceDFRClass = mitigation_conformance("dfr-class", plugin=spurcore_dfr, options={"retrains": 3})


@pytest.fixture
def dfr_plugins(spur_plugins):
    """The test kit's manager (built-ins and the tiny dataset) with this plugin registered."""
    spur_plugins.register(spurcore_dfr, "dfr")
    return spur_plugins


def separable(n=200, d=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, d)) + 2.0 * y[:, None] * np.eye(d)[0]
    return x, y


def test_fit_folds_standardization_into_the_head():
    x, y = separable()
    fit = spurcore_dfr.fit_l1(x, y, c=0.5, n_classes=2)
    mean, std = x.mean(0), x.std(0)
    reference = LogisticRegression(**spurcore_dfr.L1_PENALTY, solver="liblinear", C=0.5, random_state=0)
    reference.fit((x - mean) / std, y)
    logits = fit.logits(x)
    assert np.allclose(logits[:, 1] - logits[:, 0], reference.decision_function((x - mean) / std), atol=1e-8)
    assert np.array_equal(logits.argmax(1), reference.predict((x - mean) / std))


def test_given_statistics_standardize_instead_of_the_fitted_data_own():
    x, y = separable()
    other = spurcore_dfr.Standardizer.of(3.0 * x[:50] + 1.0)  # e.g. the training split's
    fit = spurcore_dfr.fit_l1(x, y, c=0.5, n_classes=2, scale=other)
    scaled = (x - other.mean) / other.std
    reference = LogisticRegression(**spurcore_dfr.L1_PENALTY, solver="liblinear", C=0.5, random_state=0).fit(scaled, y)
    logits = fit.logits(x)
    assert np.allclose(logits[:, 1] - logits[:, 0], reference.decision_function(scaled), atol=1e-8)
    assert not np.allclose(fit.coef, spurcore_dfr.fit_l1(x, y, c=0.5, n_classes=2).coef)


def test_the_fit_is_l1_sparse_at_small_c():
    x, y = separable(n=400, d=20)  # only feature 0 carries the class
    coef = spurcore_dfr.fit_l1(x, y, c=0.05, n_classes=2).coef[1]
    assert coef[0] > 0
    assert np.sum(coef[1:] == 0) >= 15  # an L2 fit leaves all 19 irrelevant weights nonzero
    l2 = LogisticRegression(solver="liblinear", C=0.05, random_state=0).fit(x, y)  # default penalty: L2
    assert np.all(l2.coef_ != 0)


@pytest.mark.parametrize("version, spelling", [
    ("1.3.2", {"penalty": "l1"}), ("1.7.2", {"penalty": "l1"}), ("1.8.0", {"l1_ratio": 1.0}),
    ("1.10.0.dev0", {"l1_ratio": 1.0}), ("2.0rc1", {"l1_ratio": 1.0}),
])
def test_l1_is_spelled_for_the_installed_scikit_learn(version, spelling):
    assert spurcore_dfr.l1_penalty(version) == spelling


def labelled(x, y):
    return spurcore_dfr.Labelled(x, y, y)


def test_c_is_chosen_on_the_held_out_half_and_fitted_on_a_balanced_other_half(monkeypatch):
    x, y = separable(n=101)
    x[:, -1] = np.arange(len(y))  # the last column tells which rows each step saw
    fitted, scored = [], []
    real_fit, real_score = spurcore_dfr.fit_l1, spurcore_dfr.worst_accuracy
    monkeypatch.setattr(stage, "fit_l1",
                        lambda x, y, c, n, scale=None: fitted.append(x[:, -1].copy()) or real_fit(x, y, c, n, scale))
    monkeypatch.setattr(stage, "worst_accuracy",
                        lambda fit, data: scored.append(data.x[:, -1].copy()) or real_score(fit, data))
    rng = np.random.default_rng(0)
    held_out, rest = spurcore_dfr.halve(labelled(x, y), rng)
    tuning = spurcore_dfr.tune_c(rest, held_out, [1.0, 0.1], 2, rng)
    assert len(fitted) == len(scored) == 2 and set(tuning.scores) == {1.0, 0.1}
    fit_rows, eval_rows = set(fitted[0].astype(int)), set(scored[0].astype(int))
    assert not fit_rows & eval_rows
    assert len(eval_rows) == tuning.scored == 50  # the first half of the shuffled 101
    assert set(fitted[1].astype(int)) == fit_rows and len(fit_rows) == tuning.fitted  # one subset for every C
    assert np.bincount(y[list(fit_rows)]).tolist()[0] == np.bincount(y[list(fit_rows)]).tolist()[1]
    assert tuning.best == max([1.0, 0.1], key=tuning.scores.get)


def test_ties_go_to_the_first_c_in_the_grid():
    x, y = separable(n=200)
    x[:, 0] += 10.0 * y  # far apart: every C classifies every example
    data = labelled(x, y)
    tuning = spurcore_dfr.tune_c(data, data, [0.3, 1.0, 0.7], 2, np.random.default_rng(0))
    assert tuning.scores == {0.3: 1.0, 1.0: 1.0, 0.7: 1.0}
    assert tuning.best == 0.3


def test_final_head_is_the_average_of_fits_on_fresh_balanced_subsets():
    x, y = separable(n=120)
    scale = spurcore_dfr.Standardizer.of(x[:40])
    averaged = spurcore_dfr.average_fits(labelled(x, y), 0.3, 3, 2, np.random.default_rng(7), scale)
    rng = np.random.default_rng(7)
    fits = []
    for _ in range(3):
        subset = stage.balanced_subset(y, rng)
        fits.append(spurcore_dfr.fit_l1(x[subset], y[subset], 0.3, 2, scale))
    assert np.allclose(averaged.coef, np.mean([f.coef for f in fits], 0))
    assert np.allclose(averaged.intercept, np.mean([f.intercept for f in fits], 0))
    assert not np.allclose(fits[0].coef, fits[1].coef)  # the subsets really were fresh


def marked_embeddings(seed=0):
    """Train and val embeddings whose last feature names the row: train rows 1000 + i, val rows
    -(1 + i); train is imbalanced (its smallest group has 10 examples), val has 30 per group."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name, counts, mark in (("train", [200, 10, 20, 150], lambda i: 1000 + i), ("val", [30] * 4, lambda i: -1 - i)):
        g = np.repeat(np.arange(4), counts)
        y, a = g // 2, g % 2
        x = rng.normal(0, 1, (len(g), 4)) + np.c_[2.0 * y, 2.0 * a, np.zeros((len(g), 2))]
        x[:, -1] = mark(np.arange(len(g)))
        splits[name] = SplitEmbeddings(features=x, y=y, a=a)
    return Embeddings(splits)


def test_dfr_on_train_fits_balanced_training_rows_and_scores_on_all_of_val(monkeypatch):
    embeddings = marked_embeddings()
    fitted, scored = [], []
    real_fit, real_score = spurcore_dfr.fit_l1, spurcore_dfr.worst_accuracy
    monkeypatch.setattr(stage, "fit_l1", lambda x, y, c, n, scale=None: fitted.append(
        (x[:, -1].astype(int), scale)) or real_fit(x, y, c, n, scale))
    monkeypatch.setattr(stage, "worst_accuracy",
                        lambda fit, data: scored.append(data.x[:, -1].astype(int)) or real_score(fit, data))
    options = spurcore_dfr.DFROptions(fit_split="train", retrains=3, c_grid=[1.0, 0.1])
    head, record = spurcore_dfr.dfr_head(embeddings, options, "group", n_classes=2, n_attrs=2)
    train = embeddings["train"]
    groups = 2 * train.y + train.a
    assert len(fitted) == 2 + 3
    for rows, scale in fitted:
        assert np.all(rows >= 1000)  # training rows only
        assert np.bincount(groups[rows - 1000]).tolist() == [10, 10, 10, 10]
        assert np.allclose(scale.mean, train.features.mean(0))  # standardized with train's statistics
    assert all(sorted(rows) == list(range(-120, 0)) for rows in map(sorted, scored))  # all of val, for each C
    assert record["tuning"] == {"fitted_on": "train", "fitted": 40, "scored_on": "val", "scored": 120,
                                "standardized_with": "train"}
    assert record["final"] == {"fitted_on": "train", "fits": 3, "examples_per_fit": 40, "standardized_with": "train"}
    on_val, _ = spurcore_dfr.dfr_head(embeddings, attrs.evolve(options, fit_split="val"), "group", 2, 2)
    assert not np.allclose(head.coef, on_val.coef)


def test_reference_standardization_tunes_with_the_subset_and_refits_with_train(monkeypatch):
    embeddings = marked_embeddings()
    scales = []
    real_fit = spurcore_dfr.fit_l1
    monkeypatch.setattr(stage, "fit_l1",
                        lambda x, y, c, n, scale=None: scales.append(scale) or real_fit(x, y, c, n, scale))
    options = spurcore_dfr.DFROptions(retrains=3, c_grid=[1.0, 0.1])
    _, record = spurcore_dfr.dfr_head(embeddings, options, "group", 2, 2)
    assert scales[:2] == [None, None]  # tuning on half of val: the fitted subset's own statistics
    assert all(np.allclose(s.mean, embeddings["train"].features.mean(0)) for s in scales[2:])
    val = embeddings["val"]
    _, tuned_on = spurcore_dfr.halve(spurcore_dfr.Labelled(val.features, val.y, 2 * val.y + val.a),
                                     np.random.default_rng(options.seed))
    assert record["tuning"] == {"fitted_on": "val", "fitted": 4 * np.bincount(tuned_on.labels).min(),
                                "scored_on": "val", "scored": 60, "standardized_with": "fitted subset"}
    assert record["final"]["standardized_with"] == "train" and record["final"]["examples_per_fit"] == 120
    scales.clear()
    _, record = spurcore_dfr.dfr_head(embeddings, attrs.evolve(options, standardize="subset"), "group", 2, 2)
    assert scales == [None] * 5 and record["final"]["standardized_with"] == "fitted subset"


def tiny(**overrides):
    from spurcore.api import pipeline_from_dict
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


def test_dfr_on_train_variant_fits_on_train(tmp_path, dfr_plugins, spur_tiny_data):
    stages = [{"method": "erm"}, {"method": "dfr", "options": {"fit_split": "train", "retrains": 3}}]
    run_pipeline(tiny(stages=stages), tmp_path / "r", dfr_plugins)
    report = json.loads((tmp_path / "r" / "checkpoints" / "1-dfr" / "dfr.json").read_text())
    data = spur_tiny_data
    smallest = {name: np.bincount(2 * data.splits[name].y + data.splits[name].a).min() for name in ("train", "val")}
    assert smallest["train"] != smallest["val"]  # so the sizes below tell the splits apart
    assert report["tuning"] == {"fitted_on": "train", "fitted": 4 * smallest["train"], "scored_on": "val",
                                "scored": len(data.splits["val"].y), "standardized_with": "train"}
    assert report["final"] == {"fitted_on": "train", "fits": 3, "examples_per_fit": 4 * smallest["train"],
                               "standardized_with": "train"}
    model = open_run(tmp_path / "r", dfr_plugins).load_model()
    run_pipeline(tiny(stages=[stages[0], {"method": "dfr", "options": {"retrains": 3}}]), tmp_path / "v", dfr_plugins)
    on_val = open_run(tmp_path / "v", dfr_plugins).load_model()
    assert not torch.allclose(model.head.weight, on_val.head.weight)


def test_standardizer_reduces_in_chunks_to_the_whole_arrays_statistics(monkeypatch):
    from spurcore_dfr import stage

    x = np.random.default_rng(0).normal(3.0, 2.0, size=(1001, 5)).astype(np.float32)
    x[:, 4] = 7.0  # a constant feature: std reads as 1
    monkeypatch.setattr(stage, "CHUNK_BYTES", 8 * 5 * 64)  # 64 rows at a time: 16 chunks
    scale = stage.Standardizer.of(x)
    assert np.allclose(scale.mean, x.astype(np.float64).mean(0), atol=1e-9)
    assert np.allclose(scale.std[:4], x[:, :4].astype(np.float64).std(0), atol=1e-9) and scale.std[4] == 1.0
