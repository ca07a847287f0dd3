"""The backbone `planted-mlp`: the image flattened, then `layers` blocks of Linear -> BatchNorm
-> ReLU of `hidden` units. A memorizer by design: it has no convolution to share across places,
so a planted example is fitted by units of its own. Its neurons (for the tracer) are the hidden
units of each Linear layer, each followed by its BatchNorm, and the head's."""

from __future__ import annotations

from torch import nn

from spurcore.api import Backbone, Layout, SpuriousData
from spurcore_planted.options import PlantedMLPOptions


def build_planted_mlp(options: PlantedMLPOptions, data: SpuriousData) -> Backbone:
    size = 1
    for n in data.input_shape:
        size *= int(n)
    modules: list[nn.Module] = [nn.Flatten()]
    blocks = []
    width = size
    for i in range(options.layers):
        block = nn.Sequential(nn.Linear(width, options.hidden), nn.BatchNorm1d(options.hidden), nn.ReLU())
        modules.append(block)
        blocks.append(str(i + 1))
        width = options.hidden
    return Backbone(nn.Sequential(*modules), options.hidden, layout=Layout(blocks=blocks))
