"""A zeroed neuron is silent: after its BatchNorm, in eval and train mode, and downstream."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spurcore.api import SpurModel
from spurcore_tracer import NeuronIndex, intervene


def conv_bn_model(seed=0):
    torch.manual_seed(seed)
    embed = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    for bn in (embed[1], embed[4]):  # statistics and affine terms far from the defaults
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.5, 3)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(0.5, 2)  # a positive beta: a unit zeroed before BN would pass ReLU
    return SpurModel(embed, nn.Linear(4, 2), 4)


def test_the_index_finds_the_batchnorm_after_each_conv():
    index = NeuronIndex.of(conv_bn_model())
    assert [(layer.path, layer.norm_path) for layer in index.layers] == [
        ("embed.0", "embed.1"), ("embed.3", "embed.4"), ("head", None)]


@pytest.mark.parametrize("training", [False, True])
def test_a_zeroed_channel_outputs_zero_after_batchnorm_and_changes_nothing_else(training):
    model = conv_bn_model().train(training)
    index = NeuronIndex.of(model)
    x = torch.randn(8, 3, 5, 5)
    seen = {}
    model.embed[2].register_forward_hook(lambda m, i, o: seen.__setitem__("relu", o.detach().clone()))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(x)
        before = seen["relu"]
        model.load_state_dict(state)
        with intervene(index, [2], "zero"):  # unit 2 of embed.0
            model(x)
    after = seen["relu"]
    assert torch.all(after[:, 2] == 0) and not torch.all(before[:, 2] == 0)
    others = [c for c in range(6) if c != 2]
    assert torch.allclose(after[:, others], before[:, others])
    # undone exactly: parameters and buffers as they were (a train-mode pass moves the running stats)
    if not training:
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_zeroed_channel_contributes_nothing_downstream():
    """Zeroing unit c gives the same logits as removing the channel by hand after its ReLU."""
    model = conv_bn_model().eval()
    index = NeuronIndex.of(model)
    x = torch.randn(8, 3, 5, 5)
    with torch.no_grad():
        handle = model.embed[2].register_forward_hook(lambda m, i, o: o * (torch.arange(6) != 4).view(1, 6, 1, 1))
        removed = model(x)
        handle.remove()
        with intervene(index, [4], "zero"):
            zeroed = model(x)
        plain = model(x)
    assert torch.allclose(zeroed, removed, atol=1e-6)
    assert not torch.allclose(plain, removed, atol=1e-3)
