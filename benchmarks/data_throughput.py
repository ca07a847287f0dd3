"""Images per second through our loader against a plain torchvision loader.

A round is one epoch of each. Ours: the `waterbirds` dataset of spurcore-datasets (metadata
checks, the training transform), built once, read by the kernel's `iterate_batches` in a
random order, exactly as a training epoch reads it (its workers kept from one epoch to the
next): by default from the decoded-image cache (`cache = "decoded"`: uint8 pixels from a
memmap, the augmentation's crops and flips on uint8 tensors, conversion and normalization
once per batch), or with `--ours files` decoding every JPEG. Plain:
`torchvision.datasets.ImageFolder` over the same class folders with the same transform, in a
`DataLoader(shuffle=True)` with the same batch size and workers, decoding every JPEG, its
workers started every epoch (the DataLoader's default, and what the DFR code and the seeds'
code do), or kept with `--plain-workers kept`. The two alternate (ABBA) after a warm-up.
Prints JSON: "ratio", the median over rounds of ours / plain in images per second, with its
quartiles and every round's ratio (`rounds.spread`); with the cache, also what building it
cost (seconds per 1,000 images, from a fresh folder, with the same workers) and its size on
disk. Goal with the cache: a ratio of at least 3.

It writes a Waterbirds-shaped folder of JPEGs at Waterbirds' typical size (500 x 375) to a
temporary folder, or to --root, where a later run finds and reuses them.

    python benchmarks/data_throughput.py [--root DIR] [--images 1200] [--workers 2] [--rounds 20]
        [--ours cached|files] [--plain-workers per-epoch|kept]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from rounds import alternate, load, spread
from spurcore.data import iterate_batches
from spurcore_datasets import FORMATS
from spurcore_datasets.build import cached_splits, to_data
from spurcore_datasets.images import train_transform
from synthetic import FOLDER, write


def options(root: Path, size: int, cache_dir: Path | None):
    extra = {"cache": "decoded", "cache_dir": str(cache_dir)} if cache_dir else {}
    return FORMATS["waterbirds"].options(root=str(root), image_size=size, **extra)


def build_cache(root: Path, size: int, cache_dir: Path, workers: int) -> dict:
    """Build the cache of every split into the empty `cache_dir`: seconds per 1,000 images, MiB."""
    chosen = options(root, size, cache_dir)
    table = FORMATS["waterbirds"].read(chosen)
    start = time.perf_counter()
    stores = cached_splits(table, chosen, workers)
    took = time.perf_counter() - start
    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    train = stores["train"].path.stat().st_size
    return {"cache_build_s_per_1000": round(1000 * took / len(table.items), 2), "cache_images": len(table.items),
            "cache_mib": round(sum(p.stat().st_size for p in files) / 2**20, 1),
            "cache_train_mib": round(train / 2**20, 1), "cache_kib_per_image": round(train / len(stores["train"]) / 1024, 1)}


def our_split(root: Path, size: int, cache_dir: Path | None):
    """The training split as a run holds it: built once, read once per epoch."""
    chosen = options(root, size, cache_dir)
    return to_data(FORMATS["waterbirds"].read(chosen), chosen).splits["train"]


def ours(train, batch: int, workers: int) -> tuple[int, float]:
    """One epoch through the runner's batch iterator; its workers are kept from the last one."""
    start = time.perf_counter()
    seen = 0
    for b in iterate_batches(train, torch.randperm(len(train)), batch, num_workers=workers, augment=True):
        seen += len(b)
    return seen, time.perf_counter() - start


def plain_loader(root: Path, size: int, batch: int, workers: int, keep_workers: bool):
    import torchvision

    dataset = torchvision.datasets.ImageFolder(str(root / FOLDER / "train"), transform=train_transform(size, "standard"))
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                       persistent_workers=keep_workers)


def plain(loader) -> tuple[int, float]:
    """One epoch of the plain loader, as a training loop reads it."""
    start = time.perf_counter()
    seen = 0
    for x, _ in loader:
        seen += len(x)
    return seen, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="where the images are written, or were by an earlier run (default: a temporary folder)")
    parser.add_argument("--images", type=int, default=1200, help="training images (4 equal groups)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ours", choices=("cached", "files"), default="cached")
    parser.add_argument("--plain-workers", choices=("per-epoch", "kept"), default="per-epoch",
                        help="the plain DataLoader's workers: started every epoch (its default), or kept "
                             "(persistent_workers=True, as ours are)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        write(root, {"train": (args.images // 4,) * 4, "val": (2,) * 4, "test": (2,) * 4})
        cache_dir = Path(tmp) / "cache" if args.ours == "cached" else None
        built = build_cache(root, args.size, cache_dir, args.workers) if cache_dir else {}
        images = {}

        def timed(name, run):
            def one(round_: int) -> float:
                images[name], took = run()
                return took
            return one

        train = our_split(root, args.size, cache_dir)
        loader = plain_loader(root, args.size, args.batch, args.workers, args.plain_workers == "kept")
        run_ours = timed("ours", lambda: ours(train, args.batch, args.workers))
        run_plain = timed("plain", lambda: plain(loader))
        run_ours(0), run_plain(0)  # warm the page cache and imports
        ours_s, plain_s = alternate(args.rounds, run_ours, run_plain)
    print(json.dumps({
        **spread([p / o for o, p in zip(ours_s, plain_s)]),
        "ours": args.ours, "plain_workers": args.plain_workers,
        "ours_images_per_s": round(images["ours"] * args.rounds / sum(ours_s), 1),
        "plain_images_per_s": round(images["plain"] * args.rounds / sum(plain_s), 1),
        **built,
        "images_per_pass": images["ours"], "image_size": args.size, "workers": args.workers,
        "batch_size": args.batch, "rounds": args.rounds, **load(),
    }))


if __name__ == "__main__":
    main()
