"""Every step of spurcore at CelebA's size, and how its cost grows with the training split.

A synthetic CelebA in the official layout (`synthetic_celeba.py`: 202,599 64-pixel JPEGs,
CelebA's split and group sizes, y = Blond_Hair, a = Male) is written once to --data. For each
N in --n, a CelebA folder with N training images (every split and group cut in proportion,
images hard-linked; N = 162,770 is the full folder) goes through the real loaders and the
`spur` command line, one subprocess per step:

    data-check            spur data check celeba
    cache-build           spur data prepare celeba --cache (the decoded-image cache, 32 px crops)
    erm                   spur run: one ERM epoch of the small CNN widened to 2,048 features
    dfr, dfr-class,       spur run with [init] = the ERM run: features of every split to HDF5
    neurontune              (extracted afresh for each: the cache is removed first), then the fit
    fairdropout, groupdro one epoch each, from scratch
    jtt                   from the ERM run: its error set, then one up-weighted epoch
    prunedtwin-magnitude, one fine-tuning epoch from the ERM run with each mask (the gradient
    prunedtwin-gradient     mask's loss pass included)
    tracer                spur trace of the ERM run: gradient and magnitude criteria, k = 3, zeroing
    activations           one ERM epoch recording the 2,048 features of every example of every split
    memorization          spur memorization with K = 2 models of 1 epoch
    report                spur report over a sweep folder of --trials finished trials (copies of
                          the ERM run's record files under a sweep.json; the report reads those)

Each step's wall time, peak memory of its process tree and disk left behind (`measure.py`)
become a row of --out (`docs/results/scale.json`), written after every step: a relaunch skips
the (step, N) rows it holds (--fresh measures again), so a long run survives an interruption.
Then the log-log slope of time and memory against N per step, and the cost-curve figure.

    python benchmarks/scale.py --data /tmp/celeba-synthetic --work /tmp/scale      # N = 10,000, 40,000, 162,770
    python benchmarks/scale.py --n 300,600 --steps data-check,erm,dfr ...          # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from spurcore.api import toml_dumps

import phase_clock
import synthetic_celeba
from measure import Cost, measure
from rounds import load

STEPS = ("data-check", "cache-build", "erm", "dfr", "dfr-class", "neurontune", "fairdropout", "groupdro", "jtt",
         "prunedtwin-magnitude", "prunedtwin-gradient", "tracer", "activations", "memorization", "report")


N_DEFAULT = (10_000, 40_000, synthetic_celeba.FULL_TRAIN)
GOAL_MEMORY_MIB = 8 * 1024
GOAL_TIME_SLOPE = 1.1
BACKBONE = {"name": "small-cnn", "options": {"width": 32, "blocks": 4, "pool_last": True, "expand": 2048}}
IMAGE_SIZE = 32
KERNELS = "native"  # growth, not digit-for-digit numbers: torch's own kernels (the portable ones cost ~3x here)
TRACER_OPTIONS = ["--criterion", "gradient,magnitude", "--k", "3", "--intervention", "zero", "--repeats", "1"]


class Scale:
    """One N: its dataset folder, its work folder, and the commands of every step."""

    def __init__(self, data: Path, work: Path, n: int, spur: str, trials: int) -> None:
        self.n, self.spur, self.trials = n, spur, trials
        self.work = work / f"n{n}"
        self.root = synthetic_celeba.subset(data, work / "datasets" / f"celeba-n{n}", n)
        self.cache = self.work / "image-cache"

    def pipeline(self, name: str, stages: list[dict], *, init: bool = False) -> Path:
        """The pipeline file of one step: CelebA at N, the widened small CNN, one epoch."""
        config = {
            "selector": "val-worst-class", "metrics": ["avg_acc", "worst_group_acc", "worst_class_acc", "group_acc"],
            "seed": 0, "device": "cpu",
            "dataset": {"name": "celeba", "options": {"root": str(self.root), "image_size": IMAGE_SIZE,
                                                      "cache": "decoded", "cache_dir": str(self.cache)}},
            "backbone": BACKBONE,
            "train": {"epochs": 1, "batch_size": 128, "eval_batch_size": 512, "optimizer": "adam", "lr": 1e-3,
                      "weight_decay": 1e-4, "num_workers": "auto"},
            "stages": stages,
        }
        if init:
            config["init"] = {"run": str(self.work / "erm")}
        path = self.work / "pipelines" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(toml_dumps(config))
        return path

    def run(self, name: str, stages: list[dict], *extra: str, init: bool = False) -> tuple[list[str], list[Path]]:
        out = self.work / name
        shutil.rmtree(out, ignore_errors=True)
        return [self.spur, "run", str(self.pipeline(name, stages, init=init)), "--out", str(out), "--quiet", *extra], [out]

    def posthoc(self, name: str, method: str) -> tuple[list[str], list[Path]]:
        embeddings = self.work / "erm" / "embeddings"
        shutil.rmtree(embeddings, ignore_errors=True)  # each post-hoc step extracts afresh
        command, watch = self.run(name, [{"method": method}], init=True)
        return command, [*watch, embeddings]

    def commands(self) -> dict[str, Callable[[], tuple[list[str], list[Path]]]]:
        """Every step's (command, folders whose growth is its disk), built when it runs."""
        spur, root = self.spur, str(self.root)
        return {
            "data-check": lambda: ([spur, "data", "check", "celeba", "--root", root], []),
            "cache-build": self.cache_build,
            "erm": lambda: self.run("erm", [{"method": "erm"}]),
            "dfr": lambda: self.posthoc("dfr", "dfr"),
            "dfr-class": lambda: self.posthoc("dfr-class", "dfr-class"),
            "neurontune": lambda: self.posthoc("neurontune", "neurontune"),
            "fairdropout": lambda: self.run("fairdropout", [{"method": "fairdropout"}]),
            "groupdro": lambda: self.run("groupdro", [{"method": "groupdro"}]),
            "jtt": lambda: self.run("jtt", [{"method": "jtt", "train": {"epochs": 1}}], init=True),
            "prunedtwin-magnitude": lambda: self.run(
                "prunedtwin-magnitude", [{"method": "prunedtwin", "options": {"criterion": "magnitude"},
                                          "train": {"epochs": 1}}], init=True),
            "prunedtwin-gradient": lambda: self.run(
                "prunedtwin-gradient", [{"method": "prunedtwin", "options": {"criterion": "gradient"},
                                         "train": {"epochs": 1}}], init=True),
            "tracer": self.tracer,
            "activations": lambda: self.run(
                "activations", [{"method": "erm"}], "-o", 'settings.activations.modules=["embed"]',
                "-o", 'settings.activations.splits=["train","val","test"]', "-o", 'train.train_eval="full"'),
            "memorization": self.memorization,
            "report": self.report,
        }

    def cache_build(self) -> tuple[list[str], list[Path]]:
        shutil.rmtree(self.cache, ignore_errors=True)  # built afresh, not found
        return [self.spur, "data", "prepare", "celeba", "--cache", "--root", str(self.root),
                "-o", f"image_size={IMAGE_SIZE}", "-o", f'cache_dir="{self.cache}"'], [self.cache]

    def tracer(self) -> tuple[list[str], list[Path]]:
        out = self.work / "tracer"
        shutil.rmtree(out, ignore_errors=True)
        return [self.spur, "trace", str(self.work / "erm"), "--out", str(out), "--quiet", *TRACER_OPTIONS], [out]

    def memorization(self) -> tuple[list[str], list[Path]]:
        out = self.work / "memorization"
        shutil.rmtree(out, ignore_errors=True)
        pipeline = self.pipeline("memorization", [{"method": "erm"}])
        return [self.spur, "memorization", str(pipeline), "--out", str(out), "--models", "2", "--epochs", "1",
                "--threads", str(os.cpu_count() or 1)], [out]

    def report(self) -> tuple[list[str], list[Path]]:
        out = sweep_folder(self.work / "erm", self.work / "sweep", self.trials)
        return [self.spur, "report", str(out), "--selector", "val-worst-class"], [out]


NEEDS_ERM = ("dfr", "dfr-class", "neurontune", "jtt", "prunedtwin-magnitude", "prunedtwin-gradient", "tracer", "report")
RECORD_FILES = ("config.toml", "summary.json", "metrics.jsonl", "report.md")


def sweep_folder(run: Path, out: Path, trials: int) -> Path:
    """A sweep folder of `trials` finished trials of one method, 8 settings of `train.lr` by
    seeds, each holding the record files of the finished run `run` (what `spur report` reads:
    no checkpoint), and the sweep.json that lists them."""
    shutil.rmtree(out, ignore_errors=True)
    rates = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]
    entries = []
    for i in range(trials):
        lr, seed = rates[i % len(rates)], i // len(rates)
        path = f"erm/lr={lr}/seed{seed}"
        (out / path).mkdir(parents=True)
        for name in RECORD_FILES:
            shutil.copy(run / name, out / path / name)
        entries.append({"method": "erm", "settings": {"train.lr": lr}, "seed": seed, "path": path,
                        "overrides": [f"train.lr={lr}", f"seed={seed}"], "after": None,
                        "record": {"status": "done", "skipped": False}})
    (out / "sweep.json").write_text(json.dumps({"pipeline": str(run / "config.toml"), "trials": entries}))
    return out


def slopes(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per step, the least-squares slope of log(seconds) and log(peak memory) against log(N)
    over its successful rows (steps measured at fewer than two N have none)."""
    out = {}
    for step in dict.fromkeys(r["step"] for r in rows):
        done = sorted((r for r in rows if r["step"] == step and r["returncode"] == 0), key=lambda r: r["n_train"])
        if len({r["n_train"] for r in done}) < 2:
            continue
        n = np.log([r["n_train"] for r in done])
        out[step] = {key: round(float(np.polyfit(n, np.log([r[field] for r in done]), 1)[0]), 3)
                     for key, field in (("time", "seconds"), ("memory", "peak_rss_mib"), ("memory_anon", "peak_anon_mib"))}
    return out


def markdown(result: dict) -> str:
    """The docs' table: per step, seconds at every N, the slopes, and at the largest N the peak
    memory, the disk and where the time went."""
    sizes = sorted({r["n_train"] for r in result["rows"]})
    top = sizes[-1] if sizes else 0
    head = ["step", *(f"s at N={n:,}" for n in sizes), "time slope", f"peak GiB at {top:,}", "memory slope",
            f"disk MiB at {top:,}", f"time at {top:,} (s): setup / train / evaluate / post-hoc fit / rest"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in dict.fromkeys(r["step"] for r in result["rows"]):
        at = {r["n_train"]: r for r in result["rows"] if r["step"] == step}
        last = at.get(top)
        slope = result["slopes"].get(step, {})
        cells = [step, *(("failed" if at[n]["returncode"] else f"{at[n]['seconds']:.0f}") if n in at else "-"
                         for n in sizes),
                 f"{slope['time']:.2f}" if slope else "-",
                 f"{last['peak_rss_mib'] / 1024:.2f}" if last else "-",
                 f"{slope['memory']:.2f}" if slope else "-",
                 f"{last['disk_mib']:.0f}" if last else "-",
                 " / ".join(f"{v:.0f}" for v in last["phases"].values()) if last and "phases" in last else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Seconds and peak memory against N, log-log, one line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    steps = list(dict.fromkeys(r["step"] for r in result["rows"]))
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(steps), 2)))
    for colour, step in zip(colours, steps):
        done = sorted((r for r in result["rows"] if r["step"] == step and r["returncode"] == 0),
                      key=lambda r: r["n_train"])
        n = [r["n_train"] for r in done]
        axes[0].plot(n, [r["seconds"] for r in done], "o-", color=colour, label=step)
        axes[1].plot(n, [r["peak_rss_mib"] / 1024 for r in done], "o-", color=colour, label=step)
    for ax, label in zip(axes, ("wall seconds", "peak resident memory, GiB (process tree)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training examples N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if result["rows"]:
        n = np.array(sorted({r["n_train"] for r in result["rows"]}), dtype=float)
        top = max(r["seconds"] for r in result["rows"])
        axes[0].plot(n, top * n / n[-1], "k--", lw=1, label="slope 1 (linear)")
    axes[1].axhline(GOAL_MEMORY_MIB / 1024, color="red", lw=1, ls=":", label="8 GiB goal")
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("spurcore at CelebA scale: every step, 2 CPU cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="The synthetic CelebA (written there once).")
    parser.add_argument("--work", type=Path, help="Where the runs and subsets go.")
    parser.add_argument("--n", default=",".join(map(str, N_DEFAULT)), help="Training-split sizes, comma-separated.")
    parser.add_argument("--steps", default="", help="Only these steps (comma-separated; default: every one).")
    parser.add_argument("--trials", type=int, default=200, help="Finished trials in the report step's sweep folder.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/results/scale.json")
    parser.add_argument("--figure", type=Path, default=None, help="The cost-curve figure [docs/figures/scale.png "
                                                                   "next to the default --out; none otherwise].")
    parser.add_argument("--fresh", action="store_true", help="Measure again the rows of these steps and sizes "
                                                             "that --out already holds.")
    parser.add_argument("--markdown", action="store_true", help="Only print the docs' table of --out.")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    if args.data is None or args.work is None:
        parser.error("--data and --work are needed to measure")
    sizes = [int(n) for n in args.n.split(",")]
    spur = str(Path(sys.executable).with_name("spur"))
    steps = [s for s in args.steps.split(",") if s] or list(STEPS)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEPS)}")
    counts = synthetic_celeba.REAL_COUNTS if max(sizes) >= synthetic_celeba.FULL_TRAIN else \
        synthetic_celeba.scaled_counts(max(sizes))
    started = time.perf_counter()
    data = synthetic_celeba.write(args.data, counts)
    print(f"dataset ready in {args.data} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    result = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    rows = [r for r in result["rows"] if not (args.fresh and r["step"] in steps and r["n_train"] in sizes)]
    for n in sizes:
        scale = Scale(data, args.work, n, spur, args.trials)
        commands = scale.commands()
        for step in steps:
            if any(r["step"] == step and r["n_train"] == n and r["returncode"] == 0 for r in rows):
                continue
            if step in NEEDS_ERM and not (scale.work / "erm" / "summary.json").exists():
                print(f"N={n}: {step} needs the ERM run; running erm first", file=sys.stderr)
                rows = record(rows, "erm", n, scale, commands["erm"])
            rows = record(rows, step, n, scale, commands[step])
            write(args, rows, sizes)
    result = write(args, rows, sizes)
    print(json.dumps(result["slopes"], indent=1))
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


def record(rows: list[dict], step: str, n: int, scale: Scale, command: Callable) -> list[dict]:
    """Run one step, print its row, and return the rows with it (replacing an earlier one)."""
    argv, watch = command()
    argv = [argv[0], "-p", "phase_clock", *argv[1:]]
    log = scale.work / "logs" / f"{step}.log"
    clock = log.with_suffix(".phases.jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    clock.unlink(missing_ok=True)
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "SPURCORE_CACHE_DIR": str(scale.cache), "SPURCORE_CPU_KERNELS": KERNELS,
           "PYTHONPATH": path, phase_clock.ENV: str(clock)}
    started = time.time()
    cost: Cost = measure(argv, watch=watch, log=log, env=env)
    row = {"step": step, "n_train": n, "seconds": cost.seconds, "cpu_seconds": cost.cpu_seconds, "peak_rss_mib": cost.peak_rss_mib,
           "peak_rss_sum_mib": cost.peak_rss_sum_mib, "peak_anon_mib": cost.peak_anon_mib, "disk_mib": cost.disk_mib,
           "returncode": cost.returncode, "phases": phase_clock.phases(clock, started, started + cost.seconds), **load()}
    if cost.returncode:
        row["error"] = log.read_text(errors="replace")[-1500:]
    print(json.dumps(row), file=sys.stderr)
    return [r for r in rows if not (r["step"] == step and r["n_train"] == n)] + [row]


def write(args: argparse.Namespace, rows: list[dict], sizes: Sequence[int]) -> dict:
    order = {s: i for i, s in enumerate(STEPS)}
    rows = sorted(rows, key=lambda r: (order.get(r["step"], len(order)), r["n_train"]))
    result = {
        "rows": rows, "slopes": slopes(rows),
        "setup": {"dataset": "synthetic CelebA, official layout, 64 px JPEGs (benchmarks/synthetic_celeba.py)",
                  "n_train": list(sizes), "image_size": IMAGE_SIZE, "backbone": BACKBONE,
                  "tracer": " ".join(TRACER_OPTIONS), "report_trials": args.trials, "cpu_kernels": KERNELS,
                  "machine": {"cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") *
                                                                          os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                              "python": platform.python_version()}},
        "goals": {"peak_rss_mib": GOAL_MEMORY_MIB, "time_slope": GOAL_TIME_SLOPE},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.out)
    figure = args.figure or (args.out.parents[1] / "figures" / "scale.png" if args.out.parent.name == "results" else None)
    if figure:
        plot(result, figure)
    return result


if __name__ == "__main__":
    sys.exit(main())
