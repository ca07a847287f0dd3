"""Real backbones at real resolution on the CPU (issue 24): the cost of each method's step as a
ratio to an ERM step, and each one's peak memory.

Backbones: the kernel's `resnet50` and spurcore-timm's `timm` with `model =
"vit_small_patch16_224"`, random weights, 224 px images, batch 32, built through the plugin
manager and the pipeline planner as `spur run` builds them (each stage's options validated,
its own training defaults: Adam 1e-4 without weight decay as in examples/waterbirds_*.toml,
the pruned twin's Adam 2e-4). Variants, each built by its plugin's own code:

- `erm`: the kernel's default training loss, backward, optimizer step;
- `fairdropout-one`, `fairdropout-two`: the same step on the model with spurcore-fairdropout's
  layers inserted by its stage, after the block at 3/4 of the backbone's declared blocks
  (ResNet `layer3`; ViT-Small `blocks.8`, block 9 of 12, as docs/backbones.md suggests), and
  after the blocks at 1/2 and 3/4 together (`layer2` + `layer3`, as the origin code does;
  `blocks.5` + `blocks.8`). Example indices are drawn from Waterbirds' 4,795 training
  positions, so each layer's mask table is the size it would be there;
- `prunedtwin`: spurcore-prunedtwin's training step: its mask (magnitude, q = 0.01%, built by
  its `spurcore_epoch_start`, not timed), two augmented views, the target's and the masked
  twin's forward passes, the projection head, NT-Xent + 0.2 x MSE, backward, optimizer step;
- `two-forwards`: the reference for the pruned twin: the ERM step with the loss of two forward
  passes of the batch (ERM's loss twice), one backward, one optimizer step;
- `gradient-scores`: spurcore-tracer's `gradient_norms` over every neuron of `NeuronIndex.of`
  (every conv and linear layer of the ResNet; the MLP hidden units the ViT declares) on one
  batch;
- `extraction`: `spurcore.embeddings.extract` of one batch (eval mode, no gradients), what
  DFR and NeuronTune read.

Timing: after one warm-up step of each, R rounds of S steps, all the variants called in turn
at every step, the order rotated from step to step and round to round (`rounds.interleave`).
Each variant's ratio is the median over rounds of its seconds / the ERM step's seconds in the
same round, with quartiles and IQR (`rounds.spread`); absolute seconds are per-step medians.
The same from the process's CPU time (user + system, `getrusage`) as `cpu`: on a machine
shared with other work, wall time also counts the time this process waited for a core, CPU
time the work it did; with each, the system seconds and minor page faults per step. The
1-minute load average is sampled after every ERM step.

Memory: a fresh child process builds the variants one at a time, after a throwaway ERM model
has taken a step (so that what a process allocates once for good, thread pools and kernel
caches for these shapes, falls in every variant's base, not in the first one's); for each, one
step on 2 examples (gradients and optimizer state allocated, as in any later step), then the
allocator's free memory returned to the system (`malloc_trim`), the kernel's peak-RSS mark
reset (`/proc/self/clear_refs`), one full step, and the process's peak RSS (`VmHWM`) read.
`peak_rss_mib` is that peak; `above_base_mib` is the peak less the child's RSS just before
the variant was built (Python, torch, the batch, the variants before it freed), i.e. the
variant's model, gradients, optimizer state and activations. Linux only.

Threads: one by default (`--threads`): on this shared two-core machine, with another
benchmark running beside, a ResNet-50 forward and backward pass took 20 to 30 s with two
threads and 15.5 s with one (OpenMP threads waiting on each other while one is descheduled).

Also: each variant's FLOPs per image (torch's FlopCounterMode over one step on 2 images), and
gradient scoring over Waterbirds' 4,795 training images: measured seconds per batch x 150
batches on this CPU, and the sustained GPU throughput that would do it in 10 minutes and in 1
minute (the FLOP count / the time: a requirement, not a GPU measurement). Results and what
they mean: docs/real-shapes.md.

    python benchmarks/real_shapes.py --out docs/results/real_shapes.json     # 8 rounds, both backbones
    python benchmarks/real_shapes.py --variants fairdropout-one,fairdropout-two --rounds 12   # some variants, with ERM
    python benchmarks/real_shapes.py --tiny --out /tmp/tiny.json               # resnet18 and a 4-block ViT, 32 px, seconds

Prints the JSON it writes to --out.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from spurcore import hookimpl
from spurcore.api import (
    Batch, Device, DatasetSpec, Normalization, PluginManager, SpuriousData, SplitData, build_model, extract,
    pipeline_from_dict, plan,
)
from spurcore.building import call_implementation
from spurcore.rng import seed_everything
from spurcore.training import default_loss as erm_loss, make_optimizer
from spurcore_datasets.images import IMAGENET_MEAN, IMAGENET_STD
from spurcore_fairdropout import FairDropout
from spurcore_tracer import NeuronIndex, gradient_norms
from rounds import emit, interleave, load, spread

VARIANTS = ("erm", "fairdropout-one", "fairdropout-two", "prunedtwin", "two-forwards", "gradient-scores", "extraction")
WATERBIRDS_TRAIN = 4795  # Waterbirds' training images
BACKBONES = {  # name in the JSON: the pipeline's [backbone] table
    "resnet50": {"name": "resnet50"},
    "vit_small": {"name": "timm", "options": {"model": "vit_small_patch16_224"}},
}
TINY_BACKBONES = {
    "resnet18": {"name": "resnet18"},
    "vit_tiny": {"name": "timm", "options": {"model": "vit_small_patch16_224", "kwargs": {
        "depth": 4, "embed_dim": 32, "num_heads": 2, "patch_size": 8}}},
}
TRAIN = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0}  # examples/waterbirds_*.toml's
DATASET = "real-shapes"


# --- the data and the components, built by the plugins ----------------------------------------

def images(size: int, batch: int) -> SpuriousData:
    """One batch of random normalized images (the content changes no step's time), with binary
    classes and attributes, in every split; normalized with ImageNet's statistics, as
    spurcore-datasets normalizes real images."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    y, a = torch.randint(0, 2, (batch,), generator=g).numpy(), torch.randint(0, 2, (batch,), generator=g).numpy()
    splits = {name: SplitData(name=name, inputs=x, y=y, a=a) for name in ("train", "val", "test")}
    return SpuriousData(name=DATASET, splits=splits, class_names=("landbird", "waterbird"),
                        attr_names=("land", "water"), input_shape=(3, size, size),
                        normalization=Normalization(IMAGENET_MEAN, IMAGENET_STD))


def batches(data: SpuriousData, steps: int) -> list[Batch]:
    """`steps` training batches of the data's images, with example indices drawn among
    Waterbirds' training positions."""
    split = data.splits["train"]
    g = torch.Generator().manual_seed(1)
    y, a = torch.tensor(split.y), torch.tensor(split.a)
    return [Batch(torch.randperm(WATERBIRDS_TRAIN, generator=g)[:len(y)], split.inputs, y, a) for _ in range(steps)]


def first(data: SpuriousData, n: int) -> SpuriousData:
    """The same data cut to its first `n` examples (the memory child's small first step)."""
    cut = {name: SplitData(name=name, inputs=s.inputs[:n], y=s.y[:n], a=s.a[:n]) for name, s in data.splits.items()}
    return SpuriousData(name=data.name, splits=cut, class_names=data.class_names, attr_names=data.attr_names,
                        input_shape=data.input_shape, normalization=data.normalization)


class Bench:
    """The plugins (from their entry points, as `spur` loads them) with the data registered as a
    dataset, and the planned pipeline: ERM, FairDropout at both placements, the pruned twin."""

    def __init__(self, backbone: dict, data: SpuriousData) -> None:
        self.data, self.backbone = data, backbone
        self.plugins = PluginManager(block=["progress"])

        class Data:
            @hookimpl
            def spurcore_register_datasets(self):
                return [DatasetSpec(name=DATASET, build=lambda options: data)]

        self.plugins.register(Data(), DATASET)
        self.backbone_options = self._plan([{"method": "erm"}]).backbone_options
        blocks = [path.removeprefix("embed.") for path in self.model().block_paths()]
        self.placements = {"fairdropout-one": [blocks[3 * len(blocks) // 4 - 1]],
                           "fairdropout-two": [blocks[len(blocks) // 2 - 1], blocks[3 * len(blocks) // 4 - 1]]}
        planned = self._plan([{"method": "erm"},
                              *({"method": "fairdropout", "options": {"placement": p}} for p in self.placements.values()),
                              {"method": "prunedtwin"}])
        self.stages = dict(zip(("erm", *self.placements, "prunedtwin"), planned.stages))

    def _plan(self, stages: list[dict]):
        return plan(pipeline_from_dict({"selector": "val-worst-class", "seed": 0, "device": "cpu",
                                        "dataset": {"name": DATASET}, "backbone": self.backbone,
                                        "train": {**TRAIN, "batch_size": len(self.data.splits["train"])},
                                        "stages": stages}), self.plugins)

    def model(self):
        """The backbone and a linear head, from the same seed every time."""
        seed_everything(0)
        spec = self.plugins.get("backbones", self.backbone["name"])
        return build_model(spec.build(self.backbone_options, self.data), self.data.n_classes)

    def variant(self, name: str) -> SimpleNamespace:
        """Variant `name`: `run(batch, data)` does one step on a batch (extraction reads the
        data whose train split is that batch), `model`, and the stage object as `method`."""
        model = self.model()
        if name == "extraction":
            device = Device.from_config("cpu", False)
            return SimpleNamespace(model=model, method=None, run=lambda batch, data: extract(
                model, data, device, batch_size=len(batch), splits=("train",)))
        if name == "gradient-scores":
            index = NeuronIndex.of(model)
            return SimpleNamespace(model=model, method=None, run=lambda batch, data: gradient_norms(model, [batch], index))
        stage = self.stages["erm" if name == "two-forwards" else name]
        method = stage.spec.factory(stage.options)
        auxiliary: dict[str, torch.nn.Module] = {}  # a stage's networks beside the model (pruned-twin's projection)
        context = SimpleNamespace(index=stage.index, model=model,
                                  add_auxiliary=lambda name, module, optimizer=None: auxiliary.setdefault(name, module))
        call_implementation(method, "spurcore_prepare_model", run=SimpleNamespace(data=self.data), stage=context,
                            model=model)
        model.train()
        loss_of = erm_loss
        if name == "prunedtwin":  # its mask, drawn as at the start of an epoch
            method.spurcore_epoch_start(run=SimpleNamespace(data=self.data),
                                        stage=SimpleNamespace(index=stage.index, model=model), epoch=1)
            loss_of = method.spurcore_train_loss
        if name == "two-forwards":  # the reference: ERM's loss on two forward passes of the batch
            def loss_of(model, batch):
                return erm_loss(model=model, batch=batch) + erm_loss(model=model, batch=batch)
        optimizer = make_optimizer(stage.train, [*model.parameters(),
                                                 *(p for module in auxiliary.values() for p in module.parameters())])

        def run(batch: Batch, data: SpuriousData) -> None:
            loss = loss_of(model=model, batch=batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return SimpleNamespace(model=model, method=method, run=run)


def describe(bench: Bench, variants: dict[str, SimpleNamespace]) -> dict:
    """What was built: the FairDropout layers found in each model, the neurons scored, the
    neurons the pruned twin masks (of the variants timed)."""
    index = NeuronIndex.of(variants["erm"].model)
    built = {
        "backbone": bench.backbone,
        "parameters": sum(p.numel() for p in variants["erm"].model.parameters()),
        "placements": {name: p for name, p in bench.placements.items() if name in variants},
        "fairdropout_layers": {name: sum(isinstance(m, FairDropout) for m in variants[name].model.modules())
                               for name in bench.placements if name in variants},
    }
    if "gradient-scores" in variants:
        built["scored_neurons"] = {"layers": len(index.layers), "units": index.total}
    if "prunedtwin" in variants:
        built["pruned_twin_masked_neurons"] = len(variants["prunedtwin"].method.mask)
    return built


def gflop_per_image(variants: dict[str, SimpleNamespace], data: SpuriousData) -> dict[str, float]:
    """Each variant's FLOPs per image (what FlopCounterMode counts: convolutions, matrix
    products, attention), from one step on 2 images."""
    small = first(data, 2)
    batch = batches(small, 1)[0]
    out = {}
    for name, variant in variants.items():
        with FlopCounterMode(display=False) as counter:
            variant.run(batch, small)
        out[name] = round(counter.get_total_flops() / 2 / 1e9, 3)
    return out


# --- peak memory, in a child process ----------------------------------------------------------

def _status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        line = next(l for l in handle if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _settle() -> None:
    """Free what Python holds and return the allocator's free memory to the system."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(backbones: dict[str, dict], names: tuple[str, ...], size: int, batch: int,
                threads: int) -> dict[str, dict]:
    """Run in a fresh process: each variant's peak RSS over one full step (module doc), for
    each backbone."""
    torch.set_num_threads(threads)
    return {name: _peak_memory(backbone, names, size, batch) for name, backbone in backbones.items()}


def _peak_memory(backbone: dict, names: tuple[str, ...], size: int, batch: int) -> dict:
    data = images(size, batch)
    small = first(data, 2)
    bench = Bench(backbone, data)
    full_batch, small_batch = batches(data, 1)[0], batches(small, 1)[0]
    warm = bench.variant("erm")  # what the first step of any model allocates for good (thread pools, kernel
    warm.run(small_batch, small)  # caches for these shapes) goes into every variant's base, not the first one's
    warm.run(full_batch, data)
    del warm
    out = {}
    for name in names:
        _settle()
        base = _status_mib("VmRSS")
        variant = bench.variant(name)
        variant.run(small_batch, small)
        _settle()
        before = _status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        variant.run(full_batch, data)
        peak = _status_mib("VmHWM")
        out[name] = {"peak_rss_mib": round(peak, 1), "base_rss_mib": round(base, 1), "above_base_mib": round(peak - base, 1),
                     "before_step_mib": round(before - base, 1)}
        del variant
        _settle()
    erm = out["erm"]["above_base_mib"]
    for measured in out.values():
        measured["ratio"] = round(measured["above_base_mib"] / erm, 3)
    return {"method": "per variant in one child process, after a throwaway ERM step: VmHWM reset by "
                      "/proc/self/clear_refs before one full step, after a 2-example step and malloc_trim; "
                      "above_base = peak - RSS before the variant was built",
            "variants": out}


# --- timing -----------------------------------------------------------------------------------

def measure(name: str, backbone: dict, names: tuple[str, ...], args: argparse.Namespace) -> dict:
    data = images(args.size, args.batch)
    bench = Bench(backbone, data)
    variants = {v: bench.variant(v) for v in names}
    built = describe(bench, variants)
    flops = gflop_per_image(variants, data)
    work = batches(data, args.steps)
    for variant in variants.values():  # warm-up
        variant.run(work[0], data)
    loads: list[float] = []
    usage: dict[str, list[tuple[float, float, int]]] = {v: [] for v in names}  # (cpu s, system s, page faults) per step

    def timed(v: str) -> Callable[[int], float]:
        run = variants[v].run

        def step(k: int) -> float:
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            run(work[k], data)
            took = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            system = after.ru_stime - before.ru_stime
            usage[v].append((after.ru_utime - before.ru_utime + system, system, after.ru_minflt - before.ru_minflt))
            if v == "erm":
                loads.append(round(os.getloadavg()[0], 2))
            return took

        return step

    print(f"{name}: {args.rounds} rounds of {args.steps} step(s) of {', '.join(names)}", file=sys.stderr)
    seconds = dict(zip(names, interleave(args.rounds, args.steps, *(timed(v) for v in names))))
    del variants
    per_round = {v: [np.sum(u[r * args.steps:(r + 1) * args.steps], axis=0) / args.steps for r in range(args.rounds)]
                 for v, u in usage.items()}  # per round: (cpu s, system s, page faults) per step
    cpu_rounds = {v: [float(r[0]) for r in rounds] for v, rounds in per_round.items()}
    measured = {}
    for v, s in seconds.items():
        measured[v] = {"seconds_per_step": round(statistics.median(s) / args.steps, 3),
                       "cpu_seconds_per_step": round(statistics.median(cpu_rounds[v]), 3),
                       "system_seconds_per_step": round(statistics.median(float(r[1]) for r in per_round[v]), 3),
                       "page_faults_per_step": int(statistics.median(float(r[2]) for r in per_round[v])),
                       "gflop_per_image": flops[v]}
        if v != "erm":
            measured[v].update(spread([a / b for a, b in zip(s, seconds["erm"])]))
            measured[v]["cpu"] = spread([a / b for a, b in zip(cpu_rounds[v], cpu_rounds["erm"])])
    result = {**built, "variants": measured,
              "load_1m_during": {"min": min(loads), "median": statistics.median(loads), "max": max(loads), "samples": loads}}
    if "gradient-scores" in measured:
        scoring = measured["gradient-scores"]
        steps = math.ceil(WATERBIRDS_TRAIN / args.batch)
        tflop = WATERBIRDS_TRAIN * scoring["gflop_per_image"] / 1000
        result["waterbirds_gradient_scoring"] = {
            "images": WATERBIRDS_TRAIN, "batches": steps, "cpu_seconds": round(steps * scoring["seconds_per_step"], 1),
            "tflop": round(tflop, 2),
            "cpu_gflop_per_s": round(args.batch * scoring["gflop_per_image"] / scoring["seconds_per_step"], 1),
            "sustained_tflop_per_s_for_10_min": round(tflop / 600, 4),
            "sustained_tflop_per_s_for_1_min": round(tflop / 60, 4),
        }
    return result


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(l.split(":", 1)[1].strip() for l in handle if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1, help="steps of each variant per round")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine, 2 threads were slower; see docs/real-shapes.md)")
    parser.add_argument("--backbones", default=None, help="comma-separated, of " + ", ".join(BACKBONES))
    parser.add_argument("--variants", default=None,
                        help="comma-separated, of " + ", ".join(VARIANTS[1:]) + " (default: all); erm is always timed")
    parser.add_argument("--tiny", action="store_true",
                        help="resnet18 and a 4-block ViT at 32 px, batch 8, 2 rounds: a smoke test in seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    known = TINY_BACKBONES if args.tiny else BACKBONES
    if args.tiny:
        args.size, args.batch, args.rounds = 32, 8, 2
    names = args.backbones.split(",") if args.backbones else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown backbone(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    chosen = set(args.variants.split(",")) if args.variants else set(VARIANTS)
    if chosen - set(VARIANTS):
        parser.error(f"unknown variant(s) {', '.join(sorted(chosen - set(VARIANTS)))}: choose from {', '.join(VARIANTS[1:])}")
    variants = tuple(v for v in VARIANTS if v in chosen | {"erm"})
    torch.set_num_threads(args.threads)
    started = time.time()
    result = {"scale": "tiny" if args.tiny else "full", "size": args.size, "batch": args.batch, "rounds": args.rounds,
              "steps": args.steps, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "cpu": cpu_name(), "cores": os.cpu_count(), "load_start": load(), "backbones": {}}
    for name in names:
        result["backbones"][name] = measure(name, known[name], variants, args)
    print("peak memory, in a child process", file=sys.stderr)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        memory = pool.submit(peak_memory, {n: known[n] for n in names}, variants, args.size, args.batch,
                             args.threads).result()
    for name in names:
        result["backbones"][name]["memory"] = memory[name]
    result.update(load_end=load(), minutes=round((time.time() - started) / 60, 1))
    emit(result, args.out)


if __name__ == "__main__":
    main()
