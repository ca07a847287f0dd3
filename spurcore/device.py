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


MAX_AUTO_WORKERS = 8
CUDA_PREFETCH = 4  # batches per worker: a GPU step is short, so keep more decoded batches ready


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


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

    def loader_options(self, num_workers: int | str) -> dict[str, Any]:
        """The `iterate_batches` settings for this machine: `num_workers = "auto"` is one worker
        per core this process may use (at most `MAX_AUTO_WORKERS`); on CUDA, pinned memory,
        `CUDA_PREFETCH` batches in flight per worker, and batch transforms (the image cache's
        conversion and normalization) on the GPU."""
        workers = min(available_cores(), MAX_AUTO_WORKERS) if num_workers == "auto" else int(num_workers)
        prefetch = (CUDA_PREFETCH if self.is_cuda else 2) if workers else None
        return {"num_workers": workers, "pin_memory": self.pin_memory, "prefetch_factor": prefetch,
                "device": self.device}

    def move(self, batch: Batch, channels_last: bool = False) -> Batch:
        """The batch on this device; non-blocking from pinned memory on CUDA; image batches
        in NHWC layout with `channels_last` (for a model converted with `[train] channels_last`)."""
        nb = self.is_cuda
        x = to_device(batch.x, self.device, nb)
        if channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(
            batch.index.to(self.device, non_blocking=nb),
            x,
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
