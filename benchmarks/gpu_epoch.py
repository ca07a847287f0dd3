"""One training epoch on a GPU: a plain SubpopBench-style loop against our runner, without
and with the decoded-image cache, and with `[train] channels_last` and `compile`.

Data: a Waterbirds-layout folder of synthetic 500 x 375 JPEGs with the real group counts
(`synthetic.py`; 11,788 images, written once to --root and reused), or the real Waterbirds
at --root. Each variant trains ResNet-50 (random init) at 224 px, batch 256, SGD, AMP on
CUDA, for one epoch over the training split, and reports images per second, the epoch's
seconds (data loading and training only: from the epoch's first batch request to its last
optimizer step, synchronized), the peak GPU memory, and its ratio to the plain loop:

- `plain`: what SubpopBench writes: a PIL dataset over metadata.csv, torchvision's
  RandomResizedCrop(224, scale 0.7-1) + flip + ToTensor + Normalize, a DataLoader with
  `num_workers` = the cores, pinned memory, a hand-written AMP loop;
- `runner`: `spur run`'s training loop on the `waterbirds` dataset, `num_workers = "auto"`;
- `cached`: the same with `cache = "decoded"` (the cache is built before, and its build
  time reported on its own);
- `cached-channels-last`, `cached-compile`: the same with `[train] channels_last = true`,
  `compile = true`.

    python benchmarks/gpu_epoch.py --root /data/wb-synthetic --out gpu_epoch.json   # on a GPU machine
    python benchmarks/gpu_epoch.py --arch small-cnn --images 64 --size 32 --batch 32 --device cpu  # a smoke test

Prints the JSON it writes to --out; a variant that fails is recorded with its error (the
others still run) and the exit status is 1. `benchmarks/gpu_check.sh` runs it (`measure`) as
one step of the GPU check, and times every method's epoch with its `StageClock`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spurcore import hookimpl, portable
from spurcore.api import Device, PluginManager, available_cores, pipeline_from_dict, run_pipeline
from spurcore_datasets import FORMATS
from spurcore_datasets.build import cached_splits
from spurcore_datasets.images import IMAGENET_MEAN, IMAGENET_STD, open_rgb
from rounds import emit
from synthetic import REAL_COUNTS, scaled_counts, write

VARIANTS = ("plain", "runner", "cached", "cached-channels-last", "cached-compile")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


class MetadataImages(torch.utils.data.Dataset):
    """SubpopBench's image dataset: metadata.csv rows, PIL decoding, a torchvision transform."""

    def __init__(self, folder: Path, size: int) -> None:
        import csv

        from torchvision import transforms

        with open(folder / "metadata.csv", newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["split"] == "0"]
        self.paths = [folder / r["img_filename"] for r in rows]
        self.y = [int(r["y"]) for r in rows]
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.75, 4 / 3)),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(open_rgb(self.paths[i])), self.y[i]


def network(arch: str) -> nn.Module:
    """The plain loop's classifier: torchvision's `arch` with two outputs, or for `small-cnn`
    (the CPU smoke test) the kernel's small CNN with a linear layer, as the runner builds it."""
    if arch == "small-cnn":
        from spurcore.builtins.backbones import SmallCNNOptions
        from spurcore.builtins.networks import SmallCNN

        options = SmallCNNOptions()
        return nn.Sequential(SmallCNN(3, options.width, options.blocks, options.pool_last),
                             nn.Linear(options.feature_dim, 2))
    import torchvision

    return getattr(torchvision.models, arch)(num_classes=2)


def plain(folder: Path, args, device: Device) -> dict:
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as the runner with deterministic = false: the loops differ, not cuDNN's choice
    model = network(args.arch).to(device.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    scaler = device.grad_scaler()
    dataset = MetadataImages(folder, args.size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         pin_memory=device.pin_memory)
    model.train()
    reset_memory(device.device)
    synchronize(device.device)
    start = time.perf_counter()
    for x, y in loader:
        batch_x, batch_y = x.to(device.device, non_blocking=True), y.to(device.device, non_blocking=True)
        with device.autocast():
            loss = F.cross_entropy(model(batch_x), batch_y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    synchronize(device.device)
    return {"images": len(dataset), "epoch_s": time.perf_counter() - start, "gpu_memory_mib": peak_mib(device.device)}


class StageClock:
    """Times every stage of every run it watches, synchronized, with the peak GPU memory: a
    training stage's first epoch, from its start to its first evaluation, over the examples it
    stepped through; a post-hoc stage whole, from its start to its evaluation, over the images
    its backbone forwarded (the embedding extraction; none where it reused cached embeddings).
    One record per stage in `records`, in the order they ran."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self._open: dict | None = None
        self._start = 0.0
        self._counting = None

    def _restart(self, device: torch.device) -> None:
        reset_memory(device)
        synchronize(device)
        self._start = time.perf_counter()

    @hookimpl(trylast=True)  # after the method's own start, which may replace the model
    def spurcore_stage_start(self, run, stage):
        self._open = {"run": str(run.out.path), "stage": stage.key, "method": stage.spec.name, "kind": stage.spec.kind,
                      "images": 0, "epoch_s": None, "gpu_memory_mib": None}
        self.records.append(self._open)
        if stage.spec.kind != "train":
            self._counting = stage.model.embed.register_forward_pre_hook(self._count)
        self._restart(run.device.device)

    def _count(self, module, inputs) -> None:
        x = inputs[0]
        self._open["images"] += len(x) if isinstance(x, torch.Tensor) else len(next(iter(x.values())))

    @hookimpl
    def spurcore_epoch_start(self, run, stage, epoch):
        if self._open is not None and self._open["images"] == 0:  # the stage's first epoch
            self._restart(run.device.device)

    @hookimpl
    def spurcore_batch_end(self, batch):
        if self._open is not None:
            self._open["images"] += len(batch)

    @hookimpl
    def spurcore_evaluation_start(self, run, stage, epoch):
        if self._open is None or (stage.spec.kind == "train" and epoch == 0):  # a fine-tuning stage's start
            return
        synchronize(run.device.device)
        self._open["epoch_s"] = time.perf_counter() - self._start
        self._open["gpu_memory_mib"] = peak_mib(run.device.device)
        if self._counting is not None:
            self._counting.remove()
            self._counting = None
        self._open = None


def runner_config(folder: Path, args, cache_dir: Path | None, **train) -> dict:
    """The pipeline `runner` times: ERM for one epoch, SGD, AMP, `args`' model, size, batch and
    loader processes, on the Waterbirds layout in `folder`, from the cache in `cache_dir` if given."""
    dataset = {"root": str(folder), "image_size": args.size}
    if cache_dir is not None:
        dataset |= {"cache": "decoded", "cache_dir": str(cache_dir)}
    return {
        "seed": 0, "device": args.device, "amp": True, "deterministic": False,
        "dataset": {"name": "waterbirds", "options": dataset}, "backbone": {"name": args.arch},
        "train": {"epochs": 1, "batch_size": args.batch, "optimizer": "sgd", "lr": 1e-3, "train_eval": "none",
                  "eval_batch_size": args.batch, "num_workers": args.workers, **train},
        "stages": [{"method": "erm"}],
    }


def runner(folder: Path, args, cache_dir: Path | None, **train) -> dict:
    plugins = PluginManager(block=["progress"])
    clock = StageClock()
    plugins.register(clock, "stage-clock")
    with tempfile.TemporaryDirectory() as tmp:
        run_pipeline(pipeline_from_dict(runner_config(folder, args, cache_dir, **train)), Path(tmp) / "run", plugins,
                     log=lambda m: None)
    first = clock.records[0]
    return {"images": first["images"], "epoch_s": first["epoch_s"], "gpu_memory_mib": first["gpu_memory_mib"]}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="a Waterbirds folder (or its parent); synthetic JPEGs are written "
                                                  "there when it holds none (default: a temporary folder)")
    parser.add_argument("--images", type=int, default=0, help="training images of the synthetic set, the real "
                                                             "group proportions kept (default 0: the real counts)")
    parser.add_argument("--jpeg-size", default="500x375", type=lambda t: tuple(map(int, t.split("x"))),
                        help="width x height of the synthetic JPEGs (default: Waterbirds' typical 500x375)")
    parser.add_argument("--arch", default="resnet50", choices=("resnet18", "resnet50", "small-cnn"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=available_cores(), help="loader processes (default: the cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cache-dir", type=Path, help="where the cache is built (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def data_folder(base: Path, args) -> Path:
    """The Waterbirds folder at `base` (or inside it), or synthetic JPEGs written there, with
    `args.workers` processes, at the real group counts (scaled to `args.images` if set)."""
    if (base / "metadata.csv").is_file():
        return base
    return write(base, scaled_counts(args.images) if args.images else REAL_COUNTS, args.jpeg_size, workers=args.workers)


def measure(folder: Path, args, cache_dir: Path) -> dict:
    """Every variant of `args.variants` for one epoch on the Waterbirds folder `folder`, the cache
    built in `cache_dir` first when a variant reads it: the JSON this script prints."""
    device = Device.from_config(args.device, amp=True)
    portable.apply_to_torch()  # the runner's CPU convolution kernels for every variant (no effect on CUDA)
    variants = args.variants.split(",")
    result = {"device": str(device.device), "gpu": torch.cuda.get_device_name(device.device) if device.is_cuda else None,
              "arch": args.arch, "image_size": args.size, "batch_size": args.batch, "workers": args.workers,
              "amp": device.amp, "torch": torch.__version__, "variants": {}}
    if any(v.startswith("cached") for v in variants):
        options = FORMATS["waterbirds"].options(root=str(folder), image_size=args.size, cache="decoded",
                                                cache_dir=str(cache_dir))
        table = FORMATS["waterbirds"].read(options)
        start = time.perf_counter()
        cached_splits(table, options, args.workers)
        result["cache_build_s"] = round(time.perf_counter() - start, 2)
        result["cache_images"] = len(table.items)
    for variant in variants:
        print(f"{variant} ...", file=sys.stderr)
        try:
            if variant == "plain":
                measured = plain(folder, args, device)
            else:
                train = {"channels_last": variant.endswith("channels-last"), "compile": variant.endswith("compile")}
                measured = runner(folder, args, cache_dir if variant.startswith("cached") else None, **train)
        except Exception as error:  # noqa: BLE001 - recorded (compile needs a C compiler, say); the others still run
            traceback.print_exc()
            result["variants"][variant] = {"error": f"{type(error).__name__}: {error}"}
            continue
        measured["images_per_s"] = round(measured["images"] / measured["epoch_s"], 1)
        measured["epoch_s"] = round(measured["epoch_s"], 3)
        result["variants"][variant] = measured
    reference = result["variants"].get("plain", {}).get("images_per_s")
    for measured in result["variants"].values():
        if reference and "images_per_s" in measured:
            measured["ratio_to_plain"] = round(measured["images_per_s"] / reference, 3)
    return result


def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(data_folder(args.root or Path(tmp), args), args, args.cache_dir or Path(tmp) / "cache")
    emit(result, args.out)
    if any("error" in measured for measured in result["variants"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
