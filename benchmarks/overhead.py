"""The runner's overhead against a plain hand-written PyTorch loop.

Both train the same small CNN from the same initial weights on the same waterdigits data in
the same batch order, and evaluate train (every example: the runner with `train_eval = "full"`,
what "auto" gives in-memory waterdigits), val and test with per-group accuracy after every epoch;
the runner additionally calls its hooks, checkpoints every epoch, writes metrics.jsonl, the
summary, the report and the figures. The two are interleaved step by step in one process: a
benchmark plugin's `spurcore_batch_end` runs one step of the plain loop after each of the
runner's steps, and its `spurcore_epoch_end` the plain loop's evaluation, each timed; the
runner's time is the run's wall time less the plain loop's. So whatever the machine does hits
both alike, at the scale of one step: alternating whole runs (an earlier version) left one
round's ratio anywhere from 0.93 to 1.27 on a quiet machine. After one warm-up, R rounds. Prints JSON: "ratio", the
median over rounds of runner / plain seconds, with its quartiles, interquartile range and every
round's ratio (`rounds.spread`), the summed seconds, and the load average.

    python benchmarks/overhead.py [--rounds 8] [--epochs 2] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore.builtins.waterdigits import WaterdigitsOptions, build
from spurcore.config import pipeline_from_dict
from spurcore.data import group_ids
from spurcore.model import build_model
from spurcore.plugins import PluginManager
from spurcore.rng import epoch_seed, seed_everything
from spurcore.runner import run_pipeline
from spurcore.specs import DatasetSpec
from spurcore.builtins.backbones import SmallCNNOptions
from spurcore.builtins.networks import build_small_cnn
from rounds import load, spread


def pipeline(epochs: int, seed: int) -> dict:
    return {
        "selector": "val-worst-class", "seed": seed, "device": "cpu",
        "dataset": {"name": "bench-data"}, "backbone": {"name": "small-cnn"},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4, "train_eval": "full"},
        "stages": [{"method": "erm"}],
    }


def plain_loop(data, epochs: int, seed: int):
    """What a researcher writes by hand: train, then per-group accuracy on train, val and test.
    A generator: it yields after each training step and after each epoch's evaluation, so the
    caller can interleave it with the runner and time each piece."""
    seed_everything(seed)
    model = build_model(build_small_cnn(SmallCNNOptions(), data), data.n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    train = data.splits["train"]
    x, y = train.inputs, torch.tensor(train.y)
    yield
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch_seed(seed, 0, epoch)))
        for idx in torch.split(order, 64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            yield
        model.eval()
        with torch.no_grad():
            for name in ("train", "val", "test"):
                split = data.splits[name]
                pred = torch.cat([model(chunk).argmax(1) for chunk in torch.split(split.inputs, 512)]).numpy()
                correct = pred == split.y
                g = group_ids(split.y, split.a, data.n_attrs)
                [correct[g == k].mean() for k in range(data.n_groups)]
        yield


class Interleaved:
    """The plain loop, advanced one piece at a time from the runner's hooks, its seconds summed."""

    def __init__(self) -> None:
        self.loop, self.seconds = None, 0.0

    def advance(self) -> None:
        start = time.perf_counter()
        ended = next(self.loop, StopIteration) is StopIteration
        self.seconds += time.perf_counter() - start
        if ended:
            raise SystemExit("the runner took more steps than the plain loop: the two no longer train alike")

    def finish(self) -> None:
        """Check that the runner took as many steps and evaluations as the plain loop."""
        if next(self.loop, StopIteration) is not StopIteration:
            raise SystemExit("the runner took fewer steps than the plain loop: the two no longer train alike")

    @hookimpl
    def spurcore_batch_end(self):
        self.advance()

    @hookimpl
    def spurcore_epoch_end(self):
        self.advance()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    data = build(WaterdigitsOptions(scale=args.scale))

    class BenchData:
        @hookimpl
        def spurcore_register_datasets(self):
            return [DatasetSpec(name="bench-data", build=lambda options: data)]

    plugins = PluginManager(entry_points=False, block=["progress"])
    plugins.register(BenchData(), "bench-data")
    plain = Interleaved()
    plugins.register(plain, "plain-loop")

    def round_(seed: int, epochs: int) -> tuple[float, float]:
        """Seconds of the runner and of the plain loop, interleaved, for one seed."""
        plain.loop, plain.seconds = plain_loop(data, epochs, seed), 0.0
        plain.advance()  # its model and optimizer, before the runner starts
        setup = plain.seconds
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run_pipeline(pipeline_from_dict(pipeline(epochs, seed)), f"{tmp}/run", plugins, log=lambda m: None)
            took = time.perf_counter() - start
        inside = plain.seconds - setup
        plain.finish()
        return took - inside, plain.seconds

    round_(0, 1)  # warm-up: imports, allocator, caches
    runner_s, plain_s = [], []
    for r in range(args.rounds):
        runner, loop = round_(r, args.epochs)
        runner_s.append(runner)
        plain_s.append(loop)
        print(f"round {r + 1}/{args.rounds}: runner {runner:.4f} s, plain {loop:.4f} s", file=sys.stderr)
    print(json.dumps({**spread([a / b for a, b in zip(runner_s, plain_s)]),
                      "runner_s": round(sum(runner_s), 3), "plain_s": round(sum(plain_s), 3),
                      "rounds": args.rounds, "epochs": args.epochs, "scale": args.scale,
                      "torch_threads": torch.get_num_threads(), **load()}))

if __name__ == "__main__":
    main()
