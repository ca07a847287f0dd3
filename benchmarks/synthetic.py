"""Synthetic Waterbirds: photo-like JPEGs at Waterbirds' typical size (500 x 375) in the
group_DRO layout (`metadata.csv` + class folders), for the speed benchmarks. Training images
lie under `train/<class>/` so that `torchvision.datasets.ImageFolder` can read that split.

Imported by the scripts beside it (`python benchmarks/x.py` puts this folder on the path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FOLDER = "waterbird_complete95_forest2water2"
# examples per group (landbird/land, landbird/water, waterbird/land, waterbird/water), FORMATS.md
REAL_COUNTS = {"train": (3498, 184, 56, 1057), "val": (467, 466, 133, 133), "test": (2255, 2255, 642, 642)}
SPECIES = ("001.Black_footed_Albatross", "146.Forsters_Tern")


def scaled_counts(train_images: int) -> dict[str, tuple[int, ...]]:
    """The real group counts scaled so that the training split has about `train_images`
    images (at least one per group and split, as the loader requires)."""
    scale = train_images / sum(REAL_COUNTS["train"])
    return {split: tuple(max(1, round(c * scale)) for c in counts) for split, counts in REAL_COUNTS.items()}


def write(root: Path, counts: dict[str, tuple[int, ...]], size: tuple[int, int] = (500, 375), seed: int = 0,
          workers: int = 0) -> Path:
    """`root/waterbird_complete95_forest2water2/` with `counts[split][group]` images per group;
    returns the folder. A folder already holding `metadata.csv` is left as it is. Image i is
    drawn from its own generator, seeded by (seed, i), so `workers` processes (0: this one)
    write the same files as one; about 20 ms an image on one core, so 11,788 take 4 minutes
    alone and 15 to 20 s on 16 cores."""
    folder = Path(root) / FOLDER
    if (folder / "metadata.csv").is_file():
        return folder
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    jobs = []
    for split_id, split in enumerate(("train", "val", "test")):
        for group, n in enumerate(counts[split]):
            y, place = divmod(group, 2)
            for _ in range(n):
                i = len(jobs) + 1
                name = f"{'train' if split == 'train' else 'heldout'}/{SPECIES[y]}/img_{i:05d}.jpg"
                jobs.append((folder / name, size, (seed, i)))
                rows.append(f"{i},{name},{y},{split_id},{place},x/{i}.jpg")
    for species in SPECIES:
        for part in ("train", "heldout"):
            (folder / part / species).mkdir(parents=True, exist_ok=True)
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:  # spawn: the caller may hold torch's threads
            pool.starmap(_image, jobs, chunksize=32)
    else:
        for job in jobs:
            _image(*job)
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


def _image(path: Path, size: tuple[int, int], seed: tuple[int, int]) -> None:
    """One photo-like JPEG: smooth waves of random period and colour, plus noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.sin(xx / rng.uniform(10, 60) + rng.uniform(0, 6)) + np.cos(yy / rng.uniform(10, 60))
    pixels = np.stack([base * rng.uniform(30, 90) + rng.uniform(60, 190) for _ in range(3)], axis=-1)
    pixels += rng.normal(0, 12, pixels.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
