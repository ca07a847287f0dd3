"""Criteria: a score per neuron, saying how much it matters (docs/methods/tracer.md).

* `magnitude`: the L2 norm of the neuron's parameters, ||(W[c], b[c])||. Group-invariant.
* `gradient` on a set of examples D: the L2 norm of d CE(f(theta, D)) / d(W[c], b[c]), with the
  cross-entropy summed over D (the released code's choice; `reduction="mean"` divides by |D|,
  which scales every neuron alike and leaves rankings unchanged). One backward pass over D
  scores every neuron at once: the per-neuron norm is a reduction of each layer's gradient
  tensor over all but its first dimension; nothing loops over neurons.
* per-group gradient: the gradient score with D = D_j, the training examples of group j, or
  (the released code's rule, the default) its N = 200 lowest-confidence ones.
* group-free gradient (`loss-gradient`): the gradient score on the N highest-loss training
  examples, which needs no group labels.

By default the bias belongs to the neuron (both for magnitude and gradient): zeroing a
neuron zeroes W[c] and b[c], so the score measures what the intervention removes.
`include_bias=False` scores W[c] only. The model is scored in eval mode (batch-norm running
statistics, no dropout), as it is evaluated; its training flag and `.grad` fields are left as
they were.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spurcore.api import Batch, SplitData, iterate_batches, to_device
from spurcore_tracer.neurons import NeuronIndex
from spurcore_tracer.options import CRITERIA
SUBSETS = ("lowest-confidence", "all")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _per_unit_sq(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().double().pow(2).reshape(tensor.shape[0], -1).sum(1)


def magnitude(index: NeuronIndex, include_bias: bool = True) -> np.ndarray:
    """||W[c]|| (with b[c] when `include_bias`) of every neuron, by global index."""
    parts = []
    for layer in index.layers:
        sq = sum(_per_unit_sq(t) for _, t in layer.parameters(include_bias))
        parts.append(sq.sqrt().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros(0)


def _xy(batch: Any) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, Batch):
        return batch.x, batch.y, batch.index
    x, y = batch[0], batch[1]
    return x, torch.as_tensor(y), None


class _eval_mode:
    """Eval mode and requires_grad on every scored parameter, restored on exit."""

    def __init__(self, model: nn.Module, tensors: list[torch.Tensor]) -> None:
        self.model, self.tensors = model, tensors

    def __enter__(self) -> None:
        self.training = self.model.training
        self.flags = [t.requires_grad for t in self.tensors]
        self.model.eval()
        for t in self.tensors:
            t.requires_grad_(True)

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.training)
        for t, flag in zip(self.tensors, self.flags):
            t.requires_grad_(flag)


def gradient_norms(model: nn.Module, batches: Iterable[Any], index: NeuronIndex | None = None, *,
                   include_bias: bool = True, reduction: Literal["sum", "mean"] = "sum") -> np.ndarray:
    """||d CE(D) / d neuron|| for every neuron, D = the union of `batches`.

    `batches` yields `spurcore.data.Batch` or `(x, y)` pairs. The gradient of the summed loss
    is accumulated over batches (exact: the gradient of a sum is the sum of gradients), so D
    may be larger than memory allows in one forward. Returns a float64 vector by global index.
    """
    index = index or NeuronIndex.of(model)
    params = [t for layer in index.layers for _, t in layer.parameters(include_bias)]
    total = [torch.zeros_like(t, dtype=torch.float64) for t in params]
    device = _device(model)
    count = 0
    with _eval_mode(model, params), torch.enable_grad():
        for batch in batches:
            x, y, idx = _xy(batch)
            x, y = to_device(x, device), y.to(device)
            logits = model(x, index=idx.to(device)) if idx is not None and _takes_index(model) else model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            for acc, grad in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
                if grad is not None:
                    acc += grad.double()
            count += len(y)
    if reduction == "mean" and count:
        total = [t / count for t in total]
    parts, i = [], 0
    for layer in index.layers:
        n = len(layer.parameters(include_bias))
        parts.append(sum(_per_unit_sq(t) for t in total[i:i + n]).sqrt().cpu().numpy())
        i += n
    return np.concatenate(parts) if parts else np.zeros(0)


def _takes_index(model: nn.Module) -> bool:
    from spurcore.api import SpurModel

    return isinstance(model, SpurModel)


@torch.no_grad()
def split_logits(model: nn.Module, split: SplitData, batch_size: int = 512) -> torch.Tensor:
    """The model's logits (eval mode, float32, on the CPU) for every example of `split`."""
    training = model.training
    model.eval()
    device = _device(model)
    out = []
    try:
        for batch in iterate_batches(split, torch.arange(len(split)), batch_size):
            out.append(model(to_device(batch.x, device), index=batch.index.to(device)).float().cpu())
    finally:
        model.train(training)
    return torch.cat(out)


def lowest_confidence(logits: torch.Tensor, y: np.ndarray, rows: np.ndarray, n: int | None) -> np.ndarray:
    """The `n` rows (of `rows`) whose true class gets the lowest softmax probability, i.e. the
    highest cross-entropy; ties to the lower row. `n=None` (or n >= len(rows)): all rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if n is None or n >= len(rows):
        return np.sort(rows)
    loss = F.cross_entropy(logits[rows], torch.as_tensor(y[rows]), reduction="none").double().numpy()
    order = np.lexsort((rows, -loss))
    return np.sort(rows[order[:n]])


def _batches(split: SplitData, rows: np.ndarray, batch_size: int) -> Iterable[Batch]:
    return iterate_batches(split, torch.as_tensor(rows, dtype=torch.long), batch_size)


def group_gradient_scores(model: nn.Module, split: SplitData, groups: np.ndarray, n_groups: int, *,
                          index: NeuronIndex | None = None, subset: str = "lowest-confidence", n: int = 200,
                          logits: torch.Tensor | None = None, include_bias: bool = True,
                          reduction: Literal["sum", "mean"] = "sum", batch_size: int = 512
                          ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The per-group gradient criterion: scores[j] = gradient norms on D_j, one pass per group.

    `subset` "all" uses every training example of the group; "lowest-confidence" its `n`
    lowest-confidence ones. Returns (scores [n_groups, M] with NaN rows for empty groups,
    {group: the rows used}).
    """
    index = index or NeuronIndex.of(model)
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    if subset == "lowest-confidence" and logits is None:
        logits = split_logits(model, split, batch_size)
    scores = np.full((n_groups, index.total), np.nan)
    used = {}
    for j in range(n_groups):
        rows = np.flatnonzero(groups == j)
        if rows.size == 0:
            continue
        if subset == "lowest-confidence":
            rows = lowest_confidence(logits, split.y, rows, n)
        used[j] = rows
        scores[j] = gradient_norms(model, _batches(split, rows, batch_size), index,
                                   include_bias=include_bias, reduction=reduction)
    return scores, used


def loss_gradient_scores(model: nn.Module, split: SplitData, *, index: NeuronIndex | None = None, n: int = 200,
                         logits: torch.Tensor | None = None, include_bias: bool = True,
                         reduction: Literal["sum", "mean"] = "sum", batch_size: int = 512
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The group-free criterion: gradient norms on the `n` highest-loss examples of `split`
    (no group labels read). Returns (scores [M], the rows used)."""
    index = index or NeuronIndex.of(model)
    if logits is None:
        logits = split_logits(model, split, batch_size)
    rows = lowest_confidence(logits, split.y, np.arange(len(split)), n)
    return gradient_norms(model, _batches(split, rows, batch_size), index,
                          include_bias=include_bias, reduction=reduction), rows


def score_neurons(model: nn.Module, batches: Iterable[Any] | None = None, criterion: str = "gradient", *,
                  index: NeuronIndex | None = None, include_bias: bool = True,
                  reduction: Literal["sum", "mean"] = "sum") -> np.ndarray:
    """Score every neuron of `model` (a vector by global index of `NeuronIndex.of(model)`).

    `criterion` "magnitude" ignores `batches`; "gradient" is the norm of the gradient of the
    cross-entropy summed over `batches` (Batch objects or (x, y) pairs): pass the examples you
    want, e.g. a group's, or the highest-loss ones (see `loss_gradient_scores`).
    """
    index = index or NeuronIndex.of(model)
    if criterion == "magnitude":
        return magnitude(index, include_bias)
    if criterion in ("gradient", "loss-gradient"):
        if batches is None:
            raise ValueError(f"criterion {criterion!r} needs batches")
        return gradient_norms(model, batches, index, include_bias=include_bias, reduction=reduction)
    raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
