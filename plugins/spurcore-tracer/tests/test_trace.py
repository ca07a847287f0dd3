"""The whole trace on a tiny finished run: the command, trace.json, the figures, the errors, and
the top-memorized examples of a `spur memorization` scores file as one more row on train."""

from __future__ import annotations

import json

import attrs
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spurcore_tracer
from spurcore import hookimpl
from spurcore.api import FinishedRun, cli, open_run, run_pipeline
from spurcore_tracer import NeuronIndex, TraceOptions, TracerError, TracerSpec, intervene, trace, trace_run
from spurcore_tracer.criteria import group_gradient_scores, split_logits
from spurcore_tracer.effects import minority_groups
from spurcore_tracer.marked import top_memorized
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
            "neurons", "split", "group", "minority", "marked", "acc_before", "signed", "abs"}
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


def _two_block_model(data):
    from spurcore.api import Backbone, build_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(data.input_shape[0], 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 8), torch.nn.ReLU())
    return build_model(Backbone(net, 8), 2).eval()


def test_replay_records_the_points_the_traced_layers_replay_from(tmp_path):
    """With room for 24 floats per example, the points kept are the ones the traced layers
    (embed.2 and the head) replay from: embed.1 and embed. Latest-first, as before, filled the
    budget with embed, embed.3 and embed.2, and a change to embed.2 ran from the inputs."""
    from spurcore.testing import TinyOptions, make_tiny

    data = make_tiny(TinyOptions())
    model = _two_block_model(data)
    train = data.splits["train"]
    budget = 24 * 4 * len(train) / 2**20 * (1 + 1e-9)
    replay = Replay(model, {"train": train}, batch_size=64, max_mb=budget,
                    layers=["embed.0", "embed.2", "head"], cache_dir=tmp_path)
    assert [p for p, _ in replay.points] == ["embed.1", "embed"]
    assert replay.point_for(["embed.2"]) == "embed.1" and replay.point_for(["embed.0"]) is None
    passes = replay.full_passes
    index = NeuronIndex.of(model)
    with intervene(index, [16, 17], "zero"):   # two units of embed.2
        fast = replay.logits(["embed.2"])["train"]
        full = split_logits(model, train, 64)
    assert replay.full_passes == passes and torch.allclose(fast, full, atol=1e-6)


def test_recorded_outputs_are_files_of_the_stated_size_removed_on_close(tmp_path):
    from spurcore.testing import TinyOptions, make_tiny

    data = make_tiny(TinyOptions())
    splits = {s: data.splits[s] for s in ("train", "test")}
    replay = Replay(_two_block_model(data), splits, batch_size=64, cache_dir=tmp_path)
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    n = sum(len(d) for d in splits.values())
    assert [p for p, _ in replay.points] == ["embed.0", "embed.1", "embed.2", "embed.3", "embed"]
    # float32 outputs of 16, 16, 8, 8 and 8 units per example, every point kept (no layers given)
    assert sum(f.stat().st_size for f in files) == replay.bytes_per_example * n == 4 * (16 + 16 + 8 + 8 + 8) * n
    replay.close()
    assert not any(tmp_path.iterdir()) and replay.point_for(["head"]) is None


def test_a_replayed_evaluation_reads_no_input():
    """Replaying from a recorded block needs the batches' indices only: a dataset-backed split
    (images decoded per item) is read once, when the outputs are recorded, not per evaluation."""
    from spurcore.testing import MLPOptions, TinyOptions, make_mlp, make_tiny
    from spurcore.api import SplitData, build_model

    class Counted(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x, self.reads = x, 0

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            self.reads += 1
            return self.x[i]

    data = make_tiny(TinyOptions())
    train = data.splits["train"]
    inputs = Counted(train.inputs)
    split = SplitData(name="train", inputs=inputs, y=train.y, a=train.a)
    torch.manual_seed(0)
    model = build_model(make_mlp(MLPOptions(hidden=8), data), 2).eval()
    replay = Replay(model, {"train": split}, batch_size=64)
    recorded = inputs.reads
    index = NeuronIndex.of(model)
    with intervene(index, [9], "zero"):
        fast = replay.logits(["head"])["train"]
        full = split_logits(model, split, 64)
    assert inputs.reads == recorded + len(split)  # split_logits read them, the replay did not
    assert torch.allclose(fast, full, atol=1e-6)


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


# --- the top-memorized examples of a `spur memorization` scores file -------------------------


def write_scores(path, y, memorization, index=None):
    """A scores.h5 by hand, in the layout docs/methods/memorization-scores.md documents (the
    arrays of `train/` the tracer reads, and one it does not)."""
    with h5py.File(path, "w") as handle:
        train = handle.create_group("train")
        train.create_dataset("index", data=np.arange(len(y)) if index is None else index)
        train.create_dataset("y", data=y)
        train.create_dataset("memorization", data=memorization)
        train.create_dataset("models_in", data=np.zeros(len(y), dtype=int))
    return path


def test_the_top_memorized_are_the_highest_defined_scores_ties_to_the_lower_position(tmp_path):
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    path = write_scores(tmp_path / "scores.h5", y, np.array([0.1, np.nan, 0.9, 0.5, 0.5, np.nan, 0.5, -0.2, 1.0, 0.0]))
    marked = top_memorized(path, 0.3, y, y, ["even", "odd"])
    # 3 of 10: 1.0 (position 8), 0.9 (2), and of the three at 0.5 (3, 4, 6) the lowest position
    assert np.flatnonzero(marked.mask).tolist() == [2, 3, 8] and marked.label == "top-memorized 30%"
    assert marked.chosen == {"label": "top-memorized 30%", "file": str(path), "share": 0.3, "count": 3, "of": 10,
                             "defined": 8, "threshold": 0.5, "ties_left_out": 2,
                             "examples_by_group": {"even": 2, "odd": 1}}
    assert np.flatnonzero(top_memorized(path, 0.01, y, y, ["even", "odd"]).mask).tolist() == [8]  # at least one
    two = write_scores(tmp_path / "two.h5", y, np.where(np.arange(10) < 2, 0.3, np.nan))
    assert top_memorized(two, 0.5, y, y, ["even", "odd"]).chosen["count"] == 2  # at most those with a score
    with pytest.raises(ValueError, match=r"memorized_share: must be a share in \(0, 1\], got 0"):
        TraceOptions(memorized=str(path), memorized_share=0)


@pytest.mark.parametrize("damage, message", [
    ("scores as text", "(train/memorization holds |S4 values, not numbers)"),
    ("labels as text", "(train/y holds |S1 values, not integers)"),
    ("cut short", "(OSError: "),
])
def test_a_scores_file_of_the_wrong_types_or_damaged_is_named(tmp_path, tracer_plugins, spur_cli, finished_run, damage,
                                                             message):
    """Issue 25, item 10: a string-dtype scores.h5 gave `spur trace --memorized` a ValueError
    traceback from numpy."""
    y = np.arange(200) % 2
    scores = np.linspace(0, 1, 200)
    path = write_scores(tmp_path / "scores.h5", y.astype("S1") if damage == "labels as text" else y,
                        scores.astype("S4") if damage == "scores as text" else scores)
    if damage == "cut short":
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(TracerError) as error:
        top_memorized(path, 0.1, y, y, ["even", "odd"])
    assert str(error.value).startswith(f"{path}: not a scores file of `spur memorization` {message}")
    result = spur_cli("trace", finished_run, "--memorized", path, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: {path}: not a scores file")


def test_tracing_a_read_only_run_is_one_sentence_before_any_work(tracer_plugins, spur_cli, finished_run, tmp_path,
                                                                   spur_read_only):
    """Issue 25, item 5: `spur trace` on a run folder that cannot be written (its default
    output is inside it) ended in a PermissionError traceback after the work was done."""
    import shutil

    run = tmp_path / "shared"
    shutil.copytree(finished_run, run)
    spur_read_only(run)
    result = spur_cli("trace", run, "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: {run / 'trace' / 'memorization'}: cannot write (")
    assert "read-only" in result.output and len(result.output.strip().splitlines()) == 1
    assert spur_cli("trace", run, *TRACED, "--out", tmp_path / "elsewhere").exit_code == 0


TRACED = ("--criterion", "gradient,magnitude", "--k", "1,2", "--intervention", "zero,noise", "--sigma", "0.02",
          "--per-layer-k", "3", "--rewind", "5", "--quiet")


def test_the_top_memorized_examples_are_one_more_row_on_train(tracer_plugins, spur_cli, finished_run, tmp_path):
    runner = open_run(finished_run, tracer_plugins)
    data, names = runner.data, runner.data.group_names
    split, groups = data.splits["train"], data.groups("train")
    rng = np.random.default_rng(3)
    scores = rng.uniform(-0.3, 0.9, len(split.y))
    scores[rng.choice(len(split.y), 12, replace=False)] = np.nan
    path = write_scores(tmp_path / "scores.h5", split.y, scores)
    top = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:10]  # 5% of 200, no ties

    result = spur_cli("trace", finished_run, *TRACED, "--out", tmp_path / "marked", "--memorized", path,
                      "--memorized-share", "0.05")
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "marked" / "trace.json").read_text())
    plain = trace(finished_run, TraceOptions(criteria=["gradient", "magnitude"], k=[1, 2], interventions=["zero", "noise"],
                                             sigma=[0.02], per_layer_k=[3], rewind_offsets=[5], figures=False),
                  out=tmp_path / "plain", plugins=tracer_plugins, progress=False, log=lambda m: None)
    marked = found["marked"]
    assert {k: marked[k] for k in ("label", "file", "share", "count", "of", "defined", "ties_left_out")} == {
        "label": "top-memorized 5%", "file": str(path), "share": 0.05, "count": 10, "of": 200, "defined": 188,
        "ties_left_out": 0}
    assert marked["threshold"] == pytest.approx(scores[top[-1]])
    assert marked["examples_by_group"] == dict(zip(names, np.bincount(groups[top], minlength=4).tolist()))

    # measured like a group, on train only, on every selection, per-layer zeroing and rewinding
    records = [e for e in found["effects"] if e["marked"]]
    assert {(e["split"], e["group"], e["minority"]) for e in records} == {("train", "top-memorized 5%", False)}
    assert len(records) == sum(e["group"] == names[0] and e["split"] == "train" for e in found["effects"])
    assert {e["intervention"] for e in records} == {"zero", "noise", "control"}
    assert [e for e in found["rewinding"]["records"] if e["marked"]] and \
        {e["split"] for e in found["rewinding"]["records"] if e["marked"]} == {"train"}
    assert "top-memorized 5%" in found["rewinding"]["sensitive_layers"]["train"]["5"]
    assert set(found["rewinding"]["sensitive_layers"]["test"]["5"]) == set(names)

    # its accuracy is the model's on exactly those examples, before and after an intervention
    model = runner.load_model(0, 7)
    index = NeuronIndex.of(model)

    def accuracy():
        return 100 * float((split_logits(model, split).argmax(1).numpy() == split.y)[top].mean())

    base = accuracy()
    assert marked["base_accuracy"] == pytest.approx(base, abs=1e-3)
    assert all(e["acc_before"] == pytest.approx(base, abs=1e-3) for e in records)
    record = next(e for e in records if (e["criterion"], e["scope"], e["intervention"], e["k"]) == ("magnitude", "global", "zero", 1))
    with intervene(index, [index.global_index(n) for n in index.neurons(range(index.total)) if str(n) in record["neurons"]],
                   "zero"):
        assert record["signed"] == pytest.approx(accuracy() - base, abs=1e-3)
    zero = next(r for r in marked["summary"] if (r["criterion"], r["intervention"], r["scope"]) == ("gradient", "zero", "global"))
    assert zero["abs"] == pytest.approx(np.mean([e["abs"] for e in records if (e["criterion"], e["intervention"], e["scope"])
                                                 == ("gradient", "zero", "global")]), abs=1e-3)

    # nothing else moves: the groups' records and the minority/majority summary are those of a trace without it
    assert found["summary"] == plain["summary"] and plain["marked"] is None
    assert [e for e in found["effects"] if not e["marked"]] == plain["effects"]
    assert [e for e in found["rewinding"]["records"] if not e["marked"]] == plain["rewinding"]["records"]
    lines = result.output.splitlines()[:-1]
    assert lines and all(("  top-memorized 5% " in line) == (" train " in line) for line in lines)
    for name in ("group_bars_train.png", "group_bars_test.png", "layer_heatmap.png", "sensitive_layers.png"):
        assert (tmp_path / "marked" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figures_draw_the_top_memorized_examples_apart(tracer_plugins, spur_cli, finished_run, tmp_path,
                                                          monkeypatch):
    from spurcore_tracer import figures

    y = open_run(finished_run, tracer_plugins).data.splits["train"].y
    path = write_scores(tmp_path / "scores.h5", y, np.linspace(-1, 1, len(y)))
    assert spur_cli("trace", finished_run, *TRACED, "--out", tmp_path / "t", "--memorized", path, "-o",
                    "figures=false").exit_code == 0
    result = json.loads((tmp_path / "t" / "trace.json").read_text())
    drawn = {}

    def keep(fig, where):
        drawn[where.name] = fig
        return where.name

    monkeypatch.setattr(figures, "_save", keep)
    assert "group_bars_train.png" in figures.draw_all(result, tmp_path)
    label = "top-memorized 5%\n(n=10)"

    def ticks(ax, axis="x"):
        return [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")()]

    train = drawn["group_bars_train.png"].axes[0]
    assert ticks(train)[-1] == label and ticks(train)[:4] == ["neg/off", "neg/on *", "pos/off *", "pos/on"]
    hatched = [p for p in train.patches if p.get_hatch()]
    assert len(hatched) == 3 and all(p.get_x() > 3.5 for p in hatched)  # k = 1, 2 and the control, past the groups
    assert train.get_legend().get_texts()[-1].get_text() == "hatched: top-memorized 5%"
    caption = "the 10 training examples with the highest memorization score (>= 0.91) in scores.h5; not a group"
    for name in ("group_bars_train.png", "layer_heatmap.png", "sensitive_layers.png"):
        assert caption in " ".join(t.get_text() for t in drawn[name].texts), name
    test = drawn["group_bars_test.png"]
    assert label not in ticks(test.axes[0]) and caption not in " ".join(t.get_text() for t in test.texts)
    assert ticks(drawn["layer_heatmap.png"].axes[0], "y")[-1] == label
    rewound = drawn["sensitive_layers.png"].axes
    assert ticks(rewound[0])[-1] == label and label not in ticks(rewound[1])


def test_a_scores_file_that_is_not_the_runs_is_refused_naming_it(tracer_plugins, finished_run, tmp_path):
    run = open_run(finished_run, tracer_plugins)
    y = run.data.splits["train"].y
    scores = np.linspace(-1, 1, len(y))

    def refused(path, message):
        with pytest.raises(TracerError) as error:
            trace_run(run, TraceOptions(memorized=str(path), figures=False), out=tmp_path / "never", progress=False,
                      log=lambda m: None)
        assert str(error.value).startswith(f"{path}: {message}")
        assert not (tmp_path / "never").exists()

    refused(tmp_path / "missing.h5", "no such scores file; `spur memorization PIPELINE.toml --out DIR` writes one")
    (tmp_path / "text.h5").write_text("not HDF5")
    refused(tmp_path / "text.h5", "not a scores file of `spur memorization` (")
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle.create_dataset("train/y", data=y)
    refused(tmp_path / "other.h5", "not a scores file of `spur memorization` (no train/index)")
    refused(write_scores(tmp_path / "shuffled.h5", y, scores, index=np.arange(len(y))[::-1]),
            "not a scores file of `spur memorization` (train/index, y and memorization are not one entry per position")
    elsewhere = "scores of another dataset, or of another part of it (a run with [dataset] train_subset or holdout)"
    refused(write_scores(tmp_path / "short.h5", y[:150], scores[:150]),
            f"scores for 150 training examples, but the run's training split has 200: {elsewhere}")
    flipped = y.copy()
    flipped[[4, 9]] = 1 - flipped[[4, 9]]
    refused(write_scores(tmp_path / "labels.h5", flipped, scores),
            f"its training labels differ from the run's at 2 of 200 positions (the first: 4): {elsewhere}")
    refused(write_scores(tmp_path / "undefined.h5", y, np.full(len(y), np.nan)),
            "no training example has a defined memorization score")
