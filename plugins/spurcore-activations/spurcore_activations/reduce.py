"""Reduction of one module output to one row of units per example.

A 2-d output `(N, units)` is kept as it is. An output with spatial dimensions
`(N, C, *spatial)` (conv feature maps, channels first) becomes `(N, C)` by the per-channel
`mean` or `max` over the spatial positions, or `(N, C * prod(spatial))` flattened with
`none`. A 1-d output `(N,)` becomes one unit. The result is always a new float32 tensor, so a
later in-place operation in the network (`ReLU(inplace=True)`) cannot change what was taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch

Reduce = Literal["mean", "max", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "max", "none")


def reduce_output(output: torch.Tensor, how: Reduce = "mean") -> torch.Tensor:
    """`(N, ...)` -> `(N, units)`, float32, detached, never aliasing `output`."""
    if how not in REDUCTIONS:
        raise ValueError(f"unknown reduction {how!r}: use one of {', '.join(REDUCTIONS)}")
    out = output.detach()
    if out.ndim == 1:
        out = out[:, None]
    elif out.ndim > 2:
        if how == "mean":
            out = out.float().mean(dim=tuple(range(2, out.ndim)))
        elif how == "max":
            out = out.amax(dim=tuple(range(2, out.ndim)))
        else:
            out = out.flatten(1)
    converted = out.float()  # a copy unless already float32 (then possibly a view of `output`)
    if converted.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
        converted = converted.clone()
    return converted


def units(shape: tuple[int, ...], how: Reduce = "mean") -> int:
    """Columns a module output of per-example `shape` (without the batch axis) becomes."""
    if len(shape) == 0:
        return 1
    if len(shape) == 1 or how != "none":
        return shape[0]
    n = 1
    for s in shape:
        n *= s
    return n
