"""Neurons: the output channels of conv layers and the output units of linear layers.

A neuron is `(module path, unit)`: unit c of a conv layer owns the weight slice `W[c]` (all its
input channels and kernel positions) and `bias[c]`; unit i of a linear layer owns the row
`W[i]` and `bias[i]`. Every conv and linear module of the model counts, in the order of
`model.named_modules()` (for a `SpurModel`: the backbone `embed.*`, then `head`), unless the
backbone declares its neurons (`Layout.neurons`, `SpurModel.neuron_paths()`): a transformer
declares the first linear layer of each MLP block, so that a neuron is one hidden unit of an
MLP block (as "The Silent Majority" counts them), and only those count.

A conv or linear layer followed directly by a BatchNorm over its units (the next module in
module order, under the same parent, with as many features as the layer has units: a small
CNN's `conv, bn, relu`, a ResNet's `conv1, bn1`) has that BatchNorm as its `norm`. Silencing a
neuron must reach past it: zeroing W[c] alone leaves the BatchNorm's beta[c] (and, in eval mode,
-gamma[c] * running_mean[c] / sqrt(running_var[c])), so the unit's output after normalisation is
a constant, not zero. The "zero" intervention therefore also zeroes the norm's gamma[c] and
beta[c], and a mask applied by a forward hook is applied to the norm's output.

Every neuron also has a *global index*: its position when the layers are laid end to end in
module order, units in order. Scores are numpy vectors indexed by it, so "ties broken by
module order, then unit" is "ties broken by global index".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs
import numpy as np
import torch
from torch import nn

NEURON_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@attrs.frozen(order=True)
class Neuron:
    """One unit: the module's dotted path in the model, and the output unit's index."""

    layer: str
    unit: int

    def __str__(self) -> str:
        return f"{self.layer}[{self.unit}]"


@attrs.frozen(eq=False)
class NeuronLayer:
    """A conv or linear module whose output units are neurons; `offset` is the global index
    of its unit 0."""

    path: str
    module: nn.Module
    offset: int
    norm: nn.Module | None = None  # the BatchNorm applied right after it, if any
    norm_path: str | None = None

    @property
    def kind(self) -> str:
        return "linear" if isinstance(self.module, nn.Linear) else "conv"

    @property
    def units(self) -> int:
        return int(self.module.weight.shape[0])

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    @property
    def span(self) -> slice:
        return slice(self.offset, self.offset + self.units)

    def parameters(self, include_bias: bool = True) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of the parameters whose first dimension is this layer's units."""
        found = [("weight", self.weight)]
        if include_bias and self.bias is not None:
            found.append(("bias", self.bias))
        return found

    def silencing_parameters(self, include_bias: bool = True) -> list[tuple[str, torch.Tensor]]:
        """`parameters()` plus the norm's gamma (and beta): zeroing all of them makes the unit's
        output after normalisation exactly zero, in train and eval mode."""
        found = self.parameters(include_bias)
        if self.norm is not None and self.norm.weight is not None:
            found.append(("norm.weight", self.norm.weight))
            if include_bias:
                found.append(("norm.bias", self.norm.bias))
        return found


def _following_norm(modules: list[tuple[str, nn.Module]], i: int, units: int) -> tuple[str | None, nn.Module | None]:
    """The BatchNorm right after modules[i] in module order, under the same parent, over `units`."""
    if i + 1 >= len(modules):
        return None, None
    path = modules[i][0]
    next_path, following = modules[i + 1]
    if (isinstance(following, nn.modules.batchnorm._BatchNorm) and following.num_features == units
            and next_path.rpartition(".")[0] == path.rpartition(".")[0]):
        return next_path, following
    return None, None


class NeuronIndex:
    """Every neuron of a model, laid out in module order. Build with `NeuronIndex.of(model)`."""

    def __init__(self, layers: Sequence[NeuronLayer]) -> None:
        self.layers = tuple(layers)
        self.by_path = {layer.path: layer for layer in self.layers}
        self.total = sum(layer.units for layer in self.layers)
        self.layer_ids = np.concatenate([np.full(layer.units, i) for i, layer in enumerate(self.layers)]).astype(np.int64) \
            if self.layers else np.zeros(0, np.int64)
        self.unit_ids = np.concatenate([np.arange(layer.units) for layer in self.layers]).astype(np.int64) \
            if self.layers else np.zeros(0, np.int64)

    @classmethod
    def of(cls, model: nn.Module, exclude: Iterable[str] = ()) -> NeuronIndex:
        """The neurons of every conv and linear module of `model`, or of the modules its backbone
        declares (paths starting with one of `exclude` left out). Transposed convolutions and
        modules without weight are skipped."""
        exclude = tuple(exclude)
        declared = set(model.neuron_paths()) if hasattr(model, "neuron_paths") else set()
        layers, offset = [], 0
        modules = list(model.named_modules())
        for i, (path, module) in enumerate(modules):
            if not isinstance(module, NEURON_MODULES) or getattr(module, "weight", None) is None:
                continue
            if declared and path not in declared:
                continue
            if any(path == e or path.startswith(e + ".") for e in exclude):
                continue
            norm_path, norm = _following_norm(modules, i, int(module.weight.shape[0]))
            layer = NeuronLayer(path=path, module=module, offset=offset, norm=norm, norm_path=norm_path)
            layers.append(layer)
            offset += layer.units
        return cls(layers)

    def __len__(self) -> int:
        return self.total

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(layer.path for layer in self.layers)

    def neuron(self, index: int) -> Neuron:
        layer = self.layers[int(self.layer_ids[index])]
        return Neuron(layer.path, int(self.unit_ids[index]))

    def neurons(self, indices: Iterable[int]) -> list[Neuron]:
        return [self.neuron(int(i)) for i in indices]

    def global_index(self, neuron: Neuron) -> int:
        layer = self.by_path[neuron.layer]
        if not 0 <= neuron.unit < layer.units:
            raise IndexError(f"{neuron}: {layer.path} has {layer.units} units")
        return layer.offset + neuron.unit

    def group_by_layer(self, indices: Iterable[int]) -> dict[NeuronLayer, np.ndarray]:
        """{layer: sorted unit indices} for a set of global indices, layers in module order."""
        indices = np.unique(np.asarray(list(indices), dtype=np.int64))
        out = {}
        for i, layer in enumerate(self.layers):
            units = self.unit_ids[indices[self.layer_ids[indices] == i]]
            if units.size:
                out[layer] = units
        return out

    def describe(self) -> list[dict]:
        return [{"path": l.path, "kind": l.kind, "units": l.units, "offset": l.offset, "norm": l.norm_path}
                for l in self.layers]
