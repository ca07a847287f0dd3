"""Train evaluation (`[train] train_eval`): the training split evaluated every epoch, per group,
through the evaluation hooks; the memorization gap in the report; the accuracy-over-epochs
figure; and selectors that see only the splits they declare."""

from __future__ import annotations

import json
import re

import attrs
import numpy as np
import pytest
import torch

from spurcore import hookimpl
from spurcore.config import ConfigError
from spurcore.data import SpuriousData
from spurcore.testing import StopAtEpoch
from spurcore.rundir import RunDir
from spurcore.finished import open_run
from spurcore.planning import RunError
from spurcore.runner import run_pipeline
from spurcore.specs import DatasetSpec, SelectorSpec
from spurcore.testing import TinyOptions, make_tiny

TRAIN = {"epochs": 3, "batch_size": 32, "lr": 0.01}
PNG = b"\x89PNG\r\n\x1a\n"


def quiet(config, out, plugins, **kw):
    return run_pipeline(config, out, plugins, log=lambda message: None, **kw)


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class EvalRecorder:
    """The examples each evaluation pass forwarded, per (stage, epoch, split)."""

    def __init__(self):
        self.seen: dict[tuple[int, int, str], list[int]] = {}
        self.order: list[tuple[int, str]] = []

    @hookimpl
    def spurcore_evaluation_start(self, stage, epoch, split):
        assert not stage.model.training
        self.order.append((epoch, split))
        self.seen[(stage.index, epoch, split)] = []

    @hookimpl
    def spurcore_evaluation_batch(self, stage, epoch, split, batch, logits):
        assert len(logits) == len(batch)
        self.seen[(stage.index, epoch, split)] += batch.index.tolist()


class LazyInputs(torch.utils.data.Dataset):
    """The tiny inputs as a map-style dataset: the split is dataset-backed, not in memory."""

    def __init__(self, inputs):
        self.inputs = inputs

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i]


def lazy_tiny(options: TinyOptions) -> SpuriousData:
    data = make_tiny(options)
    splits = {name: attrs.evolve(split, inputs=LazyInputs(split.inputs)) for name, split in data.splits.items()}
    return SpuriousData(name="tiny-lazy", splits=splits, class_names=data.class_names, attr_names=data.attr_names,
                        input_shape=data.input_shape)


class LazyTiny:
    @hookimpl
    def spurcore_register_datasets(self):
        return [DatasetSpec(name="tiny-lazy", build=lazy_tiny, options=TinyOptions)]


# --- what is evaluated ------------------------------------------------------------------------------


def test_train_is_evaluated_first_every_epoch_through_the_hooks(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    recorder = spur_register_plugin(EvalRecorder())
    summary = quiet(spur_tiny_config(train=TRAIN), tmp_path / "run", spur_plugins)
    assert recorder.order == [(e, s) for e in (1, 2, 3) for s in ("train", "val", "test")]
    for epoch in (1, 2, 3):  # "auto" on in-memory data: every training example
        assert recorder.seen[(0, epoch, "train")] == list(range(200))
    train_rows = [r for r in rows(tmp_path / "run") if r["split"] == "train"]
    assert [r["epoch"] for r in train_rows] == [1, 2, 3]
    assert all(sum(r["group_count"].values()) == 200 for r in train_rows)
    assert summary["stages"][0]["train_eval"] == {"rule": "full", "examples": 200, "of": 200}
    history = RunDir(tmp_path / "run").stage_result("0-erm")["history"]
    assert [h["metrics"]["train"] for h in history] == [{k: r[k] for k in h["metrics"]["train"]} for h, r in
                                                        zip(history, train_rows)]


def test_summary_train_metrics_are_the_selected_models_training_accuracy(spur_plugins, spur_tiny_config, tmp_path):
    summary = quiet(spur_tiny_config(train={**TRAIN, "epochs": 4}), tmp_path / "run", spur_plugins)
    runner = open_run(tmp_path / "run", spur_plugins)
    model, data = runner.load_model(), runner.data  # the checkpoint of the selected epoch
    with torch.no_grad():
        correct = model(data.splits["train"].inputs).argmax(1).numpy() == data.splits["train"].y
    groups = data.groups("train")
    expected = {name: float(correct[groups == g].mean()) for g, name in enumerate(data.group_names)}
    train = summary["metrics"]["train"]
    assert train["group_acc"] == pytest.approx(expected, abs=1e-12)
    assert train["group_count"] == data.group_counts("train")
    assert train["avg_acc"] == pytest.approx(correct.mean(), abs=1e-12)
    assert summary["stages"][0]["metrics"]["train"] == train
    selected = summary["selected"]["epoch"]
    assert [r for r in rows(tmp_path / "run") if r["split"] == "train"][selected - 1]["group_acc"] == train["group_acc"]


def test_a_subset_keeps_up_to_n_of_every_group_the_same_in_every_epoch_stage_and_resume(
        spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    stages = [{"method": "erm"}, {"method": "erm", "name": "again"}]
    config = spur_tiny_config(train={**TRAIN, "train_eval": "subset:30"}, stages=stages)
    recorder = spur_register_plugin(EvalRecorder())
    whole = quiet(config, tmp_path / "whole", spur_plugins)
    data = make_tiny(TinyOptions())
    groups = data.groups("train")
    sizes = np.bincount(groups, minlength=4)
    assert sorted(sizes.tolist()) == [11, 15, 78, 96]  # two groups below N, two above
    positions = recorder.seen[(0, 1, "train")]
    assert positions == sorted(set(positions))
    assert np.bincount(groups[positions], minlength=4).tolist() == np.minimum(sizes, 30).tolist()
    for stage in (0, 1):
        for epoch in (1, 2, 3):
            assert recorder.seen[(stage, epoch, "train")] == positions
    counts = dict(zip(data.group_names, np.minimum(sizes, 30).tolist()))
    assert whole["metrics"]["train"]["group_count"] == counts
    assert whole["stages"][1]["train_eval"] == {"rule": "subset:30", "examples": sum(counts.values()), "of": 200}

    spur_plugins.unregister(recorder)
    resumed = spur_register_plugin(EvalRecorder())
    stopper = spur_register_plugin(StopAtEpoch(2))
    with pytest.raises(KeyboardInterrupt):
        quiet(config, tmp_path / "cut", spur_plugins)
    spur_plugins.unregister(stopper)
    assert quiet(config, tmp_path / "cut", spur_plugins, resume=True) == whole
    assert resumed.seen[(0, 3, "train")] == resumed.seen[(1, 1, "train")] == positions
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")


def test_a_larger_n_keeps_a_smaller_ns_subset(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    seen = []
    for n in (20, 50):
        recorder = spur_register_plugin(EvalRecorder(), f"recorder-{n}")
        quiet(spur_tiny_config(train={**TRAIN, "epochs": 1, "train_eval": f"subset:{n}"}), tmp_path / str(n), spur_plugins)
        spur_plugins.unregister(recorder)
        seen.append(set(recorder.seen[(0, 1, "train")]))
    assert len(seen[0]) == 20 + 11 + 15 + 20 and seen[0] < seen[1]


def test_without_attribute_labels_the_subset_is_per_class_and_there_is_no_figure(
        spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    recorder = spur_register_plugin(EvalRecorder())
    config = spur_tiny_config(selector="val-worst-class", dataset={"name": "tiny", "options": {"attributes": ["val", "test"]}},
                         train={**TRAIN, "train_eval": "subset:40"})
    summary = quiet(config, tmp_path / "run", spur_plugins)
    y = make_tiny(TinyOptions()).splits["train"].y
    positions = recorder.seen[(0, 1, "train")]
    assert np.bincount(y[positions]).tolist() == np.minimum(np.bincount(y), 40).tolist() == [40, 40]
    assert set(summary["metrics"]["train"]) == {"avg_acc", "worst_class_acc"}
    assert not (tmp_path / "run" / "group_acc_epochs.png").exists()
    assert "memorization gap" not in (tmp_path / "run" / "report.md").read_text().split("\n## ")[1]


def test_none_evaluates_no_train(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    recorder = spur_register_plugin(EvalRecorder())
    summary = quiet(spur_tiny_config(train={**TRAIN, "train_eval": "none"}), tmp_path / "run", spur_plugins)
    assert {split for _, split in recorder.order} == {"val", "test"}
    assert {r["split"] for r in rows(tmp_path / "run")} == {"val", "test"}
    assert list(summary["metrics"]) == ["val", "test"] and summary["stages"][0]["train_eval"] is None
    assert not (tmp_path / "run" / "group_acc_epochs.png").exists()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| group | val n | val acc % | test n | test acc % |" in report and "Train columns" not in report


def test_a_post_hoc_stage_evaluates_train_at_epoch_0(spur_plugins, spur_tiny_config, tmp_path):
    config = spur_tiny_config(train=TRAIN, stages=[{"method": "erm"},
                                                   {"method": "tiny-refit", "train": {"train_eval": "subset:10"}}])
    summary = quiet(config, tmp_path / "run", spur_plugins)
    refit = [r for r in rows(tmp_path / "run") if r["stage"] == "1-tiny-refit"]
    assert [(r["epoch"], r["split"]) for r in refit] == [(0, "train"), (0, "val"), (0, "test")]
    assert summary["metrics"]["train"] == summary["stages"][1]["metrics"]["train"]
    assert sum(summary["metrics"]["train"]["group_count"].values()) == 10 * 4
    assert summary["stages"][0]["train_eval"]["rule"] == "full"


# --- training is untouched -----------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["tiny", "tiny-lazy"])
def test_train_evaluation_does_not_change_training(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path, dataset):
    spur_register_plugin(LazyTiny())
    runs = {}
    for train_eval in ("none", "auto"):
        config = spur_tiny_config(dataset={"name": dataset}, train={**TRAIN, "train_eval": train_eval})
        runs[train_eval] = quiet(config, tmp_path / train_eval, spur_plugins)
    for split in ("val", "test"):
        assert runs["none"]["metrics"][split] == runs["auto"]["metrics"][split]
    for epoch in (1, 2, 3):
        a = RunDir(tmp_path / "none").load_checkpoint("0-erm", epoch)
        b = RunDir(tmp_path / "auto").load_checkpoint("0-erm", epoch)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    # dataset-backed training data: "auto" evaluates a per-group subset of up to 2000 (here all 200)
    rule = "full" if dataset == "tiny" else "subset:2000"
    assert runs["auto"]["stages"][0]["train_eval"] == {"rule": rule, "examples": 200, "of": 200}


# --- the settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["subset:0", "subset:-3", "subset:", "subset:x", "half", "Full", ""])
def test_a_bad_train_eval_names_the_key(spur_tiny_config, spur_plugins, tmp_path, bad):
    with pytest.raises(ConfigError, match=r"train\.train_eval: must be \"auto\", \"full\", \"subset:N\""):
        spur_tiny_config(train={**TRAIN, "train_eval": bad})
    with pytest.raises(ConfigError, match=r"stages\[0\]\.train\.train_eval: must be"):
        quiet(spur_tiny_config(stages=[{"method": "erm", "train": {"train_eval": bad}}]), tmp_path / "run", spur_plugins)
    assert not (tmp_path / "run").exists()


# --- report, show, figure ---------------------------------------------------------------------------


def table(text):
    """{group: cells} of the first group table in `text`, and its header cells."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        body.setdefault(cells[0], dict(zip(head, cells)))
    return head, body


def test_report_and_show_give_the_memorization_gap_of_every_group(spur_plugins, spur_tiny_config, spur_cli, tmp_path):
    summary = quiet(spur_tiny_config(train={**TRAIN, "train_eval": "subset:30"}), tmp_path / "run", spur_plugins)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Train columns: `train_eval` subset:30, a fixed subset of up to 30 examples of every group" in report
    assert f"{sum(summary['metrics']['train']['group_count'].values())} of 200 training examples" in report
    head, body = table(report)
    assert head == ["group", "train n", "train acc %", "val n", "val acc %", "test n", "test acc %",
                    "memorization gap (train - test, pts)"]
    train, test = summary["metrics"]["train"], summary["metrics"]["test"]
    for group in train["group_acc"]:
        gap = float(body[group]["memorization gap (train - test, pts)"])
        assert gap == pytest.approx(100 * (train["group_acc"][group] - test["group_acc"][group]), abs=0.051)
        assert float(body[group]["train acc %"]) == pytest.approx(100 * train["group_acc"][group], abs=0.051)
        assert int(body[group]["train n"]) == train["group_count"][group]
    shown = spur_cli("show", tmp_path / "run")
    assert shown.exit_code == 0, shown.output
    assert table(shown.output) == (head, body)
    assert re.search(r"^Train columns: `train_eval` subset:30", shown.output, re.M)


def test_the_accuracy_over_epochs_figure(spur_plugins, spur_tiny_config, tmp_path):
    quiet(spur_tiny_config(train=TRAIN, stages=[{"method": "erm"}, {"method": "erm", "name": "more"}, {"method": "tiny-refit"}]),
          tmp_path / "run", spur_plugins)
    figure = tmp_path / "run" / "group_acc_epochs.png"
    assert figure.read_bytes()[:8] == PNG
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(figure).shape
    assert width > 1.5 * height  # one panel per train stage: two side by side
    assert not list((tmp_path / "run").glob(".*.tmp"))


# --- selectors see only the splits they declare -------------------------------------------------------


class Selectors:
    def __init__(self):
        self.seen: dict[str, set[str]] = {"peek": set(), "train-fit": set()}

    def peek(self, candidate):
        self.seen["peek"] |= set(candidate.metrics)
        return candidate.metrics["val"]["avg_acc"]

    def train_fit(self, candidate):
        self.seen["train-fit"] |= set(candidate.metrics)
        return candidate.metrics["train"]["avg_acc"]

    @hookimpl
    def spurcore_register_selectors(self):
        return [SelectorSpec(name="peek", score=self.peek, metrics=["avg_acc"]),
                SelectorSpec(name="train-fit", score=self.train_fit, metrics=["avg_acc"], splits=("val", "train")),
                SelectorSpec(name="holdout", score=self.peek, splits=("holdout",))]


def test_a_selector_sees_train_only_when_it_declares_it(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    selectors = spur_register_plugin(Selectors())
    quiet(spur_tiny_config(selector="peek", train={**TRAIN, "scheduler": "plateau"}), tmp_path / "peek", spur_plugins)
    assert selectors.seen["peek"] == {"val"}  # selection and the plateau scheduler alike
    summary = quiet(spur_tiny_config(selector="train-fit", train={**TRAIN, "epochs": 4}), tmp_path / "fit", spur_plugins)
    assert selectors.seen["train-fit"] == {"val", "train"}
    train = [r["avg_acc"] for r in rows(tmp_path / "fit") if r["split"] == "train"]
    assert summary["selected"]["epoch"] == int(np.argmax(train)) + 1


def test_a_selector_reading_a_split_that_is_not_there_is_refused(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
    spur_register_plugin(Selectors())
    with pytest.raises(RunError, match=r"selector 'holdout' reads the metrics of split 'holdout', and dataset 'tiny' has none"):
        quiet(spur_tiny_config(selector="holdout"), tmp_path / "a", spur_plugins)
    with pytest.raises(ConfigError, match=r"stages\[0\]\.train\.train_eval: selector 'train-fit' reads the metrics of 'train'"):
        quiet(spur_tiny_config(selector="train-fit", train={**TRAIN, "train_eval": "none"}), tmp_path / "b", spur_plugins)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
