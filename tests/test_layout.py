"""What a backbone declares about its inside (`Layout`: blocks, neurons, token grid) and how a
dataset says its images were normalized (`Normalization`), as the model and methods read them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spurcore.builtins.backbones import SmallCNNOptions
from spurcore.builtins.networks import build_small_cnn
from spurcore.builtins.waterdigits import WaterdigitsOptions, build
from spurcore.data import Normalization
from spurcore.errors import DataError
from spurcore.model import Backbone, Layout, SpurModel, TokenGrid, build_model


def blocks() -> nn.Module:
    return nn.Sequential(*[nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)) for _ in range(3)])


def test_declared_modules_are_found_by_identity_after_a_method_wraps_them():
    backbone = Backbone(blocks(), 4, layout=Layout(blocks=["0", "1", "2"], neurons=["0.0", "2.0"]))
    model = build_model(backbone, 2)
    assert model.block_paths() == ["embed.0", "embed.1", "embed.2"]
    assert model.neuron_paths() == ["embed.0.0", "embed.2.0"]
    model.embed[2] = nn.Sequential(model.embed[2], nn.Dropout())  # FairDropout inserts a layer so
    model.embed = nn.Sequential(model.embed, nn.Identity())       # ... or after the whole embedding
    assert model.block_paths() == ["embed.0.0", "embed.0.1", "embed.0.2.0"]
    assert model.neuron_paths() == ["embed.0.0.0", "embed.0.2.0.0"]
    twin = copy.deepcopy(model)  # a copy's declarations point into the copy
    assert twin.neuron_paths() == model.neuron_paths() and twin._neurons[0] is twin.embed[0][0][0]


def test_a_layout_naming_a_module_the_backbone_lacks_is_refused():
    with pytest.raises(ValueError, match="Backbone.layout names '5', which is not a module of the backbone"):
        Backbone(blocks(), 4, layout=Layout(blocks=["0", "5"]))
    assert SpurModel(blocks(), nn.Linear(4, 2), 4).block_paths() == []  # nothing declared


def test_the_token_grid_lays_the_patch_tokens_out_row_by_row():
    grid = TokenGrid(prefix=2, rows=2, cols=3)
    tokens = torch.arange(2 * 8 * 5, dtype=torch.float32).view(2, 8, 5)  # 2 prefix + 6 patch tokens of 5 features
    fmap = grid.feature_map(tokens)
    assert fmap.shape == (2, 5, 2, 3)
    for r in range(2):
        for c in range(3):
            assert torch.equal(fmap[:, :, r, c], tokens[:, 2 + r * 3 + c])
    with pytest.raises(ValueError, match="7 tokens, expected 2 \\+ 2 x 3"):
        grid.feature_map(tokens[:, :7])


def test_small_cnn_declares_its_blocks_and_waterdigits_its_normalization():
    class Data:
        name, input_shape = "toy", (3, 28, 28)

    model = build_model(build_small_cnn(SmallCNNOptions(blocks=4, pool_last=True), Data()), 2)
    assert model.block_paths() == ["embed.block1", "embed.block2", "embed.block3", "embed.block4"]
    assert model.layout.tokens is None and model.neuron_paths() == []
    data = build(WaterdigitsOptions(scale=0.02, cache=False))
    assert data.normalization == Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = data.splits["train"].inputs
    assert x.min() >= -1 and x.max() <= 1  # (pixel - 0.5) / 0.5 with pixels in [0, 1]


def test_a_normalization_needs_a_positive_std_per_channel():
    assert Normalization([0, 0.5], [1, 2]).mean == (0.0, 0.5)
    with pytest.raises(DataError, match="one mean and one positive std per channel"):
        Normalization((0.5, 0.5), (0.5,))
    with pytest.raises(DataError, match="one mean and one positive std per channel"):
        Normalization((0.5,), (0.0,))
