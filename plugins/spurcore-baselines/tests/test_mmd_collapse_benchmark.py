"""benchmarks/mmd_collapse.py on a sweep-shaped folder of tiny runs (ERM and MMD): the penalty,
its diagonal part, the cross-entropy and the environments' make-up, against numbers worked out
here from the same runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spurcore_baselines
from spurcore.api import extract, open_run, run_pipeline

_spec = importlib.util.spec_from_file_location(
    "mmd_collapse", Path(__file__).resolve().parents[3] / "benchmarks" / "mmd_collapse.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture
def sweep(tmp_path, spur_plugins, spur_register_plugin, spur_tiny_config):
    spur_register_plugin(spurcore_baselines)
    for method, folder in (("erm", "erm/default"), ("mmd", "mmd/mmd.penalty=10")):
        options = {"penalty": 10.0} if method == "mmd" else {}
        config = spur_tiny_config(stages=[{"method": method, "options": options}], train={"epochs": 2, "batch_size": 32, "lr": 0.01})
        run_pipeline(config, tmp_path / folder / "seed0", spur_plugins, quiet=True)
    return tmp_path


def test_the_measures_match_those_worked_out_from_the_runs(sweep, spur_plugins):
    found = bench.settings(sweep)
    assert sorted(found) == ["erm", "mmd mmd.penalty=10"]
    run_dir = found["mmd mmd.penalty=10"] / "seed0"
    row = bench.measure(run_dir, spur_plugins, batch_size=32, seed=3)

    run = open_run(run_dir, spur_plugins)
    model = run.load_model()
    train = extract(model, run.data, run.device, splits=("train",))["train"]
    logits = model.head(torch.from_numpy(train.features))
    assert row["cross_entropy"] == pytest.approx(F.cross_entropy(logits, torch.from_numpy(np.array(train.y))).item(), rel=1e-5)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert row["test_worst_group"] == summary["metrics"]["test"]["worst_group_acc"]
    # the environments' make-up: each attribute value's share of each class, summing to 1
    for attribute, shares in row["environments"].items():
        index = run.data.attr_names.index(attribute)
        assert sum(shares.values()) == pytest.approx(1.0, abs=2e-3)
        first = run.data.class_names[0]
        assert shares[first] == pytest.approx(np.mean(train.y[train.a == index] == 0), abs=1e-3)
    # the same batches drawn again: the diagonal part is 7 x (1/n_x + 1/n_y); the bandwidths'
    # shares add up to the penalty
    generator = torch.Generator().manual_seed(3)
    a = torch.from_numpy(np.array(train.a))
    diagonal = []
    for _ in range(bench.BATCHES):
        rows = torch.randperm(len(a), generator=generator)[:32]
        counts = torch.bincount(a[rows], minlength=2)
        diagonal.append(7 * (1 / counts[0] + 1 / counts[1]).item() if (counts >= 2).all() else 0.0)
    assert row["diagonal"] == pytest.approx(np.mean(diagonal), rel=1e-5)
    assert sum(row["penalty_per_gamma"].values()) == pytest.approx(row["penalty"], rel=1e-4)
    assert row["unbiased"] < row["penalty"] and row["spread"] > 0  # kernel values are at most 7: biased >= unbiased
