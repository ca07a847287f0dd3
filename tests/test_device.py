"""Device handling: resolving names, moving batches, and mixed precision off on the CPU."""

from __future__ import annotations

import pytest
import torch

from spurcore.data import Batch
from spurcore.device import Device, DeviceError, resolve, to_device
from spurcore.errors import SpurcoreError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_resolve_cpu():
    assert resolve("cpu") == torch.device("cpu")
    assert resolve("cpu").type == "cpu"


@no_cuda
def test_auto_is_cpu_without_cuda():
    assert resolve("auto") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_says_use_cpu(name):
    with pytest.raises(DeviceError) as info:
        resolve(name)
    assert str(info.value) == f"device {name!r} asked for, but CUDA is not available here: use --device cpu"
    assert isinstance(info.value, SpurcoreError)


@pytest.mark.parametrize("name", ["gpu", "tpu0", "", "cuda:x"])
def test_unknown_device_names_are_errors(name):
    with pytest.raises(DeviceError, match=rf"unknown device {name!r}: use auto, cpu, cuda or cuda:N"):
        resolve(name)


@pytest.mark.parametrize("name", ["meta", "mps", "xpu"])
def test_devices_torch_knows_but_spurcore_does_not_support(name):
    with pytest.raises(DeviceError, match=rf"unsupported device {name!r}: use auto, cpu, cuda or cuda:N"):
        resolve(name)


@no_cuda
def test_from_config_resolves_and_turns_amp_off_on_cpu():
    device = Device.from_config("auto", amp=True)
    assert device == Device(torch.device("cpu"), amp=False)
    assert not device.is_cuda and not device.pin_memory
    with pytest.raises(DeviceError, match="use --device cpu"):
        Device.from_config("cuda", amp=True)


def batch(x) -> Batch:
    return Batch(torch.tensor([3, 0, 7]), x, torch.tensor([1, 0, 1]), torch.tensor([-1, 1, 0]))


def test_move_keeps_values_for_tensor_inputs():
    x = torch.randn(3, 5)
    original = batch(x)
    moved = Device(torch.device("cpu")).move(original)
    assert isinstance(moved, Batch)
    for name in ("index", "x", "y", "a"):
        value = getattr(moved, name)
        assert value.device.type == "cpu"
        assert torch.equal(value, getattr(original, name))
        assert value.dtype == getattr(original, name).dtype


def test_move_keeps_values_for_dict_inputs():
    x = {"input_ids": torch.tensor([[1, 2], [3, 4], [5, 6]]), "attention_mask": torch.ones(3, 2, dtype=torch.long)}
    moved = Device(torch.device("cpu")).move(batch(x))
    assert set(moved.x) == {"input_ids", "attention_mask"}
    for key in x:
        assert torch.equal(moved.x[key], x[key])
    assert torch.equal(moved.index, torch.tensor([3, 0, 7]))


def test_move_sends_every_tensor_to_the_device():
    # the meta device needs no hardware and keeps shapes: it shows where `move` sends things
    meta = Device(torch.device("meta"))
    moved = meta.move(batch({"ids": torch.zeros(3, 2), "extra": [torch.zeros(3), torch.ones(3)]}))
    assert moved.index.is_meta and moved.y.is_meta and moved.a.is_meta
    assert moved.x["ids"].is_meta and moved.x["ids"].shape == (3, 2)
    assert isinstance(moved.x["extra"], list) and all(t.is_meta for t in moved.x["extra"])


def test_to_device_nested_and_non_tensor_values():
    value = {"a": (torch.zeros(2), [torch.ones(1)]), "text": "hello", "n": 3}
    out = to_device(value, torch.device("meta"))
    assert isinstance(out["a"], tuple) and out["a"][0].is_meta and out["a"][1][0].is_meta
    assert out["text"] == "hello" and out["n"] == 3


@no_cuda
def test_autocast_is_a_noop_on_cpu_even_when_amp_is_requested():
    device = Device.from_config("cpu", amp=True)
    assert device.amp is False
    a = torch.randn(4, 4)
    with device.autocast():
        assert not torch.is_autocast_enabled("cpu")
        out = a @ a
    assert out.dtype == torch.float32
    assert torch.equal(out, a @ a)


@no_cuda
def test_grad_scaler_is_disabled_on_cpu_even_when_amp_is_requested():
    device = Device.from_config("cpu", amp=True)
    scaler = device.grad_scaler()
    assert scaler.is_enabled() is False
    loss = torch.tensor(2.5, requires_grad=True)
    assert scaler.scale(loss) is loss  # no scaling applied
    # stepping through a disabled scaler is a plain optimizer step
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=0.5)
    (w * 2).sum().backward()
    scaler.step(opt)
    scaler.update()
    assert w.item() == pytest.approx(0.0)
