"""Images per second through our loader against a plain torchvision loader.

Ours: the `waterbirds` dataset of spurcore-datasets (metadata checks, lazy JPEG decoding,
the training transform) read by the kernel's `iterate_batches` in a random order, exactly
as a training epoch reads it. Plain: `torchvision.datasets.ImageFolder` over the same class
folders with the same transform, in a `DataLoader(shuffle=True)` with the same batch size
and workers. Both decode every image of the training split once per pass; the two alternate
(ABBA) so machine noise hits both alike. Prints JSON {"ratio": the median over rounds of
ours / plain in images per second, ...}; the goal is a ratio of at least 0.9.

It writes a Waterbirds-shaped folder of JPEGs at Waterbirds' typical size (500 x 375) to a
temporary folder, or to --root, where a later run finds and reuses them.

    python benchmarks/data_throughput.py [--root DIR] [--images 1200] [--workers 2] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spurcore.data import iterate_batches
from spurcore_datasets import FORMATS
from spurcore_datasets.build import to_data
from spurcore_datasets.images import train_transform


def write_images(root: Path, n: int, seed: int = 0) -> Path:
    """A Waterbirds layout with `n` training images under `train/<class>/` (what ImageFolder
    reads) and a few val and test images under `heldout/<class>/`: photo-like JPEGs."""
    rng = np.random.default_rng(seed)
    folder = root / "waterbird_complete95_forest2water2"
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    yy, xx = np.mgrid[0:375, 0:500]
    examples = [(0, i % 2, (i // 2) % 2) for i in range(n)]
    examples += [(split, y, a) for split in (1, 2) for y in (0, 1) for a in (0, 1) for _ in range(2)]
    for i, (split, y, place) in enumerate(examples, start=1):
        species = ("001.Black_footed_Albatross", "146.Forsters_Tern")[y]
        name = f"{'train' if split == 0 else 'heldout'}/{species}/img_{i:05d}.jpg"
        base = np.sin(xx / rng.uniform(10, 60) + rng.uniform(0, 6)) + np.cos(yy / rng.uniform(10, 60))
        pixels = np.stack([base * rng.uniform(30, 90) + rng.uniform(60, 190) for _ in range(3)], axis=-1)
        pixels += rng.normal(0, 12, pixels.shape)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
        rows.append(f"{i},{name},{y},{split},{place},x/{i}.jpg")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def ours(root: Path, size: int, batch: int, workers: int) -> tuple[int, float]:
    start = time.perf_counter()
    options = FORMATS["waterbirds"].options(root=str(root), image_size=size)
    train = to_data(FORMATS["waterbirds"].read(options), options).splits["train"]
    seen = 0
    for b in iterate_batches(train, torch.randperm(len(train)), batch, num_workers=workers, augment=True):
        seen += len(b)
    return seen, time.perf_counter() - start


def plain(root: Path, size: int, batch: int, workers: int) -> tuple[int, float]:
    import torchvision

    start = time.perf_counter()
    folder = root / "waterbird_complete95_forest2water2" / "train"
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=train_transform(size, "standard"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    seen = 0
    for x, _ in loader:
        seen += len(x)
    return seen, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="where the images are written, or were by an earlier run (default: a temporary folder)")
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        if not (root / "waterbird_complete95_forest2water2" / "metadata.csv").is_file():
            write_images(root, args.images)
        ours(root, args.size, args.batch, args.workers)  # warm the page cache and imports
        plain(root, args.size, args.batch, args.workers)
        seconds: dict[str, list[float]] = {"ours": [], "plain": []}
        images = 0
        for r in range(args.rounds):
            for name in (("ours", "plain") if r % 2 == 0 else ("plain", "ours")):
                images, took = (ours if name == "ours" else plain)(root, args.size, args.batch, args.workers)
                seconds[name].append(took)
    paired = sorted(p / o for o, p in zip(seconds["ours"], seconds["plain"]))
    print(json.dumps({
        "ratio": round(float(np.median(paired)), 4),
        "round_ratios": [round(r, 4) for r in paired],
        "ours_images_per_s": round(images * args.rounds / sum(seconds["ours"]), 1),
        "plain_images_per_s": round(images * args.rounds / sum(seconds["plain"]), 1),
        "images_per_pass": images, "image_size": args.size, "workers": args.workers,
        "batch_size": args.batch, "rounds": args.rounds,
    }))


if __name__ == "__main__":
    main()
