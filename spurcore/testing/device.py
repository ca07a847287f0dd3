"""A stand-in for a GPU tensor on a CPU-only machine, for tests of device safety: a method whose
hooks keep per-example data on the CPU must index it with `batch.index.cpu()` and move the result
to `batch.y.device` (docs/writing-plugins.md, section 4). Wrap a batch's tensors in `OnDevice`
(`tensor.as_subclass(OnDevice)`) and the mistakes a CUDA run would make fail here too."""

from __future__ import annotations

import torch


class OnDevice(torch.Tensor):
    """A tensor as one on a GPU behaves on a CPU-only machine: numpy cannot read it, nor can it
    index a tensor on the CPU, until `.cpu()` brings it back."""

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__ and not isinstance(args[0], cls) and isinstance(args[1], cls):
            raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor (cpu)")
        return super().__torch_function__(func, types, args, kwargs or {})
