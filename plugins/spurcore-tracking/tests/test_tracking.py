"""Names, steps and hyperparameters of tracked runs, a trial's sweep, and the tracker's retry,
with an in-memory backend on tiny runs."""

from __future__ import annotations

import json

from spurcore import hookimpl
from spurcore.api import ObserverSpec, RunDir, run_pipeline
from spurcore_tracking import Tracker, flatten_metrics, hyperparameters, scalar_name
from spurcore_tracking.identity import Identity


def test_group_names_become_one_level_of_the_scalar_name():
    assert scalar_name("waterbird/land") == "waterbird_land"
    assert scalar_name("straight digit/land") == "straight_digit_land"
    assert flatten_metrics("test", {"avg_acc": 0.5, "group_acc": {"a/b": 0.25, "a/c": None}, "n": True,
                                    "group_count": {"a/b": 4}}) == {
        "test/avg_acc": 0.5, "test/group_acc/a_b": 0.25, "test/group_count/a_b": 4.0}


def test_the_resolved_config_is_flat_hyperparameters(spur_tiny_config):
    config = spur_tiny_config(stages=[{"method": "erm"}, {"method": "tiny-refit"}], settings={"m": {"k": [1, 2]}})
    flat = hyperparameters(config)
    assert flat["train.lr"] == 0.01 and flat["train.epochs"] == 3 and flat["seed"] == 0
    assert flat["stages.0.method"] == "erm" and flat["stages.1.method"] == "tiny-refit"
    assert flat["settings.m.k"] == "[1, 2]" and flat["metrics"] == json.dumps(config.metrics)
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())


def test_a_trial_is_named_and_tagged_from_the_origin_its_sweep_wrote(spur_tiny_config, tmp_path):
    class Run:
        pass

    run, folder = Run(), tmp_path / "sweep" / "dfr" / "r=5-ab" / "seed1"
    run.out, run.config = RunDir(folder), spur_tiny_config(seed=1)
    folder.mkdir(parents=True)
    alone = Identity.of(run)  # no origin.json: a run of its own, named after its folder
    assert (alone.name, alone.experiment, alone.root) == ("seed1", "spurcore", folder.parent.resolve())
    (folder / "origin.json").write_text(json.dumps({
        "launched_by": "spurcore-sweep", "sweep": str(tmp_path / "sweep"), "trial": "dfr/r=5-ab/seed1",
        "method": "dfr", "settings": {"dfr.options.retrains": 5}, "seed": 1}))
    trial = Identity.of(run)
    assert (trial.name, trial.experiment, trial.root) == ("dfr/r=5-ab/seed1", "sweep", tmp_path / "sweep")
    assert trial.tags["method"] == "dfr" and trial.tags["seed"] == "1"
    assert trial.tags["settings"] == "dfr.options.retrains=5" and trial.tags["setting.dfr.options.retrains"] == "5"


class Memory:
    """A backend that keeps what it is sent, and fails the `fail`-th `log` call."""

    def __init__(self, fail: int = 0) -> None:
        self.sent: list[tuple[int, dict]] = []
        self.calls, self.fail, self.status = 0, fail, None

    def logged(self, key):
        return {step for step, scalars in self.sent if key in scalars}

    def begin(self, resume_at, hyperparameters):
        self.hyperparameters = hyperparameters

    def log(self, entry):
        self.calls += 1
        if self.calls == self.fail:
            raise ConnectionError("server away")
        self.sent.append((entry.step, dict(entry.scalars)))

    def finish(self, entry, files):
        self.files = [f.name for f in files]
        self.log(entry)

    def close(self, status):
        self.status = status


class MemoryPlugin:
    def __init__(self, backend):
        self.backend = backend

    @hookimpl
    def spurcore_register_observers(self):
        return [ObserverSpec(name="memory", factory=lambda s: Tracker("memory", s, lambda run, s, who: self.backend))]


def test_a_failed_log_is_retried_at_the_next_epoch_and_the_run_goes_on(spur_plugins, spur_register_plugin,
                                                                       spur_tiny_config, tmp_path):
    backend = Memory(fail=1)  # epoch 1 cannot be sent when it ends
    spur_register_plugin(MemoryPlugin(backend), "memory")
    said = []
    config = spur_tiny_config(stages=[{"method": "erm"}, {"method": "tiny-refit"}])
    summary = run_pipeline(config, tmp_path / "run", spur_plugins, log=said.append)
    assert any("memory: could not log (ConnectionError: server away); trying again at the next epoch" in s for s in said)
    epochs = [(step, s["epoch"]) for step, s in backend.sent if "epoch" in s]
    assert epochs == [(1, 1), (2, 2), (3, 3), (4, 0)]  # epoch 1 sent with epoch 2; the post-hoc stage is step 4
    assert [(step, s["selected_epoch"]) for step, s in backend.sent if "selected_epoch" in s] == [
        (3, summary["stages"][0]["selected"]["epoch"]), (4, 0)]
    final = [s for _, s in backend.sent if "final/selected_epoch" in s]
    assert len(final) == 1 and final[0]["final/test/avg_acc"] == summary["metrics"]["test"]["avg_acc"]
    assert backend.files == ["group_acc.png", "group_acc_epochs.png", "summary.json", "report.md", "config.toml"]
    assert backend.hyperparameters["stages.1.method"] == "tiny-refit" and backend.status == "FINISHED"
