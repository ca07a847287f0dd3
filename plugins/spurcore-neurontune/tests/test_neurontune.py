"""NeuronTune and SFit: the spuriousness score, the bias dimensions, the stage and the selector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spurcore_neurontune as nt
from spurcore.api import ConfigError, pipeline_from_dict, run_pipeline
from spurcore.testing import mitigation_conformance, tiny_pipeline

TestConformance = mitigation_conformance("neurontune", plugin=nt, options={"epochs": 3})


@pytest.fixture
def nt_plugins(spur_plugins):
    """The test kit's manager (built-ins and the tiny dataset) with this plugin registered."""
    spur_plugins.register(nt, "neurontune")
    return spur_plugins


def test_delta_is_the_median_difference_per_class():
    # class 0: wrong rows have feature values 5, 7 (median 6); right rows 1, 2, 3 (median 2)
    # class 1: wrong row 0 (median 0); right rows 4, 10 (median 7)
    features = np.array([[5.0], [7.0], [1.0], [2.0], [3.0], [0.0], [4.0], [10.0]])
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    correct = np.array([False, False, True, True, True, False, True, True])
    delta = nt.spuriousness(features, y, correct, 2)
    assert delta.tolist() == [[6 - 2, 0 - 7]]
    assert nt.sfit(delta) == 4 + 7
    assert nt.bias_dimensions(delta, "all").tolist() == []
    assert nt.bias_dimensions(delta, "any").tolist() == [0]
    assert nt.above_per_class(delta) == [1, 0]   # positive in class 0 only: "all" selects nothing
    # a class with no misclassified example leaves its column at 0 (undefined, never "above")
    assert nt.spuriousness(features, y, np.ones(8, bool), 2).tolist() == [[0.0, 0.0]]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n_classes=st.integers(2, 4), n_noise=st.integers(0, 6),
       strength=st.floats(1.0, 4.0))
def test_a_dimension_active_on_the_errors_of_every_class_is_found_and_the_core_one_is_not(
        seed, n_classes, n_noise, strength):
    """Generated linear data: one core dimension per class (high for its own class), one
    purely spurious dimension that is on for a random 30% of examples, and noise. The model
    errs where the spurious feature is on and the example's own core evidence is below average."""
    rng = np.random.default_rng(seed)
    n = 600
    y = rng.integers(0, n_classes, n)
    core = np.eye(n_classes)[y] * 2.0 + rng.normal(0, 0.5, (n, n_classes))
    spurious_on = rng.random(n) < 0.3
    spurious = strength * spurious_on + rng.normal(0, 0.3, n)
    features = np.column_stack([core, spurious, rng.normal(0, 1, (n, n_noise))])
    weak = core[np.arange(n), y] < 2.0  # below its class's mean evidence
    correct = ~(spurious_on & weak)
    delta = nt.spuriousness(features, y, correct, n_classes)
    chosen = set(nt.bias_dimensions(delta, "all", 0.0).tolist())
    assert n_classes in chosen  # the spurious dimension
    assert not chosen & set(range(n_classes))  # no core dimension


def test_retrained_head_ignores_the_zeroed_dimensions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    features = np.column_stack([2.0 * y - 1 + rng.normal(0, 0.5, 300), rng.normal(0, 1, 300)]).astype(np.float32)
    head = torch.nn.Linear(2, 2)
    new = nt.retrain_head(head, features, y, np.array([1]), nt.NeuronTuneOptions(epochs=30, lr=0.05))
    assert torch.all(new.weight[:, 1] == 0)
    assert (nt.predictions(new, features) == y).mean() > 0.9


def test_identification_on_the_training_set_is_refused_unless_forced(tmp_path, nt_plugins):
    config = pipeline_from_dict(tiny_pipeline(
        stages=[{"method": "erm"}, {"method": "neurontune", "options": {"identification_split": "train"}}]))
    with pytest.raises(ConfigError, match=r"stages\[1\].options.identification_split: refusing the training set"):
        run_pipeline(config, tmp_path / "a", nt_plugins)
    assert nt.NeuronTuneOptions(identification_split="train", force_train_identification=True)


def test_stage_and_sfit_selector_run_without_attribute_labels(tmp_path, nt_plugins):
    config = pipeline_from_dict(tiny_pipeline(
        selector="sfit", dataset={"name": "tiny", "options": {"attributes": False}}, train={"epochs": 3},
        stages=[{"method": "erm"}, {"method": "neurontune", "options": {"epochs": 5}}]))
    summary = run_pipeline(config, tmp_path / "r", nt_plugins)
    assert summary["selected"]["selector"] == "sfit"
    assert set(summary["metrics"]["test"]) == {"avg_acc", "worst_class_acc"}
    folder = tmp_path / "r" / "checkpoints" / "1-neurontune"
    saved = json.loads((folder / "neurontune.json").read_text())
    delta = np.array(saved["delta"])
    assert delta.shape == (16, 2) and np.isclose(saved["sfit"], np.abs(delta).sum())
    assert saved["bias_dimensions"] == nt.bias_dimensions(delta, "all", 0.0).tolist()
    assert saved["above_per_class"] == [int((delta[:, c] > 0).sum()) for c in range(delta.shape[1])]
    assert (folder / "delta.png").read_bytes()[:4] == b"\x89PNG"


def test_sfit_selector_scores_each_epoch_by_its_own_model(tmp_path, nt_plugins):
    from spurcore.api import Candidate, open_run

    config = pipeline_from_dict(tiny_pipeline(selector="sfit", train={"epochs": 3}))
    summary = run_pipeline(config, tmp_path / "r", nt_plugins)
    runner = open_run(tmp_path / "r", nt_plugins)
    history = runner.out.stage_result("0-erm")["history"]
    scores = [nt.sfit_score(Candidate(stage="0-erm", epoch=h["epoch"], metrics=h["metrics"], data=runner.data,
                                      load_model=lambda e=h["epoch"]: runner.load_model(0, e)))
              for h in history]
    assert summary["selected"]["epoch"] == int(np.argmax(scores)) + 1
    assert len(set(np.round(scores, 6))) > 1


def test_a_split_the_data_lacks_stops_the_run_before_erm_trains(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    spur_register_plugin(nt, "neurontune")
    config = spur_tiny_config(stages=[{"method": "erm"}, {"method": "neurontune", "options": {"identification_split": "foo"}}])
    with pytest.raises(nt.NeuronTuneError, match=r"stages\[1\]\.options: identification_split: dataset 'tiny' has no "
                                                 r"split 'foo' \(train, val, test\)"):
        run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda m: None)
    assert not (tmp_path / "run").exists()
