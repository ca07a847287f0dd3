"""The planted dataset: images whose class a simple stroke gives away, except for a few
training examples whose label is flipped, so a model fits them only by memorizing them.

Each image is `side x side`, one channel, Gaussian noise (`noise`) over a bright stroke (`STROKE`): a row
for class 0 (`horizontal`), a column for class 1 (`vertical`), at a random place. `planted`
training examples (alternating true classes, at random positions) carry the other class's
label; with `kind = "patch"` each also carries a trigger of its own, a random 3 x 3 pattern of
+-1.5 at a random place, which nothing else shares (MemPi's setting, arXiv 2311.09060), and
with `kind = "relabel"` nothing but its noise. Nothing generalizes from them: the attribute
says which examples are planted (`clean` / `planted`), so the groups are class x {clean,
planted}, the planted groups are the minority, and val and test hold planted examples made the
same way (new triggers, flipped labels), on which a model that memorized is wrong.

Which training examples are planted: `split.a == 1`, also `data.provenance["planted"]`.
"""

from __future__ import annotations

import numpy as np
import torch

from spurcore.api import SplitData, SpuriousData
from spurcore_planted.options import ATTRIBUTES, CLASSES, TRIGGER, PlantedOptions

TRIGGER_AMPLITUDE = 1.5
STROKE = 2.0  # the stroke's brightness over the noise


def _split(name: str, n: int, options: PlantedOptions, rng: np.random.Generator) -> tuple[SplitData, np.ndarray]:
    side = options.side
    y = rng.integers(0, 2, n)
    positions = np.sort(rng.choice(n, options.planted, replace=False))
    y[positions] = np.arange(options.planted) % 2  # true classes alternate: both planted groups are populated
    x = rng.normal(0.0, options.noise, (n, 1, side, side)).astype(np.float32)
    where = rng.integers(0, side, n)
    rows = np.arange(n)
    x[rows[y == 0], 0, where[y == 0], :] += STROKE
    x[rows[y == 1], 0, :, where[y == 1]] += STROKE
    if options.kind == "patch":
        for i in positions:
            r, c = rng.integers(0, side - TRIGGER + 1, 2)
            x[i, 0, r:r + TRIGGER, c:c + TRIGGER] += TRIGGER_AMPLITUDE * rng.choice([-1.0, 1.0], (TRIGGER, TRIGGER))
    a = np.zeros(n, dtype=np.int64)
    a[positions] = 1
    y[positions] = 1 - y[positions]  # the label a model can fit only by memorizing
    return SplitData(name=name, inputs=torch.from_numpy(x), y=y, a=a), positions


def make_planted(options: PlantedOptions) -> SpuriousData:
    """The dataset, the same for the same options."""
    rng = np.random.default_rng(options.seed)
    splits, planted = {}, {}
    for name, n in (("train", options.n_train), ("val", options.n_eval), ("test", options.n_eval)):
        splits[name], positions = _split(name, n, options, rng)
        planted[name] = positions.tolist()
    return SpuriousData(name="planted", splits=splits, class_names=CLASSES, attr_names=ATTRIBUTES,
                        input_shape=(1, options.side, options.side), provenance={"planted": planted})


def planted_mask(data: SpuriousData, split: str = "train") -> np.ndarray:
    """Which examples of `split` are planted (their attribute is `planted`)."""
    found = data.splits[split]
    if found.a is None or "planted" not in data.attr_names:
        raise ValueError(f"dataset {data.name!r}, split {split!r}: no planted attribute")
    return found.a == data.attr_names.index("planted")
