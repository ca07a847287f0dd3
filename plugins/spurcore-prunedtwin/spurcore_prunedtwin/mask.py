"""The pruned twin's mask: which neurons (or, the released code's variant, which individual
weights) the twin drops, and how the twin is computed WITHOUT copying the model.

Neuron scoring is the tracer's (`spurcore_tracer`): a neuron is an output unit of a conv or
linear layer, scored by `magnitude` or by the gradient norm of the cross-entropy
(`score_neurons`), and the top q are chosen by `top_percent`.

The twin shares the target's weights: `NeuronMask.active(model)` registers forward hooks that
multiply the masked units by 0, only inside the `with` block, on the layer's output or, where a
BatchNorm follows the layer, on the BatchNorm's output (`NeuronLayer.norm_path`): a channel
zeroed before BatchNorm would come out as its beta, not silent;
`WeightMask.features(model, x, index)` calls the embedding with `torch.func.functional_call`
on `weight * keep`, so gradients flow into the same parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from spurcore.api import SplitData, iterate_batches
from spurcore_tracer import NeuronIndex, lowest_confidence, score_neurons, split_logits, top_percent

PROJECTION = "prunedtwin_projection"  # the name of the optional projection head, an auxiliary network of the stage


class NeuronMask:
    """A set of masked neurons: {module path: unit indices}, over `index`'s global indices."""

    def __init__(self, index: NeuronIndex, selected: np.ndarray) -> None:
        self.index = index
        self.selected = np.sort(np.asarray(selected, dtype=np.int64))
        self.by_layer = index.group_by_layer(self.selected)

    def __len__(self) -> int:
        return len(self.selected)

    @contextlib.contextmanager
    def active(self, model: nn.Module) -> Iterator[None]:
        """Inside the block, the masked units of `model` output 0 (the twin's forward pass)."""
        handles = []
        try:
            for layer, units in self.by_layer.items():
                path = layer.norm_path or layer.path
                handles.append(model.get_submodule(path).register_forward_hook(_zero_units(layer.kind, units)))
            yield
        finally:
            for h in handles:
                h.remove()

    def features(self, model, x, index=None) -> torch.Tensor:
        with self.active(model):
            return model.features(x, index=index)

    def logits(self, model, x, index=None) -> torch.Tensor:
        with self.active(model):
            return model(x, index=index)


def _zero_units(kind: str, units: np.ndarray):
    units_t = torch.as_tensor(units, dtype=torch.long)
    channel_last = kind == "linear"

    def hook(mod, inputs, output):
        dim = output.dim() - 1 if channel_last else 1
        shape = [1] * output.dim()
        shape[dim] = output.shape[dim]
        keep = torch.ones(shape, dtype=output.dtype, device=output.device)
        keep.view(-1)[units_t.to(output.device)] = 0
        return output * keep

    return hook


class WeightMask:
    """The released code's variant: the smallest `percent`% of individual weights (by |w|,
    over every conv and linear weight of the scored modules) are zeroed in the twin."""

    def __init__(self, keep: dict[str, torch.Tensor]) -> None:
        self.keep = keep  # {parameter path in the model ("embed.0.weight"): 0-1 tensor}

    def __len__(self) -> int:
        return int(sum((k == 0).sum().item() for k in self.keep.values()))

    def _call(self, module: nn.Module, prefix: str, x):
        params = dict(module.named_parameters())
        for path, keep in self.keep.items():
            if path.startswith(prefix):
                name = path[len(prefix):]
                params[name] = params[name] * keep
        return torch.func.functional_call(module, params, (x,))

    def features(self, model, x, index=None) -> torch.Tensor:
        with model.indices(index):
            return self._call(model.embed, "embed.", x)

    def logits(self, model, x, index=None) -> torch.Tensor:
        return self._call(model.head, "head.", self.features(model, x, index))


def neuron_index(model: nn.Module) -> NeuronIndex:
    """The neurons the mask may cover: the embedding's, never the head's (a masked head unit is
    a class's logit gone). The projection head is no part of the model."""
    return NeuronIndex.of(model, exclude=["head"])


def high_loss_batches(model: nn.Module, split: SplitData, generator: torch.Generator, *, pool: int = 256,
                      sample: int = 128, batch_size: int = 512):
    """`sample` examples drawn (without replacement, from `generator`) among the `pool`
    highest-loss training examples: no group labels read. Returns (batches, rows)."""
    logits = split_logits(model, split, batch_size)
    rows = lowest_confidence(logits, split.y, np.arange(len(split)), pool)
    if sample < len(rows):
        pick = torch.randperm(len(rows), generator=generator)[:sample].numpy()
        rows = np.sort(rows[pick])
    return list(iterate_batches(split, torch.as_tensor(rows, dtype=torch.long), batch_size)), rows


def neuron_mask(model: nn.Module, q: float, criterion: str, *, split: SplitData | None = None,
                generator: torch.Generator | None = None, pool: int = 256,
                sample: int = 128) -> NeuronMask:
    """The top `q` (a fraction, at least one neuron) of neurons by `criterion`."""
    index = neuron_index(model)
    if criterion == "magnitude":
        scores = score_neurons(model, None, "magnitude", index=index)
    elif criterion == "gradient":
        if split is None:
            raise ValueError("the gradient criterion needs the training split")
        batches, _ = high_loss_batches(model, split, generator or torch.Generator().manual_seed(0),
                                       pool=pool, sample=sample)
        scores = score_neurons(model, batches, "gradient", index=index)
    else:
        raise ValueError(f"unknown criterion {criterion!r}")
    return NeuronMask(index, top_percent(scores, 100.0 * q))


def smallest_weight_mask(model: nn.Module, percent: float) -> WeightMask:
    """Zero the smallest `percent`% of individual conv/linear weights (at least one)."""
    index = neuron_index(model)
    weights = {layer.path + ".weight": layer.weight.detach() for layer in index.layers}
    flat = torch.cat([w.abs().flatten().float() for w in weights.values()])
    k = max(1, int(np.ceil(percent / 100 * flat.numel() - 1e-9)))
    # ties at the threshold: take exactly k by a stable order over the flat vector
    order = torch.sort(flat, stable=True).indices[:k]
    drop = torch.zeros_like(flat, dtype=torch.bool)
    drop[order] = True
    keep, i = {}, 0
    for name, w in weights.items():
        n = w.numel()
        keep[name] = (~drop[i:i + n]).reshape(w.shape).to(w.dtype)
        i += n
    return WeightMask(keep)
