"""MLflow runs of tiny runs and sweeps, read back with MlflowClient from the SQLite store."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import spurcore_mlflow
from spurcore.api import ConfigError, PluginManager, cli, run_pipeline, toml_dumps
from spurcore.testing import TinyPlugin, tiny_pipeline
from spurcore_tracking.testing import Interrupt, interrupted, recorded


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """A fresh SQLite store, made once: creating its tables takes seconds, copying it none."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def runs(tmp_path, empty_store):
    """The folder the test's runs go in, its default store already there."""
    folder = tmp_path / "runs"
    folder.mkdir()
    shutil.copy(empty_store, folder / "mlflow.db")
    return folder


@pytest.fixture
def ml_plugins(spur_plugins, spur_register_plugin):
    spur_register_plugin(spurcore_mlflow, "mlflow")
    return spur_plugins


def client_of(folder):
    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_a_run_is_an_mlflow_run_with_every_metric_param_and_artifact(ml_plugins, spur_tiny_config, runs):
    config = spur_tiny_config(settings={"mlflow": {"tags": {"project": "tiny"}}})
    summary = run_pipeline(config, runs / "erm", ml_plugins, log=lambda m: None)
    stored = json.loads((runs / "erm" / "mlflow.json").read_text())
    assert stored["tracking_uri"] == f"sqlite:///{(runs / 'mlflow.db').resolve()}"

    client = client_of(runs)
    experiment = client.get_experiment_by_name("spurcore")
    assert experiment.artifact_location == (runs / "mlartifacts").resolve().as_uri()
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == stored["run_id"] and found.info.run_name == "erm" and found.info.status == "FINISHED"
    rows = recorded(runs / "erm")
    for split in ("train", "val", "test"):
        assert history(client, found.info.run_id, f"{split}/worst_group_acc") == [
            (e, rows[("0-erm", e, split)]["worst_group_acc"]) for e in (1, 2, 3)]
        assert history(client, found.info.run_id, f"{split}/group_acc/pos_on") == [
            (e, rows[("0-erm", e, split)]["group_acc"]["pos/on"]) for e in (1, 2, 3)]
    assert history(client, found.info.run_id, "train_loss") == [(e, rows[("0-erm", e, "val")]["train_loss"]) for e in (1, 2, 3)]
    assert history(client, found.info.run_id, "selected_epoch") == [(3, summary["selected"]["epoch"])]
    assert found.data.metrics["final/test/avg_acc"] == summary["metrics"]["test"]["avg_acc"]
    params = found.data.params
    assert params["train.lr"] == "0.01" and params["stages.0.method"] == "erm" and params["dataset.name"] == "tiny"
    assert params["settings.mlflow.tags.project"] == "tiny"
    tags = found.data.tags
    assert (tags["project"], tags["seed"], tags["method"], tags["dataset"]) == ("tiny", "0", "erm", "tiny")
    assert "sweep" not in tags
    files = {f.path for f in client.list_artifacts(found.info.run_id)}
    assert {"summary.json", "group_acc.png", "group_acc_epochs.png", "report.md", "config.toml"} <= files
    local = client.download_artifacts(found.info.run_id, "summary.json", str(runs.parent))
    assert json.loads(open(local).read()) == summary


@pytest.mark.parametrize("during", ["evaluation", "epoch_end"])
def test_a_resumed_run_continues_the_same_mlflow_run_without_a_step_twice(ml_plugins, spur_tiny_config, runs, during):
    config = spur_tiny_config(settings={"mlflow": {}})
    interrupted(config, runs / "erm", ml_plugins, Interrupt(epoch=2, during=during))
    run_id = json.loads((runs / "erm" / "mlflow.json").read_text())["run_id"]
    client = client_of(runs)
    assert client.get_run(run_id).info.status == "KILLED"
    assert [s for s, _ in history(client, run_id, "epoch")] == [1]

    run_pipeline(config, runs / "erm", ml_plugins, resume=True, log=lambda m: None)
    assert json.loads((runs / "erm" / "mlflow.json").read_text())["run_id"] == run_id
    [found] = client.search_runs([client.get_experiment_by_name("spurcore").experiment_id])
    assert found.info.run_id == run_id and found.info.status == "FINISHED"
    rows = recorded(runs / "erm")
    assert history(client, run_id, "epoch") == [(1, 1), (2, 2), (3, 3)]
    assert history(client, run_id, "test/avg_acc") == [(e, rows[("0-erm", e, "test")]["avg_acc"]) for e in (1, 2, 3)]
    assert len(client.get_metric_history(run_id, "final/test/avg_acc")) == 1

    run_pipeline(config, runs / "erm", ml_plugins, resume=True, log=lambda m: None)  # a finished run, resumed
    assert len(client.get_metric_history(run_id, "final/test/avg_acc")) == 1
    assert len(client.get_metric_history(run_id, "selected_epoch")) == 1


def test_a_run_whose_mlflow_run_is_gone_gets_a_new_one_with_its_whole_history(ml_plugins, spur_tiny_config, runs):
    config = spur_tiny_config(settings={"mlflow": {"experiment": "first"}})
    interrupted(config, runs / "erm", ml_plugins, Interrupt(epoch=3))
    client = client_of(runs)
    client.delete_run(json.loads((runs / "erm" / "mlflow.json").read_text())["run_id"])
    run_pipeline(config, runs / "erm", ml_plugins, resume=True, log=lambda m: None)
    [found] = client.search_runs([client.get_experiment_by_name("first").experiment_id])
    assert history(client, found.info.run_id, "epoch") == [(1, 1), (2, 2), (3, 3)]
    assert json.loads((runs / "erm" / "mlflow.json").read_text())["run_id"] == found.info.run_id


def test_a_sweep_is_one_experiment_with_a_tagged_run_per_trial(runs):
    pipeline = runs.parent / "tiny.toml"
    pipeline.write_text(toml_dumps(tiny_pipeline(train={"epochs": 2, "batch_size": 50, "lr": 0.01},
                                                    settings={"mlflow": {}})))
    sweep = runs / "lrs"
    sweep.mkdir()
    shutil.copy(runs / "mlflow.db", sweep / "mlflow.db")
    manager = PluginManager(block=["progress"])  # the installed plugins: sweep and mlflow among them
    manager.register(TinyPlugin(), "tiny")
    manager.hook.spurcore_register_commands(cli=cli)
    result = CliRunner().invoke(cli, ["sweep", str(pipeline), "--grid", "train.lr=0.01,0.05", "--seeds", "0,1",
                                      "--methods", "tiny-refit", "--out", str(sweep)],
                                obj={"manager": manager, "plugin_args": []})
    assert result.exit_code == 0, result.output

    client = client_of(sweep)
    experiment = client.get_experiment_by_name("lrs")
    found = client.search_runs([experiment.experiment_id])
    trials = {t["path"]: t for t in json.loads((sweep / "sweep.json").read_text())["trials"]}
    assert sorted(r.info.run_name for r in found) == sorted(trials) and len(found) == 8
    for run in found:
        trial = trials[run.info.run_name]
        tags = run.data.tags
        assert (tags["method"], tags["seed"], tags["trial"]) == (trial["method"], str(trial["seed"]), trial["path"])
        assert tags["setting.train.lr"] == json.dumps(trial["settings"]["train.lr"])
        assert tags["settings"] == f"train.lr={trial['settings']['train.lr']}"
        assert tags["sweep"] == str(sweep.resolve()) and run.info.status == "FINISHED"
        assert run.data.params["train.lr"] == str(trial["settings"]["train.lr"])
        summary = json.loads((sweep / trial["path"] / "summary.json").read_text())
        assert run.data.metrics["final/test/worst_group_acc"] == summary["metrics"]["test"]["worst_group_acc"]
    assert not (runs / "mlflow.db").stat().st_size > (sweep / "mlflow.db").stat().st_size  # the trials went to the sweep's store
    assert client_of(runs).get_experiment_by_name("lrs") is None


def test_trials_in_two_processes_create_one_store_and_one_experiment(tmp_path):
    pipeline = tmp_path / "tiny.toml"
    pipeline.write_text(toml_dumps(tiny_pipeline(train={"epochs": 1, "batch_size": 50, "lr": 0.01},
                                                    settings={"mlflow": {}})))
    sweep = tmp_path / "pair"  # no store yet: both trials start at once and would both create it
    manager = PluginManager(block=["progress"])
    manager.register(TinyPlugin(), "tiny")
    manager.hook.spurcore_register_commands(cli=cli)
    result = CliRunner().invoke(cli, ["sweep", str(pipeline), "--seeds", "0,1", "--jobs", "2", "--out", str(sweep)],
                                obj={"manager": manager, "plugin_args": ["spurcore.testing.tinyplug"]})
    assert result.exit_code == 0, result.output
    client = client_of(sweep)
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    found = client.search_runs([experiment.experiment_id])
    assert experiment.name == "pair" and sorted(r.info.run_name for r in found) == ["erm/default/seed0", "erm/default/seed1"]
    assert all(r.info.status == "FINISHED" and len(client.get_metric_history(r.info.run_id, "epoch")) == 1 for r in found)


@pytest.mark.parametrize("bad, message", [
    ({"experimnt": "x"}, "settings.mlflow.experimnt: unknown key (did you mean 'experiment'?)"),
    ({"tracking_uri": "nowhere"}, "settings.mlflow.tracking_uri: 'nowhere' is not a URI"),
    ({"tags": {"a": 1}}, "settings.mlflow.tags.a: expected a string"),
])
def test_bad_settings_stop_the_run_before_it_writes_anything(ml_plugins, spur_tiny_config, runs, bad, message):
    with pytest.raises(ConfigError) as info:
        run_pipeline(spur_tiny_config(settings={"mlflow": bad}), runs / "erm", ml_plugins, log=lambda m: None)
    assert message in str(info.value)
    assert not (runs / "erm").exists()


def test_a_store_that_cannot_be_opened_stops_the_run_before_training(ml_plugins, spur_tiny_config, runs):
    config = spur_tiny_config(settings={"mlflow": {"tracking_uri": "nosuchscheme://x"}})
    with pytest.raises(ConfigError, match=r"settings\.mlflow\.tracking_uri: cannot open the MLflow store nosuchscheme://x"):
        run_pipeline(config, runs / "erm", ml_plugins, log=lambda m: None)
    assert not (runs / "erm" / "checkpoints").exists()
