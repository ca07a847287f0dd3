"""The model every stage works on: an embedding network followed by a linear head.

Splitting the model at the penultimate features is the contract that post-hoc methods
(DFR, NeuronTune) rely on: they refit `head` on frozen `embed(x)`. The batch's example
indices travel with the forward call in `model.context`, so layers that need them
(example-tied dropout) read them from the model they belong to, not from global state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import nn


@attrs.frozen
class Backbone:
    """What a backbone plugin builds: a module mapping inputs to `feature_dim` features."""

    module: nn.Module
    feature_dim: int


class ForwardContext:
    """Per-forward information shared by a model and the layers inserted into it."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None


class SpurModel(nn.Module):
    """`head(embed(x))`, with the batch's example indices available in `context.index`."""

    def __init__(self, embed: nn.Module, head: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.embed = embed
        self.head = head
        self.feature_dim = feature_dim
        self.context = ForwardContext()

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
    return SpurModel(backbone.module, nn.Linear(backbone.feature_dim, n_classes), backbone.feature_dim)
