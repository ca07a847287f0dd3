"""Inference variants (a stage's model evaluated several ways after every epoch, the selector
choosing among (epoch, variant)) and a fine-tuning stage's epoch 0 (the model it starts from,
a candidate like any epoch)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spurcore import hookimpl
from spurcore.api import MitigationSpec, open_run, pipeline_from_dict, run_pipeline
from spurcore.testing import kit_manager, tiny_pipeline


class Flip(nn.Module):
    """Leaves the logits alone, or swaps the two classes' logits ("flip")."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "plain"

    def forward(self, x):
        return x.flip(-1) if self.mode == "flip" else x


def set_mode(model, mode):
    for module in model.modules():
        if isinstance(module, Flip):
            module.mode = mode


class FlipStage:
    """Trains as ERM; at inference the logits (or the features) may be reversed: "plain"
    first, then "flip"."""

    def __init__(self, features: bool = False) -> None:
        self.features = features

    @hookimpl
    def spurcore_prepare_model(self, model):
        if self.features:
            model.embed = nn.Sequential(model.embed, Flip())
        else:
            model.head = nn.Sequential(model.head, Flip())

    @hookimpl
    def spurcore_inference_variants(self, model):
        return {mode: (lambda m, mode=mode: set_mode(m, mode)) for mode in ("plain", "flip")}


class AscentStage:
    """A fine-tuning stage that only hurts: gradient ascent on the cross-entropy."""

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        return -F.cross_entropy(model(batch.x), batch.y)


class Plugin:
    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="flip", factory=lambda o: FlipStage()),
                MitigationSpec(name="flip-features", factory=lambda o: FlipStage(features=True)),
                MitigationSpec(name="ascent", factory=lambda o: AscentStage(), fine_tunes=True,
                               train_defaults={"lr": 0.5})]


def manager():
    return kit_manager([(Plugin(), "variants-test")])


def run(tmp_path, name, stages, **overrides):
    config = pipeline_from_dict(tiny_pipeline(stages=stages, **overrides))
    return run_pipeline(config, tmp_path / name, manager(), log=lambda m: None), tmp_path / name


def test_every_epoch_is_evaluated_in_every_variant_and_the_selector_chooses_the_pair(tmp_path):
    # the selector is val worst-class accuracy; with logits swapped, the model is wrong where it was right
    summary, out = run(tmp_path, "flip", [{"method": "flip"}], selector="val-worst-class")
    result = json.loads((out / "checkpoints" / "0-flip" / "result.json").read_text())
    history = result["history"]
    assert [list(h["variants"]) for h in history] == [["plain", "flip"]] * 3
    for h in history:
        assert h["metrics"] == h["variants"]["plain"]
        plain, flip = h["variants"]["plain"]["test"]["avg_acc"], h["variants"]["flip"]["test"]["avg_acc"]
        assert plain + flip == pytest.approx(1.0)  # two classes: flipping turns every right answer wrong
    pairs = [(h["epoch"], v, h["variants"][v]["val"]["worst_class_acc"]) for h in history for v in ("plain", "flip")]
    epoch, variant, score = max(pairs, key=lambda p: p[2])  # max keeps the first of equal scores
    selected = result["selected"]
    assert (selected["epoch"], selected["variant"], selected["score"]) == (epoch, variant, score)
    assert result["metrics"] == next(h for h in history if h["epoch"] == epoch)["variants"][variant]
    assert summary["selected"]["variant"] == variant
    # the model read back is in the selected variant; another epoch comes back in the first one
    finished = open_run(out, manager())
    model = finished.load_model()
    assert {m.mode for m in model.modules() if isinstance(m, Flip)} == {variant}
    other = next(e for e in (1, 2, 3) if e != epoch)
    assert {m.mode for m in finished.load_model(epoch=other).modules() if isinstance(m, Flip)} == {"plain"}


def test_a_later_stage_starts_from_the_selected_variant(tmp_path):
    summary, out = run(tmp_path, "two", [{"method": "flip-features"}, {"method": "tiny-refit"}], selector="val-worst-class")
    variant = summary["stages"][0]["selected"]["variant"]
    model = open_run(out, manager()).load_model()
    assert {m.mode for m in model.modules() if isinstance(m, Flip)} == {variant}


def test_a_fine_tuning_stage_can_keep_the_model_it_started_from(tmp_path):
    erm_summary, erm = run(tmp_path, "erm", [{"method": "erm"}])
    summary, out = run(tmp_path, "ascent", [{"method": "ascent"}], init={"run": str(erm)})
    result = json.loads((out / "checkpoints" / "0-ascent" / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [0, 1, 2, 3]
    assert result["history"][0]["train_loss"] is None
    # epoch 0 is ERM's selected model, evaluated again; ascent only hurts, so it is kept
    assert result["history"][0]["metrics"]["test"] == erm_summary["metrics"]["test"]
    assert result["selected"]["epoch"] == 0
    assert result["selected"]["start_score"] == result["selected"]["score"]
    assert summary["metrics"]["test"] == erm_summary["metrics"]["test"]
    erm_weights = open_run(erm, manager()).load_model().state_dict()
    kept = open_run(out, manager()).load_model().state_dict()
    assert all(torch.equal(kept[k], v) for k, v in erm_weights.items())
    assert "the starting model's (epoch 0)" in (out / "report.md").read_text()


def test_a_fine_tuning_stage_interrupted_after_epoch_0_resumes(tmp_path):
    from spurcore.testing import StopAtEpoch

    _, erm = run(tmp_path, "erm", [{"method": "erm"}])
    config = pipeline_from_dict(tiny_pipeline(stages=[{"method": "ascent"}], init={"run": str(erm)}))
    plugins = manager()
    stop = StopAtEpoch(2)
    plugins.register(stop, "stop")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, tmp_path / "cut", plugins, log=lambda m: None)
    plugins.unregister(stop)
    resumed = run_pipeline(config, tmp_path / "cut", plugins, resume=True, log=lambda m: None)
    whole = run_pipeline(config, tmp_path / "whole", manager(), log=lambda m: None)
    assert resumed["stages"][0]["metrics"] == whole["stages"][0]["metrics"]
    history = json.loads((tmp_path / "cut" / "checkpoints" / "0-ascent" / "result.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
