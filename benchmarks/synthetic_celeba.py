"""Synthetic CelebA in the official layout, at the real split and group sizes, for the scale
benchmark (`scale.py`).

`write(root)` makes `root/img_align_celeba/000001.jpg ...` (small face-like JPEGs, 64 px by
default), `list_attr_celeba.txt` (the image count, the 40 attribute names, then one row of
-1/1 values per image) and `list_eval_partition.txt` (`file partition`). The task is the
standard one, y = Blond_Hair and a = Male, with CelebA's own group counts per split (blond
men are 0.9% of the training split); the hair colour shows the class (with an overlap of
light-brown and dark-blond shades, so a model makes errors, as on CelebA) and a beard and short
hair the attribute. The other 38 attributes are random. Written once (a folder holding both lists is left as it is).

`subset(full, out, n_train)` makes a smaller CelebA-layout folder from a full one: every
split and group cut to `n_train / 162,770` of its size (at least one image each), the
images hard-linked (the loader refuses links leading out of the dataset folder, and hard
links are no links to it), the lists rewritten for the kept images.

Imported by the scripts beside it (`python benchmarks/x.py` puts this folder on the path).
"""

from __future__ import annotations

import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
# CelebA's examples per group (not blond/female, not blond/male, blond/female, blond/male)
REAL_COUNTS = {"train": (71629, 66874, 22880, 1387), "val": (8535, 8276, 2874, 182), "test": (9767, 7535, 2480, 180)}
FULL_TRAIN = sum(REAL_COUNTS["train"])  # 162,770
SPLITS = ("train", "val", "test")
LISTS = ("list_attr_celeba.txt", "list_eval_partition.txt")
IMAGES = "img_align_celeba"


def scaled_counts(n_train: int) -> dict[str, tuple[int, ...]]:
    """The real group counts of every split scaled by `n_train / 162,770` (at least 1 each)."""
    scale = n_train / FULL_TRAIN
    return {split: tuple(max(1, round(c * scale)) for c in counts) for split, counts in REAL_COUNTS.items()}


def _labels(counts: dict[str, tuple[int, ...]], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partition, y and a of every image, the splits' images shuffled among themselves."""
    rng = np.random.default_rng(seed)
    part, y, a = [], [], []
    for p, split in enumerate(SPLITS):
        groups = np.repeat(np.arange(4), counts[split])
        rng.shuffle(groups)
        part.append(np.full(len(groups), p))
        y.append(groups // 2)
        a.append(groups % 2)
    return np.concatenate(part), np.concatenate(y), np.concatenate(a)


def _face(args: tuple[int, int, int, int, str]) -> None:
    """Draw image `number` (class y, attribute a) and write it; deterministic per number."""
    number, y, a, size, folder = args
    rng = np.random.default_rng(number)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    cx, cy = 0.5 + rng.normal(0, 0.04), 0.55 + rng.normal(0, 0.04)
    face = ((xx - cx) / 0.28) ** 2 + ((yy - cy) / 0.36) ** 2 < 1
    hair_top = cy - (0.30 if a else 0.45) + rng.normal(0, 0.02)  # short hair for men
    hair = (((xx - cx) / 0.36) ** 2 + ((yy - cy + 0.08) / 0.44) ** 2 < 1) & ~face & (yy > hair_top)
    hair |= face & (yy < cy - 0.22)
    beard = face & (yy > cy + 0.12) & bool(a) & (rng.random() < 0.8)
    pixels = np.empty((size, size, 3))
    pixels[:] = rng.uniform(40, 220, 3) + rng.normal(0, 25, 3) * yy[..., None]
    pixels[face] = np.array([224, 180, 150]) * rng.uniform(0.6, 1.1)
    shade = rng.uniform(0.45, 1.0) if y else rng.uniform(0.0, 0.55)  # overlapping: some hair is ambiguous
    pixels[hair] = (1 - shade) * np.array([60, 45, 30]) + shade * np.array([225, 195, 120])
    pixels[beard] = np.array([60, 45, 35]) * rng.uniform(0.6, 1.4)
    pixels += rng.normal(0, 10, pixels.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(Path(folder) / _name(number), quality=90)


def _name(number: int) -> str:
    return f"{number:06d}.jpg"


def write(root: Path, counts: dict[str, tuple[int, ...]] | None = None, size: int = 64, seed: int = 0,
          workers: int | None = None) -> Path:
    """`root` as an official CelebA folder with `counts[split][group]` images (default: the
    real counts); returns `root`."""
    root = Path(root)
    if all((root / name).is_file() for name in LISTS):
        return root
    counts = counts or REAL_COUNTS
    part, y, a = _labels(counts, seed)
    (root / IMAGES).mkdir(parents=True, exist_ok=True)
    jobs = [(i + 1, int(y[i]), int(a[i]), size, str(root / IMAGES)) for i in range(len(y))]
    with Pool(workers or os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_face, jobs, chunksize=512):
            pass
    rng = np.random.default_rng(seed + 1)
    values = np.where(rng.random((len(y), len(ATTRIBUTES))) < 0.3, 1, -1)
    values[:, ATTRIBUTES.index("Blond_Hair")] = np.where(y == 1, 1, -1)
    values[:, ATTRIBUTES.index("Male")] = np.where(a == 1, 1, -1)
    _write_lists(root, [_name(i + 1) for i in range(len(y))], values, part)
    return root


def _write_lists(root: Path, names: list[str], values: np.ndarray, part: np.ndarray) -> None:
    """The two list files, the attribute list written last (a folder holding both is whole)."""
    with open(root / LISTS[1], "w") as handle:
        handle.writelines(f"{name} {p}\n" for name, p in zip(names, part.tolist()))
    tmp = root / (LISTS[0] + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(f"{len(names)}\n{' '.join(ATTRIBUTES)} \n")
        handle.writelines(f"{name} " + " ".join(f"{v:2d}" for v in row) + "\n" for name, row in zip(names, values.tolist()))
    os.replace(tmp, root / LISTS[0])


def _read_lists(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    lines = (root / LISTS[0]).read_text().splitlines()[2:]
    names = [line.split(maxsplit=1)[0] for line in lines]
    values = np.array([[int(v) for v in line.split()[1:]] for line in lines])
    part = dict(line.split() for line in (root / LISTS[1]).read_text().splitlines())
    return names, values, np.array([int(part[name]) for name in names])


def subset(full: Path, out: Path, n_train: int, seed: int = 0) -> Path:
    """`out` as a CelebA folder holding `scaled_counts(n_train)` of `full`'s images per split
    and group (drawn at random), hard-linked; `full` itself when n_train is its whole training
    split. Made once (a folder holding both lists is left as it is)."""
    full, out = Path(full), Path(out)
    if n_train >= FULL_TRAIN:
        return full
    if all((out / name).is_file() for name in LISTS):
        return out
    names, values, part = _read_lists(full)
    y = values[:, ATTRIBUTES.index("Blond_Hair")] == 1
    a = values[:, ATTRIBUTES.index("Male")] == 1
    group = 2 * y + a
    rng = np.random.default_rng(seed)
    keep = []
    for p, split in enumerate(SPLITS):
        for g, n in enumerate(scaled_counts(n_train)[split]):
            rows = np.flatnonzero((part == p) & (group == g))
            keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    keep = np.sort(np.concatenate(keep))
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    for i in keep:
        target = out / IMAGES / names[i]
        if not target.exists():
            os.link(full / IMAGES / names[i], target)
    _write_lists(out, [names[i] for i in keep], values[keep], part[keep])
    return out
