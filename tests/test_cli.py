"""The `spur` command line, through click's test runner, with the tiny test plugin."""

from __future__ import annotations

import json
import tomllib

import attrs
import numpy as np
import pytest
from click.testing import CliRunner
from spurcore.testing import TinyOptions, kit_manager, make_tiny, tiny_pipeline

import spurcore
from spurcore import hookimpl
from spurcore.cli import cli
from spurcore.config import load_pipeline, pipeline_from_dict
from spurcore.plugins import PluginManager
from spurcore.specs import KINDS, MitigationSpec, SelectorSpec
from spurcore.tomlwriter import dumps as toml_dumps

TABLE_HEAD = ("| group | train n | train acc % | val n | val acc % | test n | test acc % "
              "| memorization gap (train - test, pts) |")
GROUPS = ("neg/off", "neg/on", "pos/off", "pos/on")


def invoke(manager, *args):
    return CliRunner().invoke(cli, list(map(str, args)), obj={"manager": manager, "plugin_args": []})


def write_pipeline(path, **overrides):
    path.write_text(toml_dumps(tiny_pipeline(**overrides)))
    return path


def tiny_manager() -> PluginManager:
    """What the kit's `spur_plugins` fixture builds, for the module-scoped run below."""
    return kit_manager()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run (3 epochs of ERM) shared by the tests that read it."""
    root = tmp_path_factory.mktemp("cli")
    pipeline = write_pipeline(root / "tiny.toml")
    out = root / "run"
    result = invoke(tiny_manager(), "run", pipeline, "--out", out)
    return pipeline, out, result


# --- listing -------------------------------------------------------------------------------------


def test_plugins_json(spur_plugins):
    result = invoke(spur_plugins, "plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert {"erm", "metrics", "selectors", "backbones", "waterdigits", "tiny"} <= set(rows)
    assert "progress" not in rows  # blocked by the fixture
    for name in ("erm", "metrics", "selectors", "backbones", "waterdigits"):
        assert rows[name]["version"] == spurcore.__version__
        assert rows[name]["builtin"] is True
        assert set(rows[name]) >= {"name", "version", "hooks"}
    assert rows["erm"]["hooks"] == ["spurcore_register_mitigations"]
    assert rows["waterdigits"]["hooks"] == ["spurcore_register_datasets"]
    assert rows["tiny"] == {"name": "tiny", "version": "", "builtin": False, "hooks": [
        "spurcore_register_backbones", "spurcore_register_datasets", "spurcore_register_mitigations"],
        "mitigations": ["tiny-refit"], "stage_hooks": {"tiny-refit": ["spurcore_posthoc_head"]}}
    assert rows["erm"]["stage_hooks"] == {"erm": []}  # its loss is the module's hook, the fallback of every stage


def test_plugins_text_lists_failures(spur_plugins):
    spur_plugins.failed["broken"] = "ImportError: no module named torchaudio"
    result = invoke(spur_plugins, "plugins")
    assert result.exit_code == 0
    assert f"erm {spurcore.__version__} (built-in)" in result.output
    assert f"erm {spurcore.__version__} (built-in)\n    hooks: spurcore_register_mitigations\n" in result.output
    assert "broken FAILED TO LOAD: ImportError: no module named torchaudio" in result.output
    rows = json.loads(invoke(spur_plugins, "plugins", "--json").output)
    assert {"name": "broken", "version": "", "hooks": [], "mitigations": [], "stage_hooks": {}, "builtin": False,
            "error": "ImportError: no module named torchaudio"} in rows


def test_every_listing_is_json_with_every_installed_plugin():
    """What `spur` loads on this machine (entry points included), not the kit's world: dfr's
    needs_attributes is a function of its options, which JSON cannot hold."""
    manager = PluginManager()
    for kind in KINDS:
        result = invoke(manager, "list", kind, "--json")
        assert result.exit_code == 0, f"spur list {kind} --json: {result.output[-500:]}"
        assert [row["name"] for row in json.loads(result.output)] == sorted(manager.registry(kind))
    result = invoke(manager, "plugins", "--json")
    assert result.exit_code == 0, result.output[-500:]
    assert {row["name"] for row in json.loads(result.output)} >= {info.name for info in manager.infos()}


def test_list_mitigations_json(spur_plugins):
    result = invoke(spur_plugins, "list", "mitigations", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["erm"]["plugin"] == "erm"
    assert rows["erm"]["kind"] == "train"
    assert rows["erm"]["needs_attributes"] == []
    assert rows["erm"]["description"].startswith("Empirical risk minimisation")


def test_list_datasets(spur_plugins):
    result = invoke(spur_plugins, "list", "datasets")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("tiny ") and lines[0].endswith("tiny test data  (tiny)")
    assert lines[1].startswith("waterdigits ") and lines[1].endswith("(waterdigits)")
    assert len(lines) == 2


def test_list_selectors_flags_attribute_labels(spur_plugins):
    result = invoke(spur_plugins, "list", "selectors")
    flagged = {line.split()[0] for line in result.output.splitlines() if "[needs attribute labels]" in line}
    assert flagged == {"val-wga"}


@attrs.frozen
class SplitOptions:
    split: str = "val"


@attrs.frozen
class RequiredOptions:
    split: str


class Stage:
    def __init__(self, options):
        self.options = options

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        return None


def needs_a_gpu(options):
    raise RuntimeError("no GPU here")


class Labelled:
    """Specs whose descriptions say nothing about attribute labels: `spur list` reads the specs."""

    @hookimpl
    def spurcore_register_mitigations(self):
        return [
            MitigationSpec(name="reads-train", factory=Stage, needs_attributes=("train",), description="one"),
            MitigationSpec(name="reads-none", factory=Stage, description="two", fine_tunes=True,
                           search_space={"lr": [0.1, 0.01], "placement": [["a"], ["a", "b"]]}),
            MitigationSpec(name="reads-chosen", factory=lambda o: Stage(o), options=SplitOptions,
                           needs_attributes=lambda o: (o.split,), description="three"),
            MitigationSpec(name="reads-required", factory=lambda o: Stage(o), options=RequiredOptions,
                           needs_attributes=lambda o: (o.split,), description="four"),
            MitigationSpec(name="breaks", factory=needs_a_gpu, description="five"),
        ]

    @hookimpl
    def spurcore_register_selectors(self):
        return [SelectorSpec(name="peeking", score=lambda c: 0.0, needs_attributes=True, description="six"),
                SelectorSpec(name="blind", score=lambda c: 0.0, description="seven")]


def test_list_derives_the_attribute_label_markers_from_the_specs(spur_plugins, spur_register_plugin):
    spur_register_plugin(Labelled(), "labelled")
    lines = {line.split()[0]: line for line in invoke(spur_plugins, "list", "mitigations").output.splitlines()}
    assert lines["reads-train"].endswith(" one [needs attribute labels on train]  (labelled)")
    assert lines["reads-none"].endswith(" two [no attribute labels]  (labelled)")
    assert lines["reads-chosen"].endswith(" three [needs attribute labels on val with the default options]  (labelled)")
    assert lines["reads-required"].endswith(" four [attribute labels depend on the options]  (labelled)")
    assert lines["tiny-refit"].count("no attribute labels") == 1
    rows = {row["name"]: row for row in json.loads(invoke(spur_plugins, "list", "mitigations", "--json").output)}
    assert (rows["reads-chosen"]["needs_attributes"], rows["reads-chosen"]["needs_attributes_depend_on_options"]) == (["val"], True)
    assert (rows["reads-train"]["needs_attributes"], rows["reads-train"]["needs_attributes_depend_on_options"]) == (["train"], False)
    # what a sweep may draw, as declared
    assert rows["reads-none"]["search_space"] == {"lr": [0.1, 0.01], "placement": [["a"], ["a", "b"]]}
    assert rows["reads-none"]["fine_tunes"] and not rows["reads-train"]["fine_tunes"]
    assert rows["reads-train"]["search_space"] == {}
    assert rows["reads-required"]["needs_attributes"] == ("depends on the options (reads-required.options.split: "
                                                          "missing (required))")
    lines = {line.split()[0]: line for line in invoke(spur_plugins, "list", "selectors").output.splitlines()}
    assert lines["peeking"].endswith(" six [needs attribute labels]  (labelled)")
    assert lines["blind"].endswith(" seven [no attribute labels]  (labelled)")


def test_plugins_shows_the_stage_hooks_of_each_mitigation(spur_plugins, spur_register_plugin):
    spur_register_plugin(Labelled(), "labelled")
    lines = invoke(spur_plugins, "plugins", "--hooks").output.splitlines()
    mine = lines[lines.index("labelled ") + 1:lines.index("labelled ") + 7]
    assert mine == ["    hooks: spurcore_register_mitigations, spurcore_register_selectors",
                    "    mitigation breaks, stage hooks: unknown: breaks's factory failed on its default options: "
                    "RuntimeError: no GPU here",
                    "    mitigation reads-chosen, stage hooks: spurcore_train_loss",
                    "    mitigation reads-none, stage hooks: spurcore_train_loss",
                    "    mitigation reads-required, stage hooks: unknown without options (reads-required.options.split: "
                    "missing (required))",
                    "    mitigation reads-train, stage hooks: spurcore_train_loss"]
    assert "    mitigation tiny-refit, stage hooks: spurcore_posthoc_head" in lines
    assert "    mitigation erm, stage hooks: none" in lines


def test_plugins_without_hooks_names_the_mitigations_and_builds_none(spur_plugins, spur_register_plugin):
    spur_register_plugin(Labelled(), "labelled")  # its `breaks` factory raises when built
    lines = invoke(spur_plugins, "plugins").output.splitlines()
    assert lines[lines.index("labelled ") + 1:lines.index("labelled ") + 3] == [
        "    hooks: spurcore_register_mitigations, spurcore_register_selectors",
        "    mitigations: breaks, reads-chosen, reads-none, reads-required, reads-train"]
    assert "    mitigations: erm" in lines and not any("stage hooks" in line for line in lines)


def test_quiet_says_it_hides_the_log_too():
    result = CliRunner().invoke(cli, ["run", "--help"], obj={"plugin_args": []})
    assert "--quiet" in result.output and "log" in result.output.split("--quiet", 1)[1].split("\n  -", 1)[0]


def test_list_unknown_kind_is_a_usage_error(spur_plugins):
    result = invoke(spur_plugins, "list", "models")
    assert result.exit_code == 2
    assert "Invalid value for KIND: unknown kind 'models': use one of datasets, backbones, mitigations, selectors, " \
           "metrics, observers" in result.output


# --- run ---------------------------------------------------------------------------------------


def test_run_quiet(spur_plugins, tmp_path):
    """`--quiet` must leave out the progress bar, not the plugin manager it was given."""
    pipeline = write_pipeline(tmp_path / "tiny.toml", train={"epochs": 1, "batch_size": 64})
    result = invoke(spur_plugins, "run", pipeline, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(TABLE_HEAD + "\n")
    assert "selected: {'selector': 'val-wga', 'stage': 'erm', 'epoch': 1}" in result.output
    assert (tmp_path / "run" / "summary.json").is_file()


def test_run_prints_the_group_table(finished):
    _, out, result = finished
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert TABLE_HEAD in lines
    for group in GROUPS:
        assert any(line.startswith(f"| {group} | ") for line in lines), group
    for label in ("average (all examples)", "worst group", "worst class"):
        assert any(line.startswith(f"| **{label}** |") for line in lines), label
    assert lines[-1].startswith("selected: {'selector': 'val-wga', 'stage': 'erm', 'epoch': ")
    assert lines[-1].endswith(f"run directory: {out}")


def test_run_writes_the_run_directory(finished):
    pipeline, out, _ = finished
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert names == {"config.toml", "metrics.jsonl", "summary.json", "report.md", "group_acc.png",
                     "group_acc_epochs.png", "checkpoints"}
    assert sorted(p.name for p in (out / "checkpoints" / "0-erm").iterdir()) == [
        "epoch_001.pt", "epoch_002.pt", "epoch_003.pt", "result.json",
    ]
    for figure in ("group_acc.png", "group_acc_epochs.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # config.toml is the resolved pipeline: it loads back to the one that was run
    assert load_pipeline(out / "config.toml") == pipeline_from_dict(tomllib.loads(pipeline.read_text()))
    assert tomllib.loads((out / "config.toml").read_text())["train"]["eval_batch_size"] == 512


def test_metrics_jsonl_has_a_line_per_epoch_and_split(finished):
    _, out, _ = finished
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"], r["split"]) for r in rows] == [
        ("0-erm", e, s) for e in (1, 2, 3) for s in ("train", "val", "test")
    ]
    for r in rows:
        assert r["train_loss"] > 0
        assert 0 <= r["worst_group_acc"] <= r["avg_acc"] <= 1


def test_summary_has_the_documented_structure(finished):
    _, out, _ = finished
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"metrics", "selected", "stages"}
    data = make_tiny(TinyOptions())
    assert list(summary["metrics"]) == ["train", "val", "test"]
    for split in ("train", "val", "test"):
        m = summary["metrics"][split]
        assert set(m) == {"avg_acc", "worst_group_acc", "worst_class_acc", "group_acc", "group_count"}
        assert list(m["group_acc"]) == list(GROUPS)
        # the counts are the dataset's, the accuracies agree with each other
        assert m["group_count"] == data.group_counts(split)
        weighted = sum(m["group_acc"][g] * m["group_count"][g] for g in GROUPS) / len(data.splits[split])
        assert weighted == pytest.approx(m["avg_acc"])
        assert m["worst_group_acc"] == min(m["group_acc"].values())
    selected = summary["selected"]
    assert selected["selector"] == "val-wga" and selected["stage"] == "erm"
    # the selected epoch is the one with the best validation worst-group accuracy (earliest on ties)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = {r["epoch"]: r["worst_group_acc"] for r in rows if r["split"] == "val"}
    assert selected["epoch"] == max(sorted(val), key=lambda e: (val[e], -e))
    best = {r["split"]: r for r in rows if r["epoch"] == selected["epoch"]}
    assert summary["metrics"]["test"]["avg_acc"] == best["test"]["avg_acc"]
    assert summary["stages"] == [{
        "name": "erm", "method": "erm", "kind": "train",
        "selected": {"selector": "val-wga", "epoch": selected["epoch"], "score": val[selected["epoch"]]},
        "metrics": summary["metrics"], "train_eval": {"rule": "full", "examples": 200, "of": 200},
    }]


def test_report_md(finished):
    _, out, _ = finished
    report = (out / "report.md").read_text()
    assert report.startswith("# spurcore run report\n")
    assert "Dataset `tiny`, backbone `mlp`, seed 0." in report
    assert "## Stage `erm` (erm, epoch " in report
    assert TABLE_HEAD in report


def test_show_prints_the_table(finished):
    _, out, run = finished
    summary = json.loads((out / "summary.json").read_text())
    result = CliRunner().invoke(cli, ["show", str(out)], obj={"plugin_args": []})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"stage erm (erm, epoch {summary['selected']['epoch']} by val-wga)"
    assert lines[1] == "Train columns: every training example (200), in eval mode without augmentation (`train_eval` full)."
    assert lines[2] == TABLE_HEAD
    # the same table `run` printed
    table = [line for line in run.output.splitlines() if line.startswith("|")]
    assert [line for line in lines if line.startswith("|")] == table


def test_show_of_an_unfinished_run(tmp_path):
    result = CliRunner().invoke(cli, ["show", str(tmp_path)], obj={"plugin_args": []})
    assert result.exit_code == 1
    assert f"Error: {tmp_path}: no summary.json" in result.output


def test_run_into_an_existing_run_needs_resume(finished):
    pipeline, out, _ = finished
    before = (out / "summary.json").read_bytes()
    result = invoke(tiny_manager(), "run", pipeline, "--out", out)
    assert result.exit_code != 0
    assert "Error:" in result.output and "--resume" in result.output
    assert (out / "summary.json").read_bytes() == before


def test_resume_of_a_finished_run_gives_the_same_summary(finished):
    pipeline, out, _ = finished
    before = json.loads((out / "summary.json").read_text())
    result = invoke(tiny_manager(), "run", pipeline, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text()) == before


def test_run_into_a_non_empty_directory_is_refused(spur_plugins, tmp_path):
    pipeline = write_pipeline(tmp_path / "tiny.toml")
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke(spur_plugins, "run", pipeline, "--out", out)
    assert result.exit_code == 1
    assert "is not empty and holds no run" in result.output


def test_config_error_exits_2_naming_the_key(spur_plugins, tmp_path):
    pipeline = write_pipeline(tmp_path / "bad.toml", train={"epochs": 3, "lrr": 0.1})
    result = invoke(spur_plugins, "run", pipeline, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.output.startswith("Error: ")
    assert f"{pipeline}: train.lrr: unknown key (did you mean 'lr'?)" in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_lists_the_available_ones(spur_plugins, tmp_path):
    pipeline = write_pipeline(tmp_path / "p.toml", dataset={"name": "tinny"})
    result = invoke(spur_plugins, "run", pipeline, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert f"Error: {pipeline}: dataset.name: no dataset named 'tinny' (did you mean 'tiny'?); available: tiny, waterdigits" in result.output
    assert not (tmp_path / "run").exists()


def test_override_type_error_exits_2(spur_plugins, tmp_path):
    pipeline = write_pipeline(tmp_path / "p.toml")
    result = invoke(spur_plugins, "run", pipeline, "--out", tmp_path / "run", "-o", "train.epochs=abc")
    assert result.exit_code == 2
    assert "Error: " in result.output
    assert "train.epochs: expected an integer, got str 'abc'" in result.output


def test_seed_and_device_options_are_overrides(spur_plugins, tmp_path):
    pipeline = write_pipeline(tmp_path / "p.toml", train={"epochs": 1, "batch_size": 64})
    result = invoke(spur_plugins, "run", pipeline, "--out", tmp_path / "run", "--seed", 7, "--device", "cpu")
    assert result.exit_code == 0, result.output
    saved = load_pipeline(tmp_path / "run" / "config.toml")
    assert (saved.seed, saved.device) == (7, "cpu")
    result = invoke(spur_plugins, "run", pipeline, "--out", tmp_path / "run2", "--device", "gpu")
    assert result.exit_code == 2  # a config error naming the file and the key (issue 25)
    assert f"{pipeline}: device: must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got 'gpu'" in result.output
    assert not (tmp_path / "run2").exists()


def test_missing_pipeline_file(spur_plugins, tmp_path):
    result = invoke(spur_plugins, "run", tmp_path / "nope.toml", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert f"Error: {tmp_path / 'nope.toml'}: no such pipeline file" in result.output


def test_runs_are_reproducible(spur_plugins, tmp_path):
    pipeline = write_pipeline(tmp_path / "p.toml", train={"epochs": 2, "batch_size": 64})
    summaries = []
    for name in ("a", "b"):
        assert invoke(spur_plugins, "run", pipeline, "--out", tmp_path / name).exit_code == 0
        summaries.append(json.loads((tmp_path / name / "summary.json").read_text()))
    assert summaries[0] == summaries[1]
    assert not np.isnan(summaries[0]["metrics"]["test"]["avg_acc"])


def test_each_main_call_has_its_own_commands_so_a_blocked_plugin_shows_none(capsys):
    from spurcore.cli import cli, main

    before = set(cli.commands)
    with pytest.raises(SystemExit) as first:
        main(["sweep", "--help"])
    assert first.value.code == 0 and "Run PIPELINE over settings" in capsys.readouterr().out
    with pytest.raises(SystemExit) as blocked:
        main(["-p", "no:sweep", "sweep", "--help"])
    assert blocked.value.code == 2
    assert "No such command 'sweep'" in capsys.readouterr().err
    assert set(cli.commands) == before  # main() adds plugins' commands to a group of its own
