"""The decoded-image cache: every image of a split decoded once, resized, kept as uint8.

A split's cache is two files in the cache folder: `<split>-<side>px-<fp>.u8`, the images'
pixels (height x width x 3, one after the other) read through a numpy memmap, and
`<split>-<side>px.json`, its index (each image's shape) with the fingerprint of what it was
made from: every file's path, size and modification time, the stored shorter side and how
it was resized. The index is written last and names its pixel file, so it is the commit:
a build that is killed leaves only temporary files (never read, removed by the next build),
and a cache whose fingerprint differs from the data's is rebuilt, as is one whose index does
not fit its pixel file (image count, shapes, size). Each image's CRC-32 is kept in the index and
checked whenever the image is read (about 0.06 ms for a 256 x 300 image), so a damaged pixel
file stops the run naming it instead of training on wrong pixels. Images are resized exactly
as the evaluation transform resizes them (PIL, antialiased), so evaluation from the cache
is a center crop of the stored pixels: the same tensors as decoding the JPEG.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch

from spurcore.api import DataError, atomic
from spurcore_datasets.tables import Lines, file_index

VERSION = 2  # 2: each image's CRC-32 in the index (caches of version 1 are built again)
RESIZE = "torchvision.v2.Resize(shorter side, antialias) on the PIL image"
ENV = "SPURCORE_CACHE_DIR"
SMALL_SPLIT = 256


def default_folder() -> Path:
    """`$SPURCORE_CACHE_DIR`, else `$XDG_CACHE_HOME/spurcore/images`, else
    `~/.cache/spurcore/images`: the user's cache, since dataset folders are often read-only."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "spurcore" / "images"


def dataset_folder(root: str | Path, name: str, source: Path) -> Path:
    """The cache folder of one dataset: `<root>/<name>-<hash of its metadata path>`."""
    digest = hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:12]
    return Path(root).expanduser() / f"{name}-{digest}"


def fingerprint(paths: Sequence[Path], side: int) -> str:
    """What the cached pixels depend on: each file's path, size and mtime, and the resizing."""
    digest = hashlib.sha256(json.dumps({"version": VERSION, "side": side, "resize": RESIZE}).encode())
    return file_index(paths, digest).hexdigest()


@attrs.frozen
class Store:
    """A built cache of one split: image i is `pixels[offsets[i]:offsets[i+1]]` reshaped to
    `shapes[i]` (height, width, 3). The memmap is opened lazily, once per process (so a
    DataLoader worker opens its own and nothing large is pickled)."""

    path: Path
    shapes: np.ndarray  # (n, 2): height, width
    crcs: np.ndarray  # (n,): the CRC-32 of each image's bytes, checked whenever the image is read
    fingerprint: str = ""  # what the pixels were made from (`fingerprint`)
    _pixels: list = attrs.field(factory=list, eq=False, repr=False)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.shapes[:, 0] * self.shapes[:, 1] * 3)])

    def __len__(self) -> int:
        return len(self.shapes)

    def __getstate__(self) -> dict:
        return {"path": self.path, "shapes": self.shapes, "crcs": self.crcs, "fingerprint": self.fingerprint,
                "_pixels": []}

    def __setstate__(self, state: dict) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)

    def image(self, i: int) -> torch.Tensor:
        """Image i as a (3, height, width) uint8 tensor (a copy; the file is never written)."""
        if not self._pixels:
            self._pixels.append((np.memmap(self.path, dtype=np.uint8, mode="r"), self.offsets))
        pixels, offsets = self._pixels[0]
        h, w = self.shapes[i]
        hwc = np.array(pixels[offsets[i]:offsets[i + 1]])
        if zlib.crc32(hwc) != self.crcs[i]:  # 0.06 ms for a 256 x 300 image: nothing next to its crop
            raise DataError(f"{self.path}: image {i} of the decoded-image cache is damaged (its CRC-32 differs from the "
                            f"one stored when it was built); delete {self.path.parent} and run again to rebuild it")
        return torch.from_numpy(hwc.reshape(h, w, 3)).permute(2, 0, 1)


def open_or_build(folder: Path, split: str, paths: Sequence[Path], side: int, workers: int = 0,
                  lines: Lines | None = None) -> Store:
    """The cache of `split` in `folder`, built first when it is missing, partial, stale or
    damaged; `lines`, the metadata line of each path, for the message about an unreadable one."""
    expected = fingerprint(paths, side)
    store = load(folder, split, side, expected, len(paths))
    if store is None:
        build(folder, split, paths, side, expected, workers, lines)
        store = load(folder, split, side, expected, len(paths))
        if store is None:  # pragma: no cover - only if another process replaced it meanwhile
            raise DataError(f"{folder}: the image cache of split {split!r} changed while it was built; run again")
    return store


def index_path(folder: Path, split: str, side: int) -> Path:
    return Path(folder) / f"{split}-{side}px.json"


def load(folder: Path, split: str, side: int, expected: str, count: int | None = None) -> Store | None:
    """The committed cache whose fingerprint is `expected` (of `count` images, when given), or
    None: none, stale, or damaged (an index that is not one, a pixel file of another size)."""
    try:
        index = json.loads(index_path(folder, split, side).read_text(encoding="utf-8"))
        if index.get("version") != VERSION or index.get("fingerprint") != expected:
            return None
        pixels = Path(folder) / index["pixels"]
        shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 2)
        crcs = np.asarray(index["crc32"], dtype=np.int64)
        if len(crcs) != len(shapes) or (count is not None and len(shapes) != count) or (shapes <= 0).any():
            return None
        if pixels.stat().st_size != int((shapes[:, 0] * shapes[:, 1] * 3).sum()):
            return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return Store(pixels, shapes, crcs, expected)


class _Decoded(torch.utils.data.Dataset):
    """Image i decoded and resized as the evaluation transform resizes it, as (h, w, 3) uint8."""

    def __init__(self, paths: Sequence[Path], side: int, lines: Lines | None = None) -> None:
        self.paths, self.side, self.lines = list(paths), side, lines

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from torchvision.transforms import v2

        from spurcore_datasets.images import open_rgb

        image = open_rgb(self.paths[i], self.lines(i) if self.lines else None)
        return np.array(v2.Resize(self.side, antialias=True)(image), dtype=np.uint8)


def build(folder: Path, split: str, paths: Sequence[Path], side: int, expected: str, workers: int = 0,
          lines: Lines | None = None) -> None:
    """Decode every image (in `workers` processes), write the pixels to a temporary file,
    rename it, then commit the index; remove what older builds of this split left."""
    from tqdm import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{split}-{side}px-{expected[:16]}.u8"
    workers = workers if len(paths) >= SMALL_SPLIT else 0  # starting processes costs more than a few images
    loader = torch.utils.data.DataLoader(_Decoded(paths, side, lines), batch_size=None, num_workers=workers)
    shapes, crcs = [], []
    shown = tqdm(loader, total=len(paths), desc=f"caching {split} images", unit="img", leave=False,
                 disable=not sys.stderr.isatty())

    def pixels(handle) -> None:
        try:
            for image in shown:
                image = np.ascontiguousarray(image)
                shapes.append(image.shape[:2])
                crcs.append(zlib.crc32(image))
                handle.write(image.tobytes())
        except DataError as error:  # from a worker it carries the worker's traceback: keep the message
            raise DataError(str(error).rsplit(f"{DataError.__name__}: ", 1)[-1].strip()) from None

    _write_replacing(final, pixels)
    index = {"version": VERSION, "fingerprint": expected, "pixels": final.name, "side": side, "resize": RESIZE,
             "shapes": [[int(h), int(w)] for h, w in shapes], "crc32": crcs}
    _write_replacing(index_path(folder, split, side), lambda handle: handle.write(json.dumps(index).encode()))
    for old in folder.glob(f"{split}-{side}px-*.u8"):
        if old != final:
            old.unlink(missing_ok=True)
    for left in folder.glob(f".{split}-{side}px-*.tmp"):
        if not _being_written(left):
            left.unlink(missing_ok=True)


def _write_replacing(path: Path, write) -> None:
    """`write(handle)` into a temporary sibling of `path`, then rename it over `path`. Every
    process of a data-parallel run that builds the cache does this (the same bytes), so no
    rank reads a cache before it is whole."""
    tmp = atomic.temporary_path(path)
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, atomic.file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _being_written(path: Path) -> bool:
    """A temporary file touched in the last minute may belong to a build running elsewhere."""
    try:
        return time.time() - path.stat().st_mtime < 60
    except OSError:
        return False
