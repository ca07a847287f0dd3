"""Forward hooks by module name, their removal, and the reduction of conv maps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from spurcore_activations import ActivationError, ModuleRecorder, reduce_output, resolve_modules


def cnn():
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    ).eval()


def no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), c=st.integers(1, 6), h=st.integers(1, 7), w=st.integers(1, 7))
def test_conv_reduction(n, c, h, w):
    x = torch.randn(n, c, h, w)
    assert torch.equal(reduce_output(x, "mean"), x.mean(dim=(2, 3)))
    assert torch.equal(reduce_output(x, "max"), x.amax(dim=(2, 3)))
    assert torch.equal(reduce_output(x, "none"), x.reshape(n, -1))
    assert torch.equal(reduce_output(x[:, :, 0, 0], "mean"), x[:, :, 0, 0])  # 2-d kept as it is


def test_reduction_copies_so_later_inplace_ops_do_not_change_it():
    x = torch.randn(4, 3)
    kept = reduce_output(x, "mean")
    flat = reduce_output(torch.randn(2, 3, 2, 2), "none")
    x.relu_()
    assert not torch.equal(kept, x) and kept.min() < 0
    assert flat.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="unknown reduction"):
        reduce_output(x, "median")


def test_recorder_takes_what_each_module_output_before_inplace_relu():
    model = cnn()
    x = torch.randn(5, 3, 8, 8)
    with ModuleRecorder(model, ["0.1", "0", "4"], reduce="mean") as rec:
        with torch.no_grad():
            logits = model(x)
        rows = rec.take()
    with torch.no_grad():
        bn = model[0][1](model[0][0](x))
    assert torch.allclose(rows["0.1"], bn.mean(dim=(2, 3)))  # before ReLU(inplace) rewrote it
    assert rows["0.1"].min() < 0
    assert torch.allclose(rows["0"], bn.relu().mean(dim=(2, 3)))
    assert torch.equal(rows["4"], logits)
    assert rec.shapes == {"0.1": (4, 8, 8), "0": (4, 8, 8), "4": (2,)}
    assert no_hooks(model)


def test_hooks_are_removed_after_an_error():
    model = cnn()
    with pytest.raises(RuntimeError, match="boom"):
        with ModuleRecorder(model, ["0", "1.0"]):
            assert not no_hooks(model)
            raise RuntimeError("boom")
    assert no_hooks(model)
    with pytest.raises(RuntimeError):
        with ModuleRecorder(model, ["0"]):
            model(torch.randn(2, 5, 8, 8))  # wrong channels: the forward fails inside a hooked model
    assert no_hooks(model)
    rec = ModuleRecorder(model, ["0"]).attach()
    rec.attach()  # idempotent
    assert len(model[0]._forward_hooks) == 1
    rec.detach()
    assert no_hooks(model)


def test_unknown_module_names_list_close_names():
    model = nn.Sequential()
    model.embed = nn.Sequential()
    model.embed.block2 = nn.Linear(2, 2)
    model.embed.block3 = nn.Linear(2, 2)
    with pytest.raises(ActivationError, match=r"'embed.blok2' not found.*embed\.block2"):
        resolve_modules(model, ["embed.blok2"])
    with pytest.raises(ActivationError, match="not found"):
        ModuleRecorder(model, ["embed", "nothing.like.it"])
    assert no_hooks(model)


def test_a_module_that_ran_twice_or_not_at_all_is_an_error():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    other = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    with ModuleRecorder(model, ["0"]) as rec:
        model(torch.randn(2, 3))
        with pytest.raises(ActivationError, match="more than once"):
            rec.take()
    with ModuleRecorder(other, ["1"]) as rec:
        with pytest.raises(ActivationError, match="did not run"):
            rec.take()
