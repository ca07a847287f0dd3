"""Data-parallel training across the processes `torchrun --nproc-per-node N -m spurcore run ...`
starts: every process walks the same global batch order, trains on its own slice of each global
batch, and gradients are averaged so that each step equals one step on the whole global batch.

Why not `nn.parallel.DistributedDataParallel`: its reducer only sees gradients of calls to the
wrapped module's `forward`, and our hook contract lets methods call parts of the model
(`model.features`, `model.head`, a twin sharing the weights). So the runner keeps the plain
model and all-reduces the gradients itself after `backward`, in one flat buffer: the same
arithmetic, for any loss a method writes. Example indices stay those of the split, so
example-tied masks (FairDropout) are the same as in a single process.

Only rank 0 writes files (`spurcore.atomic` asks `writes_files()`); a barrier after each
checkpoint lets the other ranks read what rank 0 wrote. Batch-norm statistics stay per process.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist



def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: the process group's, or (before it is joined) torchrun's RANK."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """Started by torchrun (or any launcher setting WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def writes_files() -> bool:
    return rank() == 0


def setup(device: torch.device) -> None:
    """Join the process group torchrun describes: nccl on GPUs, gloo on the CPU."""
    if not launched() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    atexit.register(_teardown)


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(order: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int | list[int], list[float] | None]:
    """`order`, `batch_size` and no weights in a single process; else `local_batches`."""
    if world_size() == 1:
        return order, batch_size, None
    return local_batches(order, batch_size)


def local_batches(order: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, list[int], list[float]]:
    """This process's share of every global batch of `order`: the concatenated local order,
    the size of each local batch, and the loss weight of each (local size x world / global size,
    so that averaging the weighted gradients over processes gives the global batch's mean).

    A global batch smaller than the world (the last one) leaves some processes nothing; they
    take its first example with weight 0, so every process makes the same number of steps."""
    world, me = world_size(), rank()
    parts, sizes, weights = [], [], []
    for chunk in torch.split(order, batch_size):
        mine = torch.tensor_split(chunk, world)[me]
        weight = len(mine) * world / len(chunk)
        if len(mine) == 0:
            mine = chunk[:1]
        parts.append(mine)
        sizes.append(len(mine))
        weights.append(weight)
    return torch.cat(parts), sizes, weights


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average every gradient over the processes, in one all-reduce of a flat buffer."""
    grads = [p.grad for p in parameters if p.grad is not None]  # the same on every process
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def total(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over the processes (itself in a single process)."""
    if world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value
