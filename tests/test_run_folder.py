"""Run folders: one run at a time holds a folder, nothing is lost or half-done, and every check
that can fail runs before the first file is written."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import attrs
import pytest
import torch

from spurcore import atomic, hookimpl
from spurcore.config import ConfigError, positive
from spurcore.rundir import RunDir
from spurcore.runlock import LOCK_FILE, RunLockedError, locked
from spurcore.planning import RunError
from spurcore.runner import run_pipeline
from spurcore.specs import MitigationSpec, ObserverSpec
from spurcore.testing import tiny_pipeline
from spurcore.tomlwriter import dumps as toml_dumps


def quiet(config, out, plugins, **kwargs):
    return run_pipeline(config, out, plugins, log=lambda message: None, **kwargs)


def written(folder):
    """Every file under `folder`, relative, but the lock."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE)


# --- the lock ---------------------------------------------------------------------------------


def test_a_second_run_into_a_held_folder_stops_naming_the_holder(tmp_path, spur_plugins, spur_tiny_config):
    with locked(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()} on host {socket.gethostname()}"):
            quiet(spur_tiny_config(), tmp_path / "run", spur_plugins)
    assert written(tmp_path / "run") == []


def test_resume_while_the_run_still_runs_is_refused(tmp_path, spur_plugins, spur_tiny_config):
    quiet(spur_tiny_config(), tmp_path / "run", spur_plugins)
    with locked(tmp_path / "run"), pytest.raises(RunLockedError, match="a run is writing there"):
        quiet(spur_tiny_config(), tmp_path / "run", spur_plugins, resume=True)


def test_a_process_forked_while_the_lock_is_held_does_not_keep_it(tmp_path):
    """A data-loader worker forked during a run shares the lock's descriptor; the lock is
    released when the run ends all the same, while the worker lives on."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    release = context.Event()
    with locked(tmp_path / "run"):
        child = context.Process(target=release.wait, args=(30,))
        child.start()
    try:
        with locked(tmp_path / "run"):
            assert child.is_alive()
    finally:
        release.set()
        child.join()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, spur_plugins, spur_tiny_config):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from spurcore.runlock import locked\n"
        f"with locked({str(tmp_path / 'run')!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"in use by pid {holder.pid} "):
            quiet(spur_tiny_config(), tmp_path / "run", spur_plugins)
    finally:
        holder.kill()  # as kill -9 would: the lock file stays, naming a dead process
        holder.wait()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == holder.pid
    summary = quiet(spur_tiny_config(), tmp_path / "run", spur_plugins)
    assert summary["selected"]["epoch"] >= 1
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_two_runs_started_together_never_both_write(tmp_path):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('selector = "val-wga"\ndevice = "cpu"\n[dataset]\nname = "waterdigits"\n'
                        '[dataset.options]\nscale = 0.03\nsize = 12\n[backbone]\nname = "small-cnn"\n'
                        '[backbone.options]\nwidth = 4\n[train]\nepochs = 3\n[[stages]]\nmethod = "erm"\n')
    env = {**os.environ, "SPURCORE_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "spurcore", "run", str(pipeline), "--out", str(tmp_path / "run"), "--quiet"]
    first, second = (subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2))
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "is in use by pid" in loser or "already holds a run" in loser
    assert (tmp_path / "run" / "summary.json").exists()


# --- what a folder must hold -------------------------------------------------------------------


def test_resume_of_a_folder_without_a_run_is_refused_and_writes_nothing(tmp_path, spur_plugins, spur_tiny_config):
    with pytest.raises(RunError, match=r"holds no run to resume \(no config.toml\): check the path"):
        quiet(spur_tiny_config(), tmp_path / "typo", spur_plugins, resume=True)
    assert not (tmp_path / "typo").exists()


def test_auto_resume_starts_a_run_or_continues_one(tmp_path, spur_plugins, spur_tiny_config):
    first = quiet(spur_tiny_config(), tmp_path / "run", spur_plugins, resume="auto")
    assert quiet(spur_tiny_config(), tmp_path / "run", spur_plugins, resume="auto") == first


def test_leftover_temporary_files_do_not_count_and_are_removed(tmp_path, spur_plugins, spur_tiny_config):
    folder = tmp_path / "run"
    folder.mkdir()
    leftover = atomic.temporary_path(folder / "config.toml")  # what a kill during the first write leaves
    leftover.write_text("half")
    assert atomic.is_temporary(leftover)
    quiet(spur_tiny_config(), folder, spur_plugins)
    assert not leftover.exists()


def test_a_folder_with_other_files_and_no_run_is_refused(tmp_path, spur_plugins, spur_tiny_config):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match=r"not empty and holds no run \(notes.txt\)"):
        quiet(spur_tiny_config(), tmp_path / "run", spur_plugins)
    assert written(tmp_path / "run") == ["notes.txt"]


class StopBeforeSummary:
    """Stops the run as a kill would, after its report but before it is complete."""

    @hookimpl
    def spurcore_stage_end(self):
        from spurcore import report

        original = report.plot_group_acc_epochs

        def fail(*args, **kwargs):
            report.plot_group_acc_epochs = original
            raise KeyboardInterrupt

        report.plot_group_acc_epochs = fail


def test_summary_is_written_last_so_a_cut_run_is_never_taken_as_finished(tmp_path, spur_plugins, spur_tiny_config,
                                                                         spur_register_plugin):
    spur_register_plugin(StopBeforeSummary(), "stop")
    with pytest.raises(KeyboardInterrupt):
        quiet(spur_tiny_config(), tmp_path / "run", spur_plugins)
    out = RunDir(tmp_path / "run")
    assert out.report.exists() and not out.summary.exists()
    spur_plugins.unregister(spur_plugins.pm.get_plugin("stop"))
    summary = quiet(spur_tiny_config(), tmp_path / "run", spur_plugins, resume=True)
    assert json.loads(out.summary.read_text()) == summary


# --- checks before the first file -----------------------------------------------------------------


@attrs.frozen
class CounterSettings:
    every: int = attrs.field(default=1, validator=positive)


class CounterObserver:
    @hookimpl
    def spurcore_register_observers(self):
        return [ObserverSpec(name="counter", settings=CounterSettings, factory=lambda settings: None)]


@pytest.mark.parametrize("change, message", [
    ({"init": {"run": "/nonexistent/run"}}, r"/nonexistent/run: not a run directory"),
    ({"settings": {"counterz": {}}}, r"settings\.counterz: no observer of that name is installed \(did you mean 'counter'\?\)"),
    ({"settings": {"counter": {"every": 0}}}, r"settings\.counter\.every: must be positive, got 0"),
    ({"settings": {"counter": {"file": "x"}}}, r"settings\.counter\.file: unknown key \(known: every\)"),
    ({"dataset": {"name": "waterdigits", "options": {"scale": 0.02, "size": 16}},
      "backbone": {"name": "resnet18", "options": {"pretrained": True}}}, r"no pretrained weights for resnet18"),
    ({"dataset": {"name": "waterdigits", "options": {"size": 2, "scale": 0.02}}, "backbone": {"name": "small-cnn"}},
     r"small-cnn: 3 blocks pool 2 times, which needs images of at least 4 pixels; dataset 'waterdigits' has 2"),
    ({"backbone": {"name": "small-cnn"}},
     r"backbone 'small-cnn' cannot take the inputs of dataset 'tiny' \(input shape \(8,\)\): RuntimeError"),
])
def test_a_bad_input_stops_the_run_before_anything_is_written(tmp_path, spur_plugins, spur_tiny_config, monkeypatch,
                                                              spur_register_plugin, change, message):
    spur_register_plugin(CounterObserver(), "counter")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SPURCORE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(Exception, match=message):
        quiet(spur_tiny_config(**change), tmp_path / "run", spur_plugins)
    assert not (tmp_path / "run").exists()


class FailInEpoch:
    @hookimpl
    def spurcore_batch_end(self, epoch, step):
        if epoch == 1 and step == 1:
            raise RuntimeError("a corrupt image, out of memory, ...")


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_the_folder_as_it_was(tmp_path, spur_plugins,
                                                                                    spur_tiny_config, spur_register_plugin):
    failing = spur_register_plugin(FailInEpoch(), "fail")
    with pytest.raises(RuntimeError, match="a corrupt image"):
        quiet(spur_tiny_config(), tmp_path / "run", spur_plugins)
    assert written(tmp_path / "run") == []
    spur_plugins.unregister(failing)
    quiet(spur_tiny_config(), tmp_path / "run", spur_plugins)  # the same command works once the cause is gone
    assert RunDir(tmp_path / "run").summary.exists()


def test_a_resumed_run_that_fails_keeps_what_it_had(tmp_path, spur_plugins, spur_tiny_config, spur_register_plugin):
    quiet(spur_tiny_config(), tmp_path / "run", spur_plugins)
    before = written(tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    spur_register_plugin(FailInEpoch(), "fail")
    quiet(spur_tiny_config(), tmp_path / "run", spur_plugins, resume=True)  # every stage finished: nothing to train
    assert written(tmp_path / "run") == before


class Picky:
    """A method whose options must fit the data, and one whose layer cannot be inserted."""

    def __init__(self, options):
        pass

    @hookimpl
    def spurcore_prepare_model(self, stage):
        if stage.spec.name == "breaks-model":
            raise ConfigError("layer 'block9' is not in this backbone")


def _needs_split(options, data, model):
    if "holdout" not in data.splits:
        raise ConfigError(f"split 'holdout' is not in dataset {data.name!r}")


class PickyPlugin:
    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="needs-split", factory=Picky, check=_needs_split),
                MitigationSpec(name="breaks-model", factory=Picky)]


@pytest.mark.parametrize("method, message", [
    ("needs-split", r"stages\[1\]\.options: split 'holdout' is not in dataset 'tiny'"),
    ("breaks-model", r"layer 'block9' is not in this backbone"),
])
def test_stage_checks_run_before_anything_is_written(tmp_path, spur_plugins, spur_tiny_config, spur_register_plugin, method,
                                                     message):
    spur_register_plugin(PickyPlugin(), "picky")
    with pytest.raises(ConfigError, match=message):
        quiet(spur_tiny_config(stages=[{"method": "erm"}, {"method": method}]), tmp_path / "run", spur_plugins)
    assert not (tmp_path / "run").exists()


# --- files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_files_get_the_mode_the_umask_gives(tmp_path, spur_plugins, spur_tiny_config, umask, mode):
    old = os.umask(umask)
    try:
        quiet(spur_tiny_config(train={"epochs": 1, "batch_size": 64}), tmp_path / "run", spur_plugins)
    finally:
        os.umask(old)
    out = RunDir(tmp_path / "run")
    for path in (out.config, out.summary, out.report, out.figure, out.checkpoint("0-erm", 1), out.metrics):
        assert path.stat().st_mode & 0o777 == mode, path


def test_the_starting_model_is_tried_without_changing_the_run(tmp_path, spur_plugins, spur_tiny_config):
    """Trying the model on a batch before the run draws no random number and changes no weight."""
    first = quiet(spur_tiny_config(), tmp_path / "a", spur_plugins)
    torch.manual_seed(123)  # whatever the global state, the run seeds itself
    assert quiet(spur_tiny_config(), tmp_path / "b", spur_plugins) == first


# --- nothing misleading: diverged training, a foreign [init] model, read-only and full disks (issue 25)


class Diverge:
    """A training method whose loss stops being a number at epoch 2, step 3, as a too-large
    learning rate makes it."""

    def __init__(self, options):
        pass

    @hookimpl
    def spurcore_train_loss(self, model, batch, stage):
        loss = torch.nn.functional.cross_entropy(model(batch.x, index=batch.index), batch.y)
        return loss * float("nan") if (Diverge.epoch, Diverge.step) == (2, 3) else loss

    @hookimpl
    def spurcore_batch_end(self, epoch, step):
        Diverge.epoch, Diverge.step = epoch, step + 1


class DivergePlugin:
    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="diverge", kind="train", factory=Diverge)]


def test_a_loss_that_stops_being_a_number_stops_the_run_naming_stage_epoch_and_step(tmp_path, spur_plugins,
                                                                                     spur_tiny_config,
                                                                                     spur_register_plugin, spur_cli):
    """Issue 25, item 3: the run used to train on to NaN weights and exit 0."""
    spur_register_plugin(DivergePlugin(), "diverge-plugin")
    Diverge.epoch = Diverge.step = 0
    config = spur_tiny_config(stages=[{"method": "diverge"}])
    with pytest.raises(RunError, match=r"^stages\[0\] \(0-diverge\), epoch 2, step 3: the training loss is not a "
                                       r"finite number.*keeps the checkpoints of epochs 1 to 1"):
        quiet(config, tmp_path / "run", spur_plugins)
    assert RunDir(tmp_path / "run").epochs("0-diverge") == [1]  # epoch 2's NaN weights were never saved
    assert not RunDir(tmp_path / "run").summary.exists()
    Diverge.epoch = Diverge.step = 0
    (tmp_path / "pipeline.toml").write_text(toml_dumps(tiny_pipeline(stages=[{"method": "diverge"}])))
    result = spur_cli("run", tmp_path / "pipeline.toml", "--out", tmp_path / "cli", "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: stages[0] (0-diverge), epoch 2, step 3: the training loss is not a finite")


@pytest.mark.parametrize("key, ours", [("backbone.options.hidden", {"backbone": {"name": "mlp", "options": {"hidden": 8}}}),
                                       ("dataset.options.n_train", {"dataset": {"name": "tiny", "options": {"n_train": 150}}})])
def test_a_pipeline_that_starts_from_a_run_of_another_model_or_dataset_is_refused(tmp_path, spur_plugins,
                                                                                  spur_tiny_config, key, ours):
    """Issue 25, item 4: DFR from a run of width 32 under a pipeline saying 16 ran, and its
    config.toml said 16."""
    quiet(spur_tiny_config(train={"epochs": 1}), tmp_path / "a", spur_plugins)
    config = spur_tiny_config(init={"run": str(tmp_path / "a")}, stages=[{"method": "tiny-refit"}], **ours)
    with pytest.raises(RunError, match=rf"^<pipeline>: init.run: {tmp_path / 'a'} was trained with {re.escape(key)} = "):
        quiet(config, tmp_path / "b", spur_plugins)
    assert not (tmp_path / "b").exists()
    same = spur_tiny_config(init={"run": str(tmp_path / "a")}, stages=[{"method": "tiny-refit"}],
                            backbone={"name": "mlp", "options": {"hidden": 16}})  # the default, written out
    quiet(same, tmp_path / "c", spur_plugins)


def test_a_read_only_run_folder_is_one_sentence(tmp_path, spur_plugins, spur_tiny_config, spur_cli, spur_read_only):
    """Issue 25, item 5: `--resume` of a read-only run, and a new run below a read-only folder,
    ended in a PermissionError traceback."""
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(toml_dumps(tiny_pipeline(train={"epochs": 1})))
    assert spur_cli("run", pipeline, "--out", tmp_path / "shared" / "run", "--quiet").exit_code == 0
    (tmp_path / "shared" / "run" / "summary.json").unlink()
    before = written(tmp_path / "shared")
    spur_read_only(tmp_path / "shared")
    for args in (["--out", tmp_path / "shared" / "run", "--resume"], ["--out", tmp_path / "shared" / "new"]):
        result = spur_cli("run", pipeline, *args, "--quiet")
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "cannot write" in lines[0] and "read-only to this user" in lines[0], lines
        assert str(tmp_path / "shared") in lines[0]
    assert written(tmp_path / "shared") == before


def test_a_full_disk_is_one_sentence_naming_the_file_and_the_run_resumes(tmp_path, spur_plugins, spur_tiny_config,
                                                                          spur_cli, spur_register_plugin, monkeypatch):
    """Issue 25, item 7: the disk fills while epoch 2's checkpoint is written (every write of the
    run goes to /dev/full from then on, which answers ENOSPC as a full disk does): one line
    naming the checkpoint, not torch's `RuntimeError: [enforce fail at inline_container.cc]`;
    once there is space, --resume finishes the run."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full to stand in for a full disk")
    full = {"now": False}
    real_open = os.open

    def open_on_a_full_disk(path, flags, mode=0o777, **kwargs):
        if full["now"] and atomic.is_temporary(path):
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, mode, **kwargs)

    class FillsUp:
        @hookimpl
        def spurcore_epoch_start(self, epoch):
            full["now"] = epoch == 2

    monkeypatch.setattr(os, "open", open_on_a_full_disk)
    spur_register_plugin(FillsUp(), "fills-up")
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(toml_dumps(tiny_pipeline()))
    result = spur_cli("run", pipeline, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    checkpoint = tmp_path / "run" / "checkpoints" / "0-erm" / "epoch_002.pt"
    assert result.output == (f"Error: {checkpoint}: cannot write (No space left on device): the disk is full: free "
                             f"space (or write to another disk) and run the command again; a run keeps its finished "
                             f"epochs and continues from the last one with --resume\n")
    assert RunDir(tmp_path / "run").epochs("0-erm") == [1]
    full["now"] = False
    spur_plugins.unregister(spur_plugins.pm.get_plugin("fills-up"))
    assert spur_cli("run", pipeline, "--out", tmp_path / "run", "--resume", "--quiet").exit_code == 0
    assert RunDir(tmp_path / "run").epochs("0-erm") == [1, 2, 3]
