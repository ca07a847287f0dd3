"""The model every stage works on: an embedding network followed by a linear head.

Splitting the model at the penultimate features is the contract that post-hoc methods
(DFR, NeuronTune) rely on: they refit `head` on frozen `embed(x)`. The batch's example
indices travel with the forward call in `model.context`, so layers that need them
(example-tied dropout) read them from the model they belong to, not from global state.
A backbone may also declare its `Layout` (blocks, neurons, token grid), so that methods which
act inside it (FairDropout after a block, the tracer's neurons, Grad-CAM) need not know it by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import nn


@attrs.frozen
class TokenGrid:
    """How a vision transformer lays out what its blocks output: (N, prefix + rows * cols, C),
    `prefix` leading tokens (class, registers), then one token per image patch, row by row;
    the units (features) are the last dimension."""

    prefix: int
    rows: int
    cols: int

    def feature_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens of (N, prefix + rows * cols, C) as an (N, C, rows, cols) map."""
        n, count, channels = tokens.shape
        if count != self.prefix + self.rows * self.cols:
            raise ValueError(f"{count} tokens, expected {self.prefix} + {self.rows} x {self.cols}")
        return tokens[:, self.prefix:].transpose(1, 2).reshape(n, channels, self.rows, self.cols)


@attrs.frozen(kw_only=True)
class Layout:
    """What a backbone declares about its inside, as module paths in its module.

    `blocks`: its successive blocks (stages), shallow to deep, where "after block k" is
    (FairDropout placements, Grad-CAM's default layer). `neurons`: the modules whose output
    units are its neurons for the tracer (a transformer: the first linear layer of each MLP
    block, one hidden unit per neuron); empty: every conv and linear layer. `tokens`: set when
    the blocks output token sequences (`TokenGrid`); None: (N, C, ...) maps and vectors."""

    blocks: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    neurons: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    tokens: TokenGrid | None = None


def _declared(instance: Any, attribute: attrs.Attribute, layout: Layout) -> None:
    for path in (*layout.blocks, *layout.neurons):
        try:
            instance.module.get_submodule(path)
        except AttributeError:
            raise ValueError(f"Backbone.layout names {path!r}, which is not a module of the backbone") from None


@attrs.frozen
class Backbone:
    """What a backbone plugin builds: a module mapping inputs to `feature_dim` features, and
    optionally its `Layout`."""

    module: nn.Module
    feature_dim: int
    layout: Layout = attrs.field(factory=Layout, validator=_declared, kw_only=True)


class ForwardContext:
    """Per-forward information shared by a model and the layers inserted into it."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None


class SpurModel(nn.Module):
    """`head(embed(x))`, with the batch's example indices available in `context.index`, and
    the backbone's `layout`. The declared modules are kept by identity, so `block_paths()` and
    `neuron_paths()` still find them after a method wraps a module (FairDropout)."""

    def __init__(self, embed: nn.Module, head: nn.Module, feature_dim: int, layout: Layout | None = None) -> None:
        super().__init__()
        self.embed = embed
        self.head = head
        self.feature_dim = feature_dim
        self.context = ForwardContext()
        self.layout = layout or Layout()
        self._blocks = tuple(embed.get_submodule(p) for p in self.layout.blocks)
        self._neurons = tuple(embed.get_submodule(p) for p in self.layout.neurons)

    def _paths(self, modules: tuple[nn.Module, ...]) -> list[str]:
        wanted = {id(m) for m in modules}
        return [path for path, m in self.named_modules() if id(m) in wanted]

    def block_paths(self) -> list[str]:
        """Paths in this model (`embed.blocks.3`) of the blocks the backbone declares, in module order."""
        return self._paths(self._blocks)

    def neuron_paths(self) -> list[str]:
        """Paths in this model of the modules whose units are the backbone's neurons, in module
        order; [] when it declares none (every conv and linear layer then counts)."""
        return self._paths(self._neurons)

    @contextlib.contextmanager
    def indices(self, index: torch.Tensor | None) -> Iterator[None]:
        """Make `index` visible to inserted layers for the duration of one forward."""
        previous, self.context.index = self.context.index, index
        try:
            yield
        finally:
            self.context.index = previous

    def features(self, x: Any, index: torch.Tensor | None = None) -> torch.Tensor:
        with self.indices(index):
            return self.embed(x)

    def forward(self, x: Any, index: torch.Tensor | None = None) -> torch.Tensor:
        with self.indices(index):
            return self.head(self.embed(x))


def linear_head(weight: Any, bias: Any) -> nn.Linear:
    """A head with the given weight (classes x features) and bias, e.g. from a fitted
    scikit-learn model with its feature standardization folded in."""
    weight = torch.as_tensor(weight, dtype=torch.float32)
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return head


def build_model(backbone: Backbone, n_classes: int) -> SpurModel:
    return SpurModel(backbone.module, nn.Linear(backbone.feature_dim, n_classes), backbone.feature_dim,
                     backbone.layout)
