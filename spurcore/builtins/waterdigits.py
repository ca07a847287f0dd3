"""`waterdigits`: the embedded Waterbirds-shaped benchmark, generated from scikit-learn's
bundled handwritten digits (no download) and cached as a compressed npz file. numpy, torch and
the generator are imported when the dataset is built, not when the plugin is registered."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from spurcore import atomic
from spurcore.config import positive
from spurcore.hookspecs import hookimpl
from spurcore.specs import DatasetSpec

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from spurcore.data import SpuriousData

CACHE_ENV = "SPURCORE_CACHE"
SOURCE_DIGITS = "sklearn_digits"  # provenance key: the source digits each split draws on


def cache_dir() -> Path:
    """`$SPURCORE_CACHE`, else `~/.cache/spurcore`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spurcore")


@attrs.frozen(kw_only=True)
class WaterdigitsOptions:
    """`scale` shrinks every split's group counts (1.0: Waterbirds' 3498/184/56/1057 train).
    `augment`: training batches get a random crop (the image padded by `size` / 14 pixels by
    replicating its border, then cropped back) and a horizontal flip (p 0.5), the standard
    crop-and-flip recipe the seeds' ERM models are trained with; evaluation never is."""

    seed: int = 0
    scale: float = attrs.field(default=1.0, validator=positive)
    size: int = attrs.field(default=28, validator=positive)
    cache: bool = True
    augment: bool = False


def _arrays(options: WaterdigitsOptions) -> dict[str, np.ndarray]:
    import numpy as np

    from spurcore.builtins import waterdigits_gen as gen

    # the generator's own source is part of the key, so changing it never serves stale data
    key = Path(gen.__file__).read_bytes() + f"|{options.seed}|{options.scale}|{options.size}".encode()
    path = cache_dir() / f"waterdigits-{hashlib.sha1(key).hexdigest()[:12]}.npz"
    if options.cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as cached:
                return dict(cached)
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    arrays = {}
    for split, (x, y, a) in gen.generate(options.seed, options.scale, options.size).items():
        arrays.update({f"{split}_x": x, f"{split}_y": y, f"{split}_a": a})
    if options.cache:
        with atomic.atomic_open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return arrays


INPUT_MEAN = INPUT_STD = (0.5, 0.5, 0.5)  # pixels in [0, 1] scaled to [-1, 1]


def to_inputs(images: np.ndarray) -> torch.Tensor:
    """uint8 images (n, 3, h, w) as the network sees them: float, scaled to [-1, 1]."""
    import torch

    return torch.from_numpy(images).float().div_(255).sub_(INPUT_MEAN[0]).div_(INPUT_STD[0])


def build(options: WaterdigitsOptions) -> SpuriousData:
    from spurcore.builtins import waterdigits_gen as gen
    from spurcore.data import Normalization, SplitData, SpuriousData

    arrays = _arrays(options)
    splits = {}
    for split in ("train", "val", "test"):
        inputs = to_inputs(arrays[f"{split}_x"])
        augmented = CropFlip(inputs, max(1, options.size // 14)) if options.augment and split == "train" else None
        splits[split] = SplitData(name=split, inputs=inputs, y=arrays[f"{split}_y"], a=arrays[f"{split}_a"],
                                  train_inputs=augmented)
    pools = {split: pool.tolist() for split, pool in gen.pools(options.seed).items()}
    return SpuriousData(name="waterdigits", splits=splits, class_names=gen.CLASS_NAMES,
                        attr_names=gen.ATTR_NAMES, input_shape=(3, options.size, options.size),
                        provenance={SOURCE_DIGITS: pools}, normalization=Normalization(INPUT_MEAN, INPUT_STD))


class CropFlip:
    """Item i: image i randomly cropped (after `pad` pixels of replicated border) and flipped,
    drawn from the torch RNG the data loader seeds per item and pass."""

    def __init__(self, images: torch.Tensor, pad: int) -> None:
        self.images, self.pad = images, pad

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        image = self.images[i]
        size, pad = image.shape[-1], self.pad
        padded = F.pad(image[None], (pad, pad, pad, pad), mode="replicate")[0]
        top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
        crop = padded[:, top:top + image.shape[-2], left:left + size]
        return crop.flip(-1) if float(torch.rand(())) < 0.5 else crop


@hookimpl
def spurcore_register_datasets():
    return [DatasetSpec(name="waterdigits", build=build, options=WaterdigitsOptions,
                        description="Waterbirds-shaped digits on two backgrounds, generated from scikit-learn's digits")]
