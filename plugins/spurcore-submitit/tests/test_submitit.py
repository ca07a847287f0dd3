"""`spur sweep --launcher submitit`: trials as local submitit jobs; the options as a SLURM job's
resources and `scancel` on close (with a stand-in SLURM on PATH); and no job left running after
the sweep is interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner
from spurcore.testing import run_folder_free, tiny_pipeline, wait_for

import spurcore_submitit
import spurcore_sweep
from spurcore.api import cli, runlock, toml_dumps
from spurcore_submitit import SubmititOptions
from spurcore_sweep import start_launcher

LOCAL = ["--launcher", "submitit", "--launcher-option", "cluster=local", "--launcher-option", "poll=0.2"]


def write_pipeline(tmp_path, **dataset_options):
    path = tmp_path / "tiny.toml"
    path.write_text(toml_dumps(tiny_pipeline(dataset={"name": "tiny", "options": dataset_options},
                                             train={"epochs": 2 if not dataset_options else 1000, "batch_size": 50})))
    return path


@pytest.fixture
def sweep(spur_plugins, spur_register_plugin):
    """`spur sweep ARGS` in this process, with the sweep and this launcher; trials in other
    processes load the tiny dataset by name (`-p spurcore.testing.tinyplug`)."""
    spur_register_plugin(spurcore_sweep, "sweep")
    spur_register_plugin(spurcore_submitit, "submitit")
    spur_plugins.hook.spurcore_register_commands(cli=cli)

    def invoke(*args):
        return CliRunner().invoke(cli, ["sweep", *map(str, args)],
                                  obj={"manager": spur_plugins, "plugin_args": ["spurcore.testing.tinyplug"]})

    return invoke


def test_trials_run_as_local_jobs(sweep, tmp_path):
    out = tmp_path / "sweep"
    result = sweep(write_pipeline(tmp_path), "--seeds", "0,1", "--jobs", "2", *LOCAL, "--out", out)
    assert result.exit_code == 0, result.output
    records = {t["path"]: t["record"] for t in json.loads((out / "sweep.json").read_text())["trials"]}
    assert set(records) == {"erm/default/seed0", "erm/default/seed1"}
    assert all(r["status"] == "done" and 0 <= r["test_wga"] <= 1 for r in records.values())
    holders = {json.loads((out / path / runlock.LOCK_FILE).read_text())["pid"] for path in records}
    assert len(holders) == 2 and os.getpid() not in holders  # each trial in a process of its own
    assert len(list((out / ".submitit").glob("*_0_log.out"))) == 2  # submitit's logs, one per job


@pytest.mark.parametrize(("option", "message"), [
    ("partiton=gpu", "--launcher submitit --launcher-option partiton: unknown key (did you mean 'partition'?)"),
    ("time=1:00:00", "--launcher submitit --launcher-option time: expected an integer, got str '1:00:00'"),
    ("gpus=-1", "--launcher submitit --launcher-option gpus: must be >= 0, got -1"),
    ("cluster=pbs", "--launcher submitit --launcher-option cluster: 'pbs' is not one of 'auto', 'slurm', 'local'"),
])
def test_a_bad_option_is_named_before_anything_is_written(sweep, tmp_path, option, message):
    out = tmp_path / "sweep"
    result = sweep(write_pipeline(tmp_path), "--launcher", "submitit", "--launcher-option", option, "--out", out)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_a_job_that_ends_without_a_record_is_a_failed_trial_naming_its_log(spur_plugins, spur_register_plugin,
                                                                           tmp_path):
    spur_register_plugin(spurcore_sweep, "sweep")  # owns the kind "launchers"
    spur_register_plugin(spurcore_submitit, "submitit")
    launcher = start_launcher(spur_plugins, "submitit", options=["cluster=local", "poll=0.2"], out=tmp_path)
    job = launcher.submit({"out": str(tmp_path / "erm" / "default" / "seed0")})  # no pipeline: run_trial raises
    [(handle, record)] = launcher.wait([job])
    assert handle is job and record["status"] == "failed"
    assert record["error"].startswith(f"submitit job {job.job_id} ended without a result (")
    assert record["error"].endswith(f"its log: {job.paths.stderr}") and "KeyError" in job.paths.stderr.read_text()


SLURM = {  # a stand-in SLURM: sbatch keeps the script it was given, scancel the ids; no job runs
    "srun": "exit 0",
    "sbatch": 'cp "$1" "$LOG/script.sh"; echo "Submitted batch job 4242"',
    "scancel": 'echo "$@" >> "$LOG/scancel"',
    "sacct": 'echo "JobID|State|NodeList"; echo "4242|RUNNING|node1"',
}


def test_slurm_jobs_ask_for_the_options_and_are_cancelled_on_close(spur_plugins, spur_register_plugin, tmp_path,
                                                                  monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in SLURM.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LOG", str(tmp_path))
    spur_register_plugin(spurcore_sweep, "sweep")  # owns the kind "launchers"
    spur_register_plugin(spurcore_submitit, "submitit")
    options = ["partition=gpu", "time=90", "gpus=1", "mem_gb=16", "account=lab", 'setup=["module load cuda"]']
    launcher = start_launcher(spur_plugins, "submitit", jobs=50, threads=2, options=options, out=tmp_path / "sweep")
    assert launcher.capacity == 50 and launcher.executor.cluster == "slurm"  # found by `auto`: srun is on PATH
    job = launcher.submit({"out": str(tmp_path / "sweep" / "erm" / "default" / "seed0")})
    assert job.job_id == "4242"
    script = (tmp_path / "script.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --mem=16GB", "#SBATCH --account=lab", "#SBATCH --job-name=spur:erm/default/seed0",
                 "\nmodule load cuda\n"):
        assert line in script, script
    launcher.close()  # what an interrupted sweep does
    assert (tmp_path / "scancel").read_text() == "4242\n"


def training(run):
    """Whether a trial trains in `run` (its first epoch's checkpoint is written, under its lock)."""
    return (run / "checkpoints" / "0-erm" / "epoch_001.pt").exists()


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("started", ["foreground", "background"])
def test_a_terminated_sweep_cancels_its_jobs(tmp_path, started):
    """Also for a sweep started from a background shell job (`spur sweep ... &`), which inherits
    SIGINT ignored, as do its jobs: cancelling a local job (SIGINT) used to leave it training."""
    path = write_pipeline(tmp_path, n_train=20000)  # trials of minutes: 1000 epochs of 20000 examples
    out = tmp_path / "sweep"
    runs = [out / "erm" / "default" / f"seed{seed}" for seed in (0, 1)]
    sweep = subprocess.Popen([sys.executable, "-m", "spurcore", "-p", "spurcore.testing.tinyplug", "sweep", str(path),
                              "--seeds", "0,1", "--jobs", "2", *LOCAL, "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=ignore_sigint if started == "background" else None)
    try:
        wait_for(lambda: all(map(training, runs)) or sweep.poll() is not None, 120, "both trials training")
        assert sweep.poll() is None, sweep.stderr.read()
        assert not any(map(run_folder_free, runs))
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(30) != 0
        wait_for(lambda: all(map(run_folder_free, runs)), 30, "the jobs' trials are gone, their run folders free")
        assert not any((run / "summary.json").exists() for run in runs)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()


def test_the_readme_documents_every_option():
    readme = (Path(spurcore_submitit.__file__).parents[1] / "README.md").read_text()
    assert set(re.findall(r"^\| `(\w+)` \|", readme, flags=re.M)) == {f.name for f in attrs.fields(SubmititOptions)}
