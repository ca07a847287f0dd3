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
    """`scale` shrinks every split's group counts (1.0: Waterbirds' 3498/184/56/1057 train)."""

    seed: int = 0
    scale: float = attrs.field(default=1.0, validator=positive)
    size: int = attrs.field(default=28, validator=positive)
    cache: bool = True


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
        splits[split] = SplitData(name=split, inputs=to_inputs(arrays[f"{split}_x"]), y=arrays[f"{split}_y"], a=arrays[f"{split}_a"])
    pools = {split: pool.tolist() for split, pool in gen.pools(options.seed).items()}
    return SpuriousData(name="waterdigits", splits=splits, class_names=gen.CLASS_NAMES,
                        attr_names=gen.ATTR_NAMES, input_shape=(3, options.size, options.size),
                        provenance={SOURCE_DIGITS: pools}, normalization=Normalization(INPUT_MEAN, INPUT_STD))


@hookimpl
def spurcore_register_datasets():
    return [DatasetSpec(name="waterdigits", build=build, options=WaterdigitsOptions,
                        description="Waterbirds-shaped digits on two backgrounds, generated from scikit-learn's digits")]
