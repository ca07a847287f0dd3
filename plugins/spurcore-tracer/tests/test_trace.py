"""The whole trace on a tiny finished run: the command, trace.json, the figures, the errors."""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spurcore_tracer
from spurcore import hookimpl
from spurcore.api import FinishedRun, TracerSpec, cli, open_run, run_pipeline
from spurcore_tracer import NeuronIndex, TraceOptions, TracerError, intervene, trace
from spurcore_tracer.criteria import group_gradient_scores, split_logits
from spurcore_tracer.effects import minority_groups
from spurcore_tracer.replay import Replay
from spurcore_tracer.rewinding import rewind_plan


@pytest.fixture
def tracer_plugins(spur_plugins):
    spur_plugins.register(spurcore_tracer, "tracer")
    return spur_plugins


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from spurcore.testing import TinyPlugin, tiny_pipeline
    from spurcore.api import PluginManager, pipeline_from_dict

    manager = PluginManager(entry_points=False, block=["progress"])
    manager.register(TinyPlugin(), "tiny")
    path = tmp_path_factory.mktemp("runs") / "erm"
    config = pipeline_from_dict(tiny_pipeline(train={"epochs": 7, "batch_size": 32, "lr": 0.01},
                                              backbone={"name": "mlp", "options": {"hidden": 12}}))
    run_pipeline(config, path, manager, log=lambda m: None)
    return path


def test_the_command_writes_trace_json_and_figures(tracer_plugins, finished_run, tmp_path):
    tracer_plugins.hook.spurcore_register_commands(cli=cli)
    out = tmp_path / "trace"
    result = CliRunner().invoke(cli, ["trace", str(finished_run), "--out", str(out), "--k", "1,2,3", "--repeats", "2",
                                      "--criterion", "gradient,magnitude,loss-gradient", "--sigma", "0.01,0.02",
                                      "--quiet"], obj={"manager": tracer_plugins, "plugin_args": []})
    assert result.exit_code == 0, result.output
    data = json.loads((out / "trace.json").read_text())
    assert data["schema"] == 1 and data["stage"] == "0-erm" and data["epoch"] == 7
    assert data["groups"] == ["neg/off", "neg/on", "pos/off", "pos/on"]
    assert data["minority_groups"] == ["neg/on", "pos/off"]
    assert set(data["base_accuracy"]) == {"train", "test"}
    keys = {"criterion", "selected_for", "scope", "layer", "k", "k_effective", "intervention", "sigma", "repeats",
            "neurons", "split", "group", "minority", "acc_before", "signed", "abs"}
    assert all(set(e) == keys for e in data["effects"])
    combos = {(e["criterion"], e["scope"], e["k"], e["intervention"], e["sigma"], e["split"]) for e in data["effects"]}
    for criterion in ("gradient", "magnitude", "loss-gradient"):
        for k in (1, 2, 3):
            for split in ("train", "test"):
                assert (criterion, "global", k, "zero", None, split) in combos
                assert (criterion, "global", k, "control", None, split) in combos
                for sigma in (0.01, 0.02):
                    assert (criterion, "global", k, "init", sigma, split) in combos
                    assert (criterion, "global", k, "noise", sigma, split) in combos
    zero = [e for e in data["effects"] if e["intervention"] == "zero" and e["scope"] == "global"]
    assert all(len(e["neurons"]) == e["k"] for e in zero)
    assert all(abs(e["abs"] - abs(e["signed"])) < 1e-6 for e in zero)  # one run: |mean| = mean |.|
    assert {e["selected_for"] for e in zero if e["criterion"] == "gradient"} == set(data["groups"])
    per_layer = [e for e in data["effects"] if e["scope"] == "per-layer"]
    assert {e["layer"] for e in per_layer} == {"embed.0", "head"}
    assert all(e["k_effective"] == min(3, 2 if e["layer"] == "head" else 12) for e in per_layer)
    rewinding = data["rewinding"]
    assert [p["offset"] for p in rewinding["plan"]] == [5]
    assert set(rewinding["sensitive_layers"]["train"]["5"]) == set(data["groups"])
    assert data["rank_overlap"][0]["percent"] == 0.01 and data["rank_overlap"][0]["count"] == 1
    assert len(data["rank_overlap"][0]["top_gradient_magnitude_ranks"]) == 4  # one per group, pooled
    assert any("10, 20, 30, 40" in n for n in data["notes"])
    for name in ("group_bars_train.png", "group_bars_test.png", "layer_heatmap.png", "rank_overlap.png",
                 "sensitive_layers.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "minority" in result.output and "trace.json" in result.output


def test_effects_match_a_direct_evaluation(tracer_plugins, finished_run, tmp_path):
    data = trace(finished_run, TraceOptions(k=[2], interventions=["zero"], per_layer_k=[], control=False,
                                            rewind_offsets=[], figures=False), out=tmp_path, plugins=tracer_plugins,
                 progress=False, log=lambda m: None)
    runner = open_run(finished_run, tracer_plugins)
    model = runner.load_model(0, 7)
    index = NeuronIndex.of(model)
    record = next(e for e in data["effects"] if e["criterion"] == "magnitude" and e["split"] == "train"
                  and e["group"] == "neg/on")
    chosen = [index.global_index(n) for n in index.neurons(range(index.total)) if str(n) in record["neurons"]]
    split = runner.data.splits["train"]
    groups = runner.data.groups("train")
    rows = groups == 1

    def acc():
        return 100 * float((split_logits(model, split).argmax(1).numpy() == split.y)[rows].mean())

    base = acc()
    with intervene(index, chosen, "zero"):
        after = acc()
    assert record["acc_before"] == pytest.approx(base, abs=1e-3)
    assert record["signed"] == pytest.approx(after - base, abs=1e-3)


def test_replay_equals_a_full_forward_under_an_intervention():
    from spurcore.testing import MLPOptions, TinyOptions, make_mlp, make_tiny
    from spurcore.api import build_model

    data = make_tiny(TinyOptions())
    torch.manual_seed(0)
    model = build_model(make_mlp(MLPOptions(hidden=8), data), 2).eval()
    replay = Replay(model, {"train": data.splits["train"]}, batch_size=64)
    assert [p for p, _ in replay.points] == ["embed.0", "embed.1", "embed"]
    index = NeuronIndex.of(model)
    for picks, changed in (([9], ["head"]), ([0, 3], ["embed.0"])):
        with intervene(index, picks, "noise", sigma=0.5, generator=torch.Generator().manual_seed(1)):
            fast = replay.logits(changed)["train"]
            full = split_logits(model, data.splits["train"], 64)
        assert torch.allclose(fast, full, atol=1e-6)
    assert replay.point_for(["head"]) == "embed" and replay.point_for(["embed.0"]) is None


def test_per_group_gradient_uses_each_groups_lowest_confidence_examples(tracer_plugins, finished_run):
    runner = open_run(finished_run, tracer_plugins)
    model, data = runner.load_model(0, 7), runner.data
    groups = data.groups("train")
    scores, used = group_gradient_scores(model, data.splits["train"], groups, 4, n=5)
    assert scores.shape == (4, NeuronIndex.of(model).total) and np.isfinite(scores).all()
    assert all(len(rows) == 5 and (groups[rows] == j).all() for j, rows in used.items())
    everything, used_all = group_gradient_scores(model, data.splits["train"], groups, 4, subset="all")
    assert all(len(used_all[j]) == (groups == j).sum() for j in range(4))
    assert minority_groups(data) == [1, 2]


def test_clear_errors(tracer_plugins, finished_run, tmp_path, spur_plugins, spur_tiny_config):
    with pytest.raises(TracerError, match="no such run directory"):
        trace(tmp_path / "nowhere", plugins=tracer_plugins)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TracerError, match="not a run directory"):
        trace(tmp_path / "empty", plugins=tracer_plugins)
    with pytest.raises(TracerError, match="no checkpoint for epoch 99"):
        trace(finished_run, TraceOptions(epoch=99), plugins=tracer_plugins, out=tmp_path / "t")
    unlabeled = tmp_path / "unlabeled"
    run_pipeline(spur_tiny_config(dataset={"name": "tiny", "options": {"attributes": False}}, selector="val-avg",
                             train={"epochs": 1}), unlabeled, spur_plugins, log=lambda m: None)
    with pytest.raises(TracerError, match="no attribute labels on train"):
        trace(unlabeled, plugins=tracer_plugins, out=tmp_path / "u")
    tracer_plugins.hook.spurcore_register_commands(cli=cli)
    result = CliRunner().invoke(cli, ["trace", str(tmp_path / "empty")], obj={"manager": tracer_plugins, "plugin_args": []})
    assert result.exit_code == 1 and "not a run directory" in result.output


@attrs.frozen(kw_only=True)
class ProbeOptions:
    stage: int = -1
    note: str = ""


class Probe:
    """A tracer that records what `spur trace` hands it and writes one file."""

    def __init__(self):
        self.calls = []

    def trace(self, run, options, out, log):
        self.calls.append((run, options, out, log))
        out.mkdir(parents=True, exist_ok=True)
        stage = run.stage(options.stage)
        (out / "probe.json").write_text(json.dumps({"stage": stage.key, "epochs": list(stage.epochs)}))
        return f"probe: {options.note or 'no note'}"

    @hookimpl
    def spurcore_register_tracers(self):
        return [TracerSpec(name="probe", trace=self.trace, options=ProbeOptions, description="records its call")]


def test_spur_trace_runs_any_registered_tracer_through_its_spec(tracer_plugins, spur_register_plugin, spur_cli,
                                                                finished_run, tmp_path):
    probe = spur_register_plugin(Probe(), "probe")
    result = spur_cli("trace", finished_run, "--tracer", "probe", "--stage", "0", "-o", 'note="hello"')
    assert result.exit_code == 0, result.output
    assert result.output == "probe: hello\n"
    [(run, options, out, log)] = probe.calls
    assert isinstance(run, FinishedRun) and run.path == finished_run and str(run.device.device) == "cpu"
    assert options == ProbeOptions(stage=0, note="hello")
    assert out == finished_run / "trace" / "probe" and log is not None
    assert json.loads((out / "probe.json").read_text()) == {"stage": "0-erm", "epochs": list(range(1, 8))}

    quiet = spur_cli("trace", finished_run, "--tracer", "probe", "--out", tmp_path / "mine", "--quiet")
    assert quiet.exit_code == 0 and quiet.output == "probe: no note\n"
    assert probe.calls[-1][1:] == (ProbeOptions(), tmp_path / "mine", None)


def test_spur_trace_names_what_a_tracer_does_not_take(tracer_plugins, spur_register_plugin, spur_cli, finished_run,
                                                      tmp_path):
    spur_register_plugin(Probe(), "probe")

    def trace(*args):
        return spur_cli("trace", finished_run, "--out", tmp_path / "never", *args)

    unknown = trace("--tracer", "memorisation")
    assert unknown.exit_code == 2
    assert "Invalid value for --tracer: no tracer named 'memorisation' (did you mean 'memorization'?); " \
           "available: memorization, probe" in unknown.output
    flag = trace("--tracer", "probe", "--k", "1,2")
    assert flag.exit_code == 2 and "--k: tracer 'probe' has no option 'k' (its options: stage, note)" in flag.output
    key = trace("--tracer", "probe", "-o", "k=[1]")
    assert key.exit_code == 2 and "-o k=[1]: tracer 'probe' has no option 'k' (its options: stage, note)" in key.output
    bad = trace("--tracer", "probe", "-o", "stage=last")
    assert bad.exit_code == 2 and "tracer probe.stage: expected an integer, got str 'last'" in bad.output
    assert not (tmp_path / "never").exists()


def test_the_default_tracer_writes_into_the_runs_trace_folder(tracer_plugins, spur_cli, finished_run):
    result = spur_cli("trace", finished_run, "--criterion", "magnitude", "--k", "1", "--intervention", "zero",
                      "--per-layer-k", "", "--rewind", "", "--no-control", "-o", "figures=false", "--quiet")
    assert result.exit_code == 0, result.output
    written = finished_run / "trace" / "memorization" / "trace.json"
    data = json.loads(written.read_text())
    assert data["options"]["criteria"] == ["magnitude"] and data["options"]["control"] is False
    assert data["options"]["figures"] is False and data["device"] == "cpu"
    assert {(e["criterion"], e["intervention"], e["k"]) for e in data["effects"]} == {("magnitude", "zero", 1)}
    assert result.output.splitlines()[0].startswith("magnitude      zero")
    assert f"wrote {written} and  (" in result.output


def test_rewind_plan_uses_what_exists():
    assert rewind_plan(40, range(1, 41)) == ([(5, 35), (10, 30), (20, 20), (30, 10)], [
        "layer rewinding: no checkpoint 40 epochs before epoch 40"])
    plan, notes = rewind_plan(3, [1, 2, 3])
    assert plan == [(2, 1)] and "earliest" in notes[-1]
    plan, notes = rewind_plan(1, [1])
    assert plan == [] and "skipped" in notes[0]


def test_the_tracer_is_registered(tracer_plugins):
    spec = tracer_plugins.get("tracers", "memorization")
    assert spec.options is TraceOptions
