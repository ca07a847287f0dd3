"""Device handling in one place: which device, mixed precision, pinned memory, transfers.

Nothing else in spurcore or its plugins calls `.cuda()`; they ask the run's `Device`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import attrs
import torch

from spurcore import distributed
from spurcore.data import Batch
from spurcore.errors import SpurcoreError


class DeviceError(SpurcoreError):
    pass


def resolve(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU; `cuda[:N]` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but CUDA is not available here: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


@attrs.frozen
class Device:
    """A resolved device and whether mixed precision is on (CUDA only)."""

    device: torch.device
    amp: bool = False

    @classmethod
    def from_config(cls, name: str, amp: bool) -> Device:
        device = resolve(name)
        if device.type == "cuda" and device.index is None and distributed.launched():
            device = torch.device("cuda", distributed.local_rank())  # torchrun: one GPU per process
        return cls(device, amp=amp and device.type == "cuda")

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def pin_memory(self) -> bool:
        return self.is_cuda

    def move(self, batch: Batch) -> Batch:
        """The batch on this device; non-blocking from pinned memory on CUDA."""
        nb = self.is_cuda
        return Batch(
            batch.index.to(self.device, non_blocking=nb),
            to_device(batch.x, self.device, nb),
            batch.y.to(self.device, non_blocking=nb),
            batch.a.to(self.device, non_blocking=nb),
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.float16)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for float16 training; a no-op when AMP is off."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp)


def set_deterministic(on: bool) -> None:
    """Use torch's deterministic algorithms where it has them (and no cuDNN autotuning), so one
    machine gives the same numbers run after run; an op without a deterministic version warns
    instead of failing. On CUDA this can cost speed: pipelines may set `deterministic = false`.
    cuBLAS needs its workspace fixed before CUDA starts, hence the environment variable."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.benchmark = not on


def to_device(x: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move a tensor, or a dict / tuple of tensors (tokenized text), to `device`."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, dict):
        return {k: to_device(v, device, non_blocking) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, non_blocking) for v in x)
    return x
