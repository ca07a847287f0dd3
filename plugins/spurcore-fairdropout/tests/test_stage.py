"""FairDropout as a pipeline stage on the tiny dataset."""

from __future__ import annotations

import pytest
import torch

import spurcore_fairdropout as fdp
from spurcore import hookimpl
from spurcore.api import ConfigError, open_run, pipeline_from_dict, run_pipeline
from spurcore.testing import mitigation_conformance, tiny_pipeline

TestConformance = mitigation_conformance("fairdropout", plugin=fdp)


@pytest.fixture
def fd_plugins(spur_plugins):
    spur_plugins.register(fdp, "fairdropout")
    return spur_plugins


class MaskRecorder:
    """Records, for every training batch, each example's per-unit multiplier."""

    def __init__(self):
        self.seen = {}

    @hookimpl
    def spurcore_epoch_start(self, stage, epoch):
        if epoch > 1:
            return
        for module in stage.model.modules():
            if isinstance(module, fdp.FairDropout):
                module.register_forward_hook(self.record)

    def record(self, module, inputs, output):
        if module.training:
            scale = module.unit_scale(inputs[0])
            for i, row in zip(module.context.index.tolist(), scale):
                self.seen.setdefault(i, []).append(row.clone())


def fd_config(**options):
    return pipeline_from_dict(tiny_pipeline(selector="val-worst-class", train={"epochs": 3, "batch_size": 16},
                                            stages=[{"method": "fairdropout", "options": options}]))


def test_each_example_keeps_the_same_units_in_every_epoch(tmp_path, fd_plugins):
    recorder = MaskRecorder()
    fd_plugins.register(recorder, "recorder")
    run_pipeline(fd_config(p_gen=0.25, p_mem=0.5, placement=["features"]), tmp_path / "r", fd_plugins)
    assert len(recorder.seen) == 200 and all(len(rows) == 3 for rows in recorder.seen.values())
    for rows in recorder.seen.values():
        assert all(torch.equal(rows[0], r) for r in rows[1:])  # batch composition differs by epoch
    masks = torch.stack([rows[0] for rows in recorder.seen.values()])
    assert torch.all(masks[:, :4] == 1)  # 16 hidden units, p_gen 0.25: the first 4 always on
    assert 0.3 < masks[:, 4:].mean().item() < 0.7
    assert len({tuple(m.tolist()) for m in masks}) > 100  # examples differ from each other


def test_layers_are_inserted_where_asked_and_rebuilt_on_reload(tmp_path, fd_plugins):
    summary = run_pipeline(fd_config(placement=["0", "features"]), tmp_path / "r", fd_plugins)
    model = open_run(tmp_path / "r", fd_plugins).load_model()
    layers = [m for m in model.modules() if isinstance(m, fdp.FairDropout)]
    assert len(layers) == 2 and {l.seed for l in layers} == {0, 1}
    assert isinstance(model.embed[0][0][1], fdp.FairDropout)  # after the MLP's first module
    assert 0 <= summary["metrics"]["test"]["avg_acc"] <= 1


def test_unknown_placement_names_the_modules_there_are(tmp_path, fd_plugins):
    with pytest.raises(fdp.FairDropoutError, match=r"placement 'block9'.*top-level modules: 0, 1"):
        run_pipeline(fd_config(placement=["block9"]), tmp_path / "r", fd_plugins)
    with pytest.raises(ConfigError, match=r"p_mem: must be in \[0, 1\]"):
        run_pipeline(fd_config(p_mem=1.5), tmp_path / "s", fd_plugins)


def test_fairdropout_then_dfr_runs_on_the_model_in_inference_mode(tmp_path, fd_plugins):
    dfr = pytest.importorskip("spurcore_dfr")
    fd_plugins.register(dfr, "dfr")
    config = pipeline_from_dict(tiny_pipeline(
        selector="val-worst-class", train={"epochs": 2},
        stages=[{"method": "fairdropout", "options": {"p_gen": 0.5, "placement": ["features"], "inference": "drop"}},
                {"method": "dfr"}]))
    summary = run_pipeline(config, tmp_path / "r", fd_plugins)
    assert [s["method"] for s in summary["stages"]] == ["fairdropout", "dfr"]
    model = open_run(tmp_path / "r", fd_plugins).load_model()
    weights = model.head.weight.detach()
    assert torch.all(weights[:, 8:] == 0)  # DFR saw the memorizing half of the features at zero


def test_the_inference_mode_is_chosen_with_the_epoch_without_retraining(tmp_path, fd_plugins):
    import json

    config = pipeline_from_dict(tiny_pipeline(
        selector="val-worst-class", train={"epochs": 2},
        stages=[{"method": "fairdropout", "options": {"p_gen": 0.5, "p_mem": 0.5, "placement": ["features"]}}]))
    run_pipeline(config, tmp_path / "r", fd_plugins, log=lambda m: None)
    result = json.loads((tmp_path / "r" / "checkpoints" / "0-fairdropout" / "result.json").read_text())
    assert [list(h["variants"]) for h in result["history"]] == [["drop", "scale", "drop-rescale"]] * 2
    scores = {(h["epoch"], mode): m["val"]["worst_class_acc"] for h in result["history"] for mode, m in h["variants"].items()}
    chosen = result["selected"]
    assert scores[chosen["epoch"], chosen["variant"]] == max(scores.values())
    model = open_run(tmp_path / "r", fd_plugins).load_model()
    assert {m.mode for m in model.modules() if isinstance(m, fdp.FairDropout)} == {chosen["variant"]}
    # what was recorded for the chosen mode is what the model read back computes
    from spurcore.api import predict

    data = open_run(tmp_path / "r", fd_plugins).data
    test = data.splits["test"]
    accuracy = float((predict(model, test, open_run(tmp_path / "r", fd_plugins).device).argmax(1) == test.y).mean())
    assert accuracy == pytest.approx(result["metrics"]["test"]["avg_acc"])


def test_a_fixed_mode_has_no_variants():
    assert fdp.FairDropoutOptions(inference="scale").modes() == ("scale",)
    assert fdp.FairDropoutOptions(p_gen=0.0).modes() == ("drop", "scale")
