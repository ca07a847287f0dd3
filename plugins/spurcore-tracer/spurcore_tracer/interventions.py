"""Interventions on selected neurons, each undone exactly afterwards.

* `zero`:  W[c] = 0 (and b[c] = 0), and the following BatchNorm's gamma[c] = 0 (and
  beta[c] = 0): pruning, the unit outputs exactly 0 after normalisation
  (`NeuronLayer.silencing_parameters`).
* `init`:  W[c] ~ N(0, sigma^2) (and b[c]): random re-initialisation.
* `noise`: W[c] += N(0, sigma^2) (and b[c]): random perturbation.

`intervene(index, neurons, kind, sigma=..., generator=...)` is a context manager: on entry it
copies every parameter it will touch, changes only the selected rows, and on exit (also when
the body raises) copies the saved values back, so the state dict is bitwise what it was.
Random values are drawn on the CPU from the given `torch.Generator`, in a fixed order (layers
in module order, weight before bias, units ascending), so a seed fixes the result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from spurcore_tracer.neurons import NeuronIndex
from spurcore_tracer.options import KINDS


@contextlib.contextmanager
def restored(tensors: Iterable[torch.Tensor]) -> Iterator[None]:
    """Copy `tensors` now and write the copies back on exit, whatever happens inside."""
    tensors = list(tensors)
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)


@contextlib.contextmanager
def intervene(index: NeuronIndex, neurons: Iterable[int], kind: str, *, sigma: float = 0.0,
              generator: torch.Generator | None = None, include_bias: bool = True) -> Iterator[None]:
    """Apply intervention `kind` to the neurons (global indices) for the duration of the block."""
    if kind not in KINDS:
        raise ValueError(f"unknown intervention {kind!r}; choose from {', '.join(KINDS)}")
    if kind != "zero" and sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    by_layer = index.group_by_layer(neurons)
    def tensors(layer):
        return layer.silencing_parameters(include_bias) if kind == "zero" else layer.parameters(include_bias)

    touched = [t for layer in by_layer for _, t in tensors(layer)]
    with restored(touched):
        with torch.no_grad():
            for layer, units in by_layer.items():
                rows = torch.as_tensor(units, dtype=torch.long, device=layer.weight.device)
                for _, tensor in tensors(layer):
                    shape = (len(units), *tensor.shape[1:])
                    if kind == "zero":
                        tensor[rows] = 0
                        continue
                    draw = torch.randn(shape, generator=generator, dtype=torch.float32) * sigma
                    draw = draw.to(device=tensor.device, dtype=tensor.dtype)
                    tensor[rows] = draw if kind == "init" else tensor[rows] + draw
        yield
