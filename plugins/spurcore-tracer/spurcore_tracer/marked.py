"""The top-memorized examples: the training examples a `spur memorization` scores file
(`DIR/seedS/scores.h5`) ranks highest, traced as one more row after the groups, on train only.

Only the file's documented layout is read (docs/methods/memorization-scores.md: `train/index`,
the positions 0..n-1 of the training split, `train/y` and `train/memorization`, NaN where
undefined), never the plugin that writes it, so the tracer works without it installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from spurcore_tracer.options import TracerError
from spurcore_tracer.selection import count_for_percent, ranking

KEYS = ("index", "y", "memorization")  # what is read from the file's `train` group


@attrs.frozen
class Marked:
    """The marked examples (`mask` over the run's training split), the row's name and how they were chosen."""

    label: str
    mask: np.ndarray = attrs.field(eq=False)
    chosen: dict[str, Any]


def read_memorization(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`train/y` and `train/memorization` of a scores file, or a TracerError naming the file."""
    import h5py

    what = f"{path}: not a scores file of `spur memorization`"
    if not path.is_file():
        raise TracerError(f"{path}: no such scores file; `spur memorization PIPELINE.toml --out DIR` "
                          f"writes one per seed, DIR/seed0/scores.h5")
    try:
        with h5py.File(path, "r") as handle:
            train = handle.get("train")
            missing = [key for key in KEYS if not isinstance(train, h5py.Group) or key not in train]
            if missing:
                raise TracerError(f"{what} (no train/{missing[0]})")
            index, y, scores = (np.asarray(train[key][()]) for key in KEYS)
    except (OSError, KeyError, TypeError, ValueError) as exc:  # what h5py makes of a damaged file
        raise TracerError(f"{what} ({type(exc).__name__}: {exc})") from None
    for key, values, kinds, expected in (("index", index, "iu", "integers"), ("y", y, "iu", "integers"),
                                         ("memorization", scores, "iuf", "numbers")):
        if values.dtype.kind not in kinds:
            raise TracerError(f"{what} (train/{key} holds {values.dtype} values, not {expected})")
    if scores.ndim != 1 or y.shape != scores.shape or not np.array_equal(index, np.arange(len(scores))):
        raise TracerError(f"{what} (train/index, y and memorization are not one entry per position 0..n-1)")
    return y, scores.astype(np.float64)


def top_memorized(path: Any, share: float, y: np.ndarray, groups: np.ndarray, group_names: Sequence[str]) -> Marked:
    """The top `share` of the run's training examples (`y`: their labels; ceil, at least one, at
    most those with a score) by defined memorization score, ties to the lower position."""
    path = Path(path)
    file_y, scores = read_memorization(path)
    elsewhere = "scores of another dataset, or of another part of it (a run with [dataset] train_subset or holdout)"
    if len(file_y) != len(y):
        raise TracerError(f"{path}: scores for {len(file_y)} training examples, but the run's training split has "
                          f"{len(y)}: {elsewhere}")
    differ = np.flatnonzero(file_y != y)
    if differ.size:
        raise TracerError(f"{path}: its training labels differ from the run's at {differ.size} of {len(y)} positions "
                          f"(the first: {differ[0]}): {elsewhere}")
    defined = ~np.isnan(scores)
    if not defined.any():
        raise TracerError(f"{path}: no training example has a defined memorization score (each one was in every "
                          f"model's subset or in none); score with more models (--models)")
    count = min(count_for_percent(len(y), 100 * share), int(defined.sum()))
    picked = ranking(np.where(defined, scores, -np.inf))[:count]
    mask = np.zeros(len(y), dtype=bool)
    mask[picked] = True
    threshold = float(scores[picked[-1]])
    label = f"top-memorized {100 * share:g}%"
    return Marked(label, mask, {
        "label": label, "file": str(path), "share": share, "count": count, "of": len(y),
        "defined": int(defined.sum()), "threshold": threshold,
        "ties_left_out": int((defined & ~mask & (scores == threshold)).sum()),
        "examples_by_group": dict(zip(group_names, np.bincount(groups[mask], minlength=len(group_names)).tolist())),
    })
