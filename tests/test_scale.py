"""benchmarks/scale.py at a tiny scale, so that the CelebA-scale measurement stays runnable
(the numbers themselves are measured at full size, docs/scale.md), and the pieces it rests
on: the memory of a whole process tree, the slopes, the synthetic CelebA's layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import measure  # noqa: E402
import phase_clock  # noqa: E402
import scale  # noqa: E402
import synthetic_celeba  # noqa: E402


def test_two_sizes_of_three_steps_give_rows_slopes_a_figure_and_resume(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "scale.py"), "--data", str(tmp_path / "data"), "--work",
               str(tmp_path / "work"), "--n", "150,300", "--steps", "data-check,erm,report", "--trials", "5",
               "--out", str(tmp_path / "scale.json"), "--figure", str(tmp_path / "scale.png")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "scale.json").read_text())
    assert [(r["step"], r["n_train"]) for r in result["rows"]] == [
        ("data-check", 150), ("data-check", 300), ("erm", 150), ("erm", 300), ("report", 150), ("report", 300)]
    for row in result["rows"]:
        assert row["returncode"] == 0 and row["seconds"] > 0 and row["peak_rss_mib"] > 50, row
        assert row["peak_rss_sum_mib"] >= row["peak_anon_mib"] > 0
    erm = [r for r in result["rows"] if r["step"] == "erm"]
    assert all(r["disk_mib"] > 0 for r in erm)  # checkpoints and records
    for row in erm:  # the clock plugin ran inside `spur run`
        assert row["phases"]["training"] > 0 and row["phases"]["evaluation"] > 0, row["phases"]
        assert sum(row["phases"].values()) == pytest.approx(row["seconds"], abs=0.5)
    assert set(result["slopes"]) == {"data-check", "erm", "report"}
    assert set(result["slopes"]["erm"]) == {"time", "memory", "memory_anon"}
    assert (tmp_path / "scale.png").stat().st_size > 10_000
    sweep = tmp_path / "work" / "n300" / "sweep"
    assert len(json.loads((sweep / "sweep.json").read_text())["trials"]) == 5
    assert "erm" in (tmp_path / "work" / "n300" / "logs" / "report.log").read_text()
    subset = tmp_path / "work" / "datasets" / "celeba-n150"
    assert sum(1 for _ in (subset / "img_align_celeba").iterdir()) == sum(
        sum(c) for c in synthetic_celeba.scaled_counts(150).values())

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)  # every row measured: skipped
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "scale.json").read_text())["rows"] == result["rows"]


def test_an_unknown_step_is_refused_before_anything_is_written(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "scale.py"), "--data", str(tmp_path / "d"), "--work",
                           str(tmp_path / "w"), "--steps", "erm,dfrr"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown step(s) dfrr" in done.stderr
    assert not any(tmp_path.iterdir())


def test_the_memory_of_a_process_tree_counts_its_children(tmp_path):
    """A parent holding little whose child holds 300 MB: the tree's peak counts the child."""
    child = "import time, numpy; held = numpy.ones(300 * 2**20 // 8); time.sleep(1.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    cost = measure.measure([sys.executable, "-c", parent], watch=[tmp_path], interval=0.05)
    assert cost.returncode == 0 and cost.seconds >= 1.5 and 0 < cost.cpu_seconds < cost.seconds
    assert 300 <= cost.peak_rss_mib < 420 and cost.peak_anon_mib >= 290
    assert cost.disk_mib == 0


def test_slopes_are_the_log_log_fit_of_seconds_and_memory_against_n():
    rows = [{"step": "a", "n_train": n, "seconds": 2.0 * n, "peak_rss_mib": 500.0, "peak_anon_mib": 3.0 * n ** 0.5,
             "returncode": 0} for n in (100, 400, 1600)]
    rows.append({"step": "b", "n_train": 100, "seconds": 1.0, "peak_rss_mib": 1.0, "peak_anon_mib": 1.0,
                 "returncode": 0})  # one size only: no slope
    rows.append({"step": "a", "n_train": 6400, "seconds": 1.0, "peak_rss_mib": 1.0, "peak_anon_mib": 1.0,
                 "returncode": 1})  # failed: left out
    assert scale.slopes(rows) == {"a": {"time": 1.0, "memory": 0.0, "memory_anon": 0.5}}


@pytest.mark.parametrize("n_train", [150, 40_000])
def test_the_synthetic_celeba_keeps_every_group_in_proportion(n_train):
    counts = synthetic_celeba.scaled_counts(n_train)
    assert set(counts) == {"train", "val", "test"} and all(min(c) >= 1 for c in counts.values())
    assert abs(sum(counts["train"]) - n_train) <= 2
    assert synthetic_celeba.scaled_counts(synthetic_celeba.FULL_TRAIN) == synthetic_celeba.REAL_COUNTS
    assert sum(map(sum, synthetic_celeba.REAL_COUNTS.values())) == 202_599


def test_phases_split_a_run_into_setup_training_evaluation_fit_and_the_rest(tmp_path):
    events = [("run_start", 10, {}), ("stage_start", 10, {"kind": "train"}), ("epoch_start", 11, {}),
              ("evaluation_start", 15, {}), ("evaluation_end", 16, {}), ("evaluation_start", 16, {}),
              ("evaluation_end", 17.5, {}), ("stage_start", 18, {"kind": "posthoc"}), ("evaluation_start", 21, {}),
              ("evaluation_end", 22, {}), ("run_end", 23, {})]
    path = tmp_path / "clock.jsonl"
    path.write_text("".join(json.dumps({"event": e, "t": t, "pid": 1, **f}) + "\n" for e, t, f in events))
    assert phase_clock.phases(path, started=7, ended=25) == {
        "before the run": 3.0, "training": 4.0, "evaluation": 3.5, "post-hoc fit": 3.0, "the rest": 4.5}
    assert phase_clock.phases(tmp_path / "none.jsonl", 0, 5)["the rest"] == 0.0  # a command without a run
