"""How well a tracer criterion recovers planted memorization: for each planted training
example, zero the top-k neurons the criterion picks for it and measure whether the model still
fits it and how much training accuracy the other examples lose; a random control of k neurons
does the same (MemPi's per-example protocol, arXiv 2311.09060).

The pieces are the tracer's public ones: `NeuronIndex.of` (what a neuron is), `score_neurons`
(gradient: the cross-entropy summed over the planted examples; magnitude: group-free),
`top_k`, `ranking` and `intervene(..., "zero")`, which also zeroes a unit's following
BatchNorm so that it is silent. The control draws k neurons uniformly from those outside the
criterion's top `control_exclude_percent`% (as `spur trace` draws its control), `repeats` times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np
import torch

from spurcore.api import SplitData
from spurcore_tracer import NeuronIndex, intervene, ranking, score_neurons, split_logits, top_k

CRITERIA = ("gradient", "magnitude")


@attrs.frozen(kw_only=True)
class Recovery:
    """Training accuracy (percent) before and after zeroing, on the planted examples and on the
    others, for the criterion's top-k (`planted_after`, `others_after`: means over the planted
    examples, each with its own selection) and for the control (also over its repeats); a
    `drop` is before minus after, in points."""

    criterion: str
    k: int
    neurons: tuple[str, ...]  # the top neuron picked for each planted example
    planted_before: float
    others_before: float
    planted_after: float
    others_after: float
    control_planted_after: float
    control_others_after: float

    @property
    def planted_drop(self) -> float:
        return self.planted_before - self.planted_after

    @property
    def others_drop(self) -> float:
        return self.others_before - self.others_after

    @property
    def control_planted_drop(self) -> float:
        return self.planted_before - self.control_planted_after

    @property
    def control_others_drop(self) -> float:
        return self.others_before - self.control_others_after

    def as_dict(self) -> dict:
        found = attrs.asdict(self)
        found["neurons"] = list(self.neurons)
        for name in ("planted_drop", "others_drop", "control_planted_drop", "control_others_drop"):
            found[name] = getattr(self, name)
        return found


def _correct(model: torch.nn.Module, split: SplitData) -> np.ndarray:
    return split_logits(model, split).argmax(1).numpy() == split.y


def recover(model: torch.nn.Module, split: SplitData, planted: np.ndarray, criterion: str, share: float = 0.1, *,
            exclude: Sequence[str] = ("head",), repeats: int = 3, control_exclude_percent: float = 10.0,
            seed: int = 0) -> Recovery:
    """For each example of `split` where `planted` is True: zero the top `share` of neurons
    (k = ceil(share x neurons), at least one; the head left out by default, its units being the
    classes) that `criterion` picks for that example alone (the gradient of its own loss; the
    magnitude picks the same for all) and see whether it is still right and how right the
    unplanted examples are; then the same for `repeats` random draws of k neurons. Accuracies
    are means over the planted examples."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    planted = np.asarray(planted, dtype=bool)
    if planted.shape != (len(split),) or not planted.any() or planted.all():
        raise ValueError(f"planted must mark some but not all of the {len(split)} examples of {split.name!r}")
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    index = NeuronIndex.of(model, exclude=exclude)
    k = max(1, math.ceil(share * index.total - 1e-9))
    rng = np.random.default_rng(seed)
    before = _correct(model, split)
    after, control, neurons = [], [], []
    for i in np.flatnonzero(planted):
        one = [(split.inputs[i:i + 1], torch.as_tensor(np.array(split.y[i:i + 1])))] if criterion == "gradient" else None
        scores = score_neurons(model, one, criterion, index=index)
        chosen = top_k(scores, k)
        neurons.append(str(index.neuron(int(chosen[0]))))
        with intervene(index, chosen, "zero"):
            correct = _correct(model, split)
        after.append((correct[i], correct[~planted].mean()))
        pool = ranking(scores)[max(1, math.ceil(control_exclude_percent / 100 * index.total - 1e-9)):]
        for _ in range(repeats):
            with intervene(index, rng.choice(pool, min(k, len(pool)), replace=False), "zero"):
                correct = _correct(model, split)
            control.append((correct[i], correct[~planted].mean()))
    after_mean, control_mean = 100.0 * np.mean(after, axis=0), 100.0 * np.mean(control, axis=0)
    return Recovery(criterion=criterion, k=k, neurons=tuple(neurons),
                    planted_before=100.0 * float(before[planted].mean()),
                    others_before=100.0 * float(before[~planted].mean()),
                    planted_after=float(after_mean[0]), others_after=float(after_mean[1]),
                    control_planted_after=float(control_mean[0]), control_others_after=float(control_mean[1]))
