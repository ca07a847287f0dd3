"""Layer rewinding: put one layer back as it was some epochs earlier, everything else unchanged.

A layer here is one neuron layer (a conv or linear module); its own parameters (weight, and
bias when it has one) are replaced by those of the checkpoint `offset` epochs before the
traced epoch. Neighbouring modules, batch-norm statistics included, keep their current values.
A layer is *sensitive* for a group when rewinding it moves that group's accuracy by at least
`threshold` points (1 by default, as in the paper).

The paper rewinds 5/10/20/30/40 epochs back from a 40-epoch run. A shorter run has fewer of
those; `rewind_plan` keeps the offsets whose checkpoint exists and, when none does but an
earlier checkpoint exists, falls back to the earliest one, with a note either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from spurcore_tracer.interventions import restored
from spurcore_tracer.neurons import NeuronLayer
from spurcore_tracer.options import OFFSETS


def rewind_plan(epoch: int, available: Sequence[int], offsets: Sequence[int] = OFFSETS) -> tuple[list[tuple[int, int]], list[str]]:
    """[(offset, past epoch)] to rewind to from `epoch`, and notes on what was left out."""
    available = sorted(set(available))
    earlier = [e for e in available if e < epoch]
    plan = [(o, epoch - o) for o in offsets if epoch - o in earlier]
    notes = []
    missing = [o for o in offsets if epoch - o not in earlier]
    if not earlier:
        notes.append(f"layer rewinding skipped: no checkpoint before epoch {epoch} "
                     f"(train with more epochs and keep_checkpoints = \"all\")")
        return [], notes
    if missing:
        notes.append(f"layer rewinding: no checkpoint {', '.join(map(str, missing))} epochs before epoch {epoch}")
    if not plan:
        plan = [(epoch - earlier[0], earlier[0])]
        notes.append(f"layer rewinding: using the earliest checkpoint instead (epoch {earlier[0]}, "
                     f"{epoch - earlier[0]} epochs back)")
    return plan, notes


def layer_state(state: Mapping[str, torch.Tensor], layer: NeuronLayer) -> dict[str, torch.Tensor]:
    """The past values of `layer`'s own parameters, from a model state dict."""
    out = {}
    for name, _ in layer.module.named_parameters(recurse=False):
        key = f"{layer.path}.{name}"
        if key not in state:
            raise KeyError(f"checkpoint has no {key!r}")
        out[name] = state[key]
    return out


@contextlib.contextmanager
def rewound(layer: NeuronLayer, past: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """`layer`'s parameters set to `past` for the duration of the block, restored bitwise after."""
    params = dict(layer.module.named_parameters(recurse=False))
    with restored(params.values()):
        with torch.no_grad():
            for name, value in past.items():
                params[name].copy_(value.to(device=params[name].device, dtype=params[name].dtype))
        yield


def sensitive_counts(changes: Mapping[str, np.ndarray], threshold: float = 1.0) -> np.ndarray:
    """Per group: how many layers move its accuracy by >= threshold points.
    `changes` maps layer path -> signed change per group."""
    stack = np.stack(list(changes.values()))
    return (np.abs(np.nan_to_num(stack)) >= threshold - 1e-9).sum(0)
