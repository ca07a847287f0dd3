"""Images on disk as a map-style dataset, with the standard transforms.

Evaluation: resize the short side to size * 256 / 224, center crop `size`, ImageNet
normalization. Training (`augment`): `standard` is the random resized crop (scale 0.7-1,
aspect 3/4-4/3) and horizontal flip used for Waterbirds and CelebA since group DRO;
`seed` adds the rest of the seed paper's Table 1 (rotation 15 degrees, translation 0.1,
scale 0.9-1.1, perspective 0.2); `none` trains on the evaluation transform.

From the decoded-image cache (`CachedImages`) the same steps run on uint8 tensors: the
geometric ones per image, the conversion and normalization per batch (`normalize_batch`).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError

from spurcore.api import DataError
from spurcore_datasets.tables import Lines, file_index

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("standard", "seed", "none")


def eval_resize(size: int) -> int:
    """The shorter side evaluation resizes to before its center crop (256 for 224)."""
    return round(size * 256 / 224)


def eval_transform(size: int) -> Callable:
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(eval_resize(size), antialias=True), v2.CenterCrop(size), *_to_tensor()])


def train_transform(size: int, augment: str) -> Callable:
    from torchvision.transforms import v2

    if augment == "none":
        return eval_transform(size)
    return v2.Compose([*_geometry(size, augment), *_to_tensor()])


def _geometry(size: int, augment: str) -> list:
    """The random geometric steps of an augmentation set, on a PIL image or a uint8 tensor."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.75, 4 / 3), antialias=True),
             v2.RandomHorizontalFlip(0.5)]
    if augment == "seed":
        steps += [v2.RandomRotation(15), v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                  v2.RandomPerspective(distortion_scale=0.2)]
    return steps


def _to_tensor() -> list:
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            v2.ToPureTensor()]


def cached_eval_transform(size: int, side: int) -> Callable:
    """Evaluation on a cached uint8 image stored at shorter side `side`: the center crop alone
    when `side` is the evaluation resize (the same pixels as `eval_transform` on the JPEG)."""
    from torchvision.transforms import v2

    resize = [] if side == eval_resize(size) else [v2.Resize(eval_resize(size), antialias=True)]
    return v2.Compose([*resize, v2.CenterCrop(size)])


def cached_train_transform(size: int, augment: str, side: int) -> Callable:
    """The augmentation set's geometric steps on a cached uint8 image (crops drawn from the
    stored size, not the full-size JPEG)."""
    from torchvision.transforms import v2

    if augment == "none":
        return cached_eval_transform(size, side)
    return v2.Compose(_geometry(size, augment))


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """A batch of uint8 images (N, 3, H, W) as normalized float32, on the batch's device: the
    same arithmetic as `eval_transform`'s last steps, once per batch (in place on the new float
    tensor: a large allocation less, which halves the time on a CPU)."""
    from torchvision.transforms.v2 import functional as F

    return F.normalize(F.to_dtype(x, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD, inplace=True)


def open_rgb(path: Path, where: str | None = None) -> Image.Image:
    """The image at `path` fully decoded as RGB, or a DataError naming the file (and `where`,
    its metadata line, when given). An image larger than PIL's decompression-bomb limit (twice
    `Image.MAX_IMAGE_PIXELS`) is unreadable like a corrupt one."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"{where + ': ' if where else ''}{path}: unreadable image ({type(exc).__name__}: {exc}); replace or remove "
            f"it, or set dataset.options.bad_images = \"skip\" to leave unreadable images out"
        ) from None


class ImageFiles(torch.utils.data.Dataset):
    """Item i: image `paths[i]` decoded and transformed to a (3, size, size) float tensor; an
    unreadable one names its file and, given `lines`, its metadata line."""

    def __init__(self, paths: Sequence[Path], transform: Callable, lines: Lines | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.lines = lines

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(open_rgb(self.paths[i], self.lines(i) if self.lines else None))

    def content_key(self) -> str:
        """What the images are, for caches derived from them (`spurcore.api.content_digest`):
        each file's path, size and modification time."""
        return "image files " + file_index(self.paths, hashlib.sha256()).hexdigest()


class CachedImages(torch.utils.data.Dataset):
    """Item i: cached image `rows[i]` of `store` (a `spurcore_datasets.cache.Store`) through
    `transform`, as a uint8 (3, size, size) tensor; `batch_transform` finishes a whole batch
    (the kernel's `iterate_batches` applies it, on the run's device)."""

    batch_transform = staticmethod(normalize_batch)

    def __init__(self, store, transform: Callable) -> None:
        self.store = store
        self.transform = transform

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.store.image(i))

    def content_key(self) -> str:
        """What the images are: the fingerprint of the files the cache was built from."""
        return f"decoded images {self.store.fingerprint}"


def unreadable(paths: Sequence[Path], lines: Lines | None = None) -> list[tuple[int, str]]:
    """(row, reason) of every image that does not decode, the reason naming its file and (given
    `lines`) its metadata line; reads every file in full (with a progress bar on a terminal:
    CelebA takes minutes)."""
    from tqdm import tqdm

    bad = []
    shown = tqdm(paths, desc="decoding images", unit="img", leave=False, disable=not sys.stderr.isatty())
    for i, path in enumerate(shown):
        try:
            open_rgb(path, lines(i) if lines else None)
        except DataError as exc:
            bad.append((i, str(exc).split("; ")[0]))
    return bad
