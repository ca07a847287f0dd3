"""The GPU check's measurements, once `gpu_check.sh` has installed the repository (run that:
it is the one command). In order, each step timed, a failure recorded and the next step run:

1. the tests that need CUDA: `pytest -m cuda tests/test_cuda.py tests/test_distributed.py`
   (placement, AMP, pinned memory, channels_last, compile, the cache's normalization on the
   GPU, FairDropout's masks equal to the CPU's bit for bit; DDP with NCCL where there are two
   GPUs), each test's outcome read from pytest's JUnit XML;
2. `gpu_epoch.py` (`measure`): a synthetic Waterbirds written once at full size (11,788
   JPEGs of 500 x 375, the real group counts; reused from `--root` when it is there), then one
   epoch of ResNet-50 at 224 px, batch 256, AMP, in the plain SubpopBench-style loop, our
   runner, from the decoded-image cache, and cached with channels_last and with compile;
3. every installed method's pipeline for one epoch, built as `spur sweep --methods all` builds
   them from an ERM pipeline (the runner's settings above, from the cache): ERM, the training
   methods from scratch (FairDropout, Group DRO), JTT and pruned-twin from the ERM run's model,
   the post-hoc ones (DFR, NeuronTune) on its embeddings. `gpu_epoch.StageClock` times each:
   a training method's first epoch over the examples it stepped through, a post-hoc method's
   whole stage over the images its backbone forwarded.

Then one table (images per second, seconds, peak GPU memory, ratio to the plain loop) on
stdout, and everything as JSON in `--out`/gpu_check.json. Exit status 1 when a test or a step
failed; a method that needs a module this Python lacks is skipped, naming the module.
`--tiny` runs the same steps on a few 64 x 48 images with the small CNN at 32 px (no compile):
the test suite runs it on the CPU (`tests/test_gpu_check.py`) so the check never rots.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

import gpu_epoch
import imports_check
from spurcore.api import PluginManager, available_cores, toml_dumps

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = ("tests/test_cuda.py", "tests/test_distributed.py")
TARGET_S = 480  # the whole check, install included, on one H100-class GPU
TINY = ["--arch", "small-cnn", "--images", "16", "--size", "16", "--batch", "16", "--jpeg-size", "64x48",
        "--workers", "0", "--variants", "plain,runner,cached,cached-channels-last"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check",
                        help="where gpu_check.json, the tests' XML, the methods' runs (and by default the data "
                             "and the cache) go (default: runs/gpu-check)")
    parser.add_argument("--root", type=Path, help="a Waterbirds folder, or where the synthetic one is written once "
                                                  "and reused (default: OUT/data)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="a few small images, the small CNN at 32 px, no compile")
    parser.add_argument("--train-subset", type=float, default=1.0,
                        help="the fraction of training images each method trains on (default 1: all)")
    parser.add_argument("--install-s", type=float, help="seconds the install took (gpu_check.sh passes it)")
    parser.add_argument("--started", type=float, help="when the check started, in seconds since the epoch "
                                                      "(gpu_check.sh passes it, so the total counts every second)")
    return parser.parse_args(argv)


class Steps:
    """Each step's seconds, and its error (type, message, traceback) instead of an exit."""

    def __init__(self) -> None:
        self.seconds: dict[str, float | None] = {}
        self.errors: dict[str, str] = {}

    def run(self, name: str, work, *args):
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            return work(*args)
        except Exception as error:  # noqa: BLE001 - recorded; the next step still runs
            self.errors[name] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
            return None
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 1)


# --- 1. the tests that need CUDA -------------------------------------------------------------


def cuda_tests(out: Path) -> dict:
    """`pytest -m cuda` on the CUDA tests in a process of its own; every test's outcome."""
    report = out / "tests.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", *CUDA_TESTS, "-q", "-p", "no:cacheprovider",
                           f"--junitxml={report}"], cwd=ROOT, capture_output=True, text=True)
    if not report.is_file():
        raise RuntimeError(f"pytest wrote no report (exit {done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    result = {"exit": done.returncode, "passed": [], "skipped": {}, "failed": {}}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            result["failed"][name] = (problem.get("message") or "failed").splitlines()[0]
        elif case.find("skipped") is not None:
            result["skipped"][name] = re.sub(r"^Skipped: ", "", case.find("skipped").get("message") or "")
        else:
            result["passed"].append(name)
    if done.returncode not in (0, 1) or (done.returncode == 1 and not result["failed"]):
        raise RuntimeError(f"pytest exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return result


# --- 2. gpu_epoch.py ---------------------------------------------------------------------------


def epoch_args(args: argparse.Namespace) -> argparse.Namespace:
    """gpu_epoch's settings for this check: its defaults (ResNet-50, 224 px, batch 256, every
    variant, one loader process per core), or the tiny ones."""
    return gpu_epoch.parse([*(TINY if args.tiny else []), "--device", args.device,
                            "--cache-dir", str(args.out / "cache")])


# --- 3. every method for one epoch -----------------------------------------------------------


def method_pipeline(folder: Path, settings: argparse.Namespace, train_subset: float) -> dict:
    """The baseline the methods are built from: gpu_epoch's cached runner (ERM, one epoch),
    keeping only the selected checkpoint."""
    config = gpu_epoch.runner_config(folder, settings, Path(settings.cache_dir))
    config["dataset"]["train_subset"] = train_subset
    config["train"]["keep_checkpoints"] = "selected"
    return config


def methods(folder: Path, settings: argparse.Namespace, out: Path, train_subset: float) -> dict:
    """Every installed method's pipeline for one epoch, planned and run as `spur sweep --methods
    all` plans and runs them (one after the other, in this process, so one clock times them all)."""
    from spurcore_sweep.launchers import Inline, execute
    from spurcore_sweep.trials import all_methods, plan_sweep, write_manifest

    if out.exists():
        shutil.rmtree(out)  # a sweep skips finished runs: every method trains again, to be timed
    out.mkdir(parents=True)
    pipeline = out / "pipeline.toml"
    pipeline.write_text(toml_dumps(method_pipeline(folder, settings, train_subset)))
    manager = PluginManager(block=["progress"])
    clock = gpu_epoch.StageClock()
    manager.register(clock, "stage-clock")
    grid = {f"{name}.train.epochs": [1] for name, entry in manager.registry("mitigations").items()
            if entry.spec.kind == "train" and name != "erm"}  # pruned-twin's own default is 20 epochs
    found, grid, left_out = all_methods(pipeline, manager, grid)
    sweep = plan_sweep(pipeline, out, manager, grid=grid, seeds=[0], methods=found, threads=torch.get_num_threads())
    write_manifest(sweep, {})
    records = execute(sweep, Inline(manager), lambda trial, record: print(
        f"gpu_check: {trial.method}: {record['status']}", file=sys.stderr, flush=True))
    write_manifest(sweep, records)
    timed = {str(Path(r["run"]).resolve()): r for r in clock.records}
    rows = {}
    for trial in sweep.trials:
        record = records[trial.path]
        row = {"status": record["status"], **timed.get(str((sweep.out / trial.path).resolve()), {})}
        if skipped_for_module(record.get("error", "")):
            row["status"] = skipped_for_module(record["error"])
        elif "error" in record:
            row["error"] = record["error"]
        if trial.after:
            row["starts_from"] = trial.after
        rows[trial.method] = row
    return {"methods": rows, "left_out": {name: skipped_for_module(why) or why for name, why in left_out.items()},
            "plugins_failed": dict(manager.failed), "train_subset": train_subset}


def skipped_for_module(error: str) -> str | None:
    """The row status of a method whose error says a module is not installed ("skipped: needs M, ..."), else None."""
    missing = re.search(r"No module named '([^']+)'", error)
    return f"skipped: needs {missing[1]}, which this Python lacks" if missing else None


# --- the table ----------------------------------------------------------------------------


def rate(images: int | None, seconds: float | None) -> float | None:
    return round(images / seconds, 1) if images and seconds else None


def table(result: dict) -> str:
    """One markdown table: gpu_epoch's variants, then every method."""
    epoch = result.get("gpu_epoch") or {}
    plain = (epoch.get("variants") or {}).get("plain", {}).get("images_per_s")
    lines = ["| step | images | seconds | images/s | peak GPU MiB | vs plain loop | note |",
             "|---|---:|---:|---:|---:|---:|---|"]

    def row(step, images, seconds, memory, ratio, note=""):
        cells = [step, images, None if seconds is None else round(seconds, 2), rate(images, seconds), memory,
                 None if ratio is None else f"{ratio:.3f}", note]
        lines.append("| " + " | ".join("—" if c is None else str(c) for c in cells) + " |")

    for name, measured in (epoch.get("variants") or {}).items():
        if "error" in measured:
            row(f"epoch: {name}", None, None, None, None, f"failed: {measured['error']}")
            continue
        note = "SubpopBench-style loop" if name == "plain" else "runner" + (", compilation included" if
                                                                             name.endswith("compile") else "")
        row(f"epoch: {name}", measured["images"], measured["epoch_s"], measured["gpu_memory_mib"],
            measured.get("ratio_to_plain"), note)
    for name, measured in (result.get("methods") or {}).get("methods", {}).items():
        if measured["status"] != "done":
            row(f"method: {name}", None, None, None, None, measured["status"] + (f": {measured['error']}" if "error" in
                                                                                    measured else ""))
            continue
        images, seconds = measured.get("images"), measured.get("epoch_s")
        if measured.get("kind") == "train":
            ratio = rate(images, seconds) / plain if plain and rate(images, seconds) else None
            note = "one epoch" + (f", from {measured['starts_from'].split('/')[0]}'s model" if "starts_from" in measured
                                  else "")
        else:
            ratio, note = None, ("post-hoc: the whole stage" + ("" if images else ", on embeddings cached by an "
                                                                              "earlier method"))
        row(f"method: {name}", images, seconds, measured.get("gpu_memory_mib"), ratio, note)
    for name, why in (result.get("methods") or {}).get("left_out", {}).items():
        row(f"method: {name}", None, None, None, None, why if why.startswith("skipped") else f"left out: {why}")
    return "\n".join(lines)


def summary(result: dict) -> str:
    """The lines around the table: the machine, the tests, what this Python lacks, the time."""
    epoch = result.get("gpu_epoch") or {}
    lines = [f"GPU check on {result['gpu'] or 'the CPU (no GPU)'}: torch {result['torch']}, CUDA {result['cuda']}, "
             f"{result['gpus']} GPU(s); {epoch.get('arch')} at {epoch.get('image_size')} px, batch "
             f"{epoch.get('batch_size')}, AMP {'on' if epoch.get('amp') else 'off'}, {epoch.get('workers')} loader "
             f"processes; {'tiny scale' if result['tiny'] else 'full scale'}"]
    tests = result.get("tests")
    if tests:
        lines.append(f"tests (pytest -m cuda): {len(tests['passed'])} passed, {len(tests['skipped'])} skipped, "
                     f"{len(tests['failed'])} failed")
        lines += [f"  failed {name}: {why}" for name, why in tests["failed"].items()]
        reasons = sorted(set(tests["skipped"].values()))
        lines += [f"  skipped ({sum(1 for r in tests['skipped'].values() if r == why)}): {why}" for why in reasons]
    if result["lacking"]:
        lines.append("modules this Python lacks (what imports them is skipped): " + "; ".join(
            f"{module} ({', '.join(places)})" for module, places in result["lacking"].items()))
    for name, why in ((result.get("methods") or {}).get("plugins_failed") or {}).items():
        lines.append(f"plugin {name} did not load: {why}")
    for name, error in result["errors"].items():
        lines.append(f"step {name} failed: {error}")
    return "\n".join(lines)


def footer(result: dict) -> str:
    steps = result["seconds"]
    parts = ", ".join(f"{k} {'not run' if v is None else f'{v:.0f}'}" for k, v in steps.items())
    total = result["total_s"]
    verdict = "" if result["tiny"] else (f"; within the {TARGET_S} s target" if total <= TARGET_S else
                                         f"; OVER the {TARGET_S} s target")
    subset = result.get("methods", {}) or {}
    note = f"; methods trained on {subset['train_subset']:.0%} of the training images" if subset.get(
        "train_subset", 1) < 1 else ""
    return f"total {total:.0f} s ({parts}){verdict}{note}"


def main() -> None:
    args = parse()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = Steps()
    result = {"tiny": args.tiny, "torch": torch.__version__, "cuda": torch.version.cuda,
              "gpus": torch.cuda.device_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "python": sys.executable, "lacking": imports_check.lacking(), "cores": available_cores()}
    steps.seconds["install"] = args.install_s
    result["tests"] = steps.run("tests", cuda_tests, args.out)
    settings = epoch_args(args)
    folder = steps.run("data", gpu_epoch.data_folder, args.root or args.out / "data", settings)
    if folder is not None:
        result["gpu_epoch"] = steps.run("gpu_epoch", gpu_epoch.measure, folder, settings, Path(settings.cache_dir))
        result["methods"] = steps.run("methods", methods, folder, settings, args.out / "methods", args.train_subset)
    result["errors"] = steps.errors
    result["seconds"] = steps.seconds
    counted = sum(v for v in steps.seconds.values() if v)
    result["total_s"] = round(time.time() - args.started if args.started else counted, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result), table(result), footer(result), sep="\n\n")
    failed = [n for n, r in ((result.get("methods") or {}).get("methods") or {}).items()
              if r["status"] != "done" and not r["status"].startswith("skipped")]
    failed += [n for n, r in ((result.get("gpu_epoch") or {}).get("variants") or {}).items() if "error" in r]
    if steps.errors or (result["tests"] or {}).get("failed") or failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
