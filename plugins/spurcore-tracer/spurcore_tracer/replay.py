"""Replay: re-evaluate a model after a local change without recomputing what cannot change.

Tracing evaluates the same model hundreds of times, each time with a few neurons of one or
two layers changed. Everything the forward pass computes *before* the first changed layer
runs is the same every time. `Replay` records, once, the outputs of the model's top-level
blocks (the children of `model.embed`, in the order they are called, and `model.embed`
itself) for every batch of every split; an evaluation whose changes all lie after block B
makes B return its recorded output (and the blocks before B return nothing), so only the
rest of the network runs.

This is sound only for a chain of blocks each called once per forward, which is checked:
when recording, every block must be called exactly once per batch; and every replay point is
verified once against a full forward pass of the unchanged model (identical logits), and
dropped if it differs. A model with any other structure simply gets full forward passes.

Recorded outputs go to files in a temporary folder (read back one batch at a time, so they
take disk and the system's file cache, not the process's memory), up to `max_mb` megabytes.
Given the layers that evaluations will change, only the points those changes can replay from
are recorded (the block just before each layer's block), latest first. The budget is in
bytes while the outputs grow with the number of examples, so a larger split can keep fewer
points; `bytes_per_example` states what was kept.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spurcore.api import SplitData, iterate_batches, to_device


def _mb(tensor: torch.Tensor) -> float:
    return tensor.numel() * tensor.element_size() / 2**20


class RecordedOutputs:
    """One block's outputs over one split, batch after batch, in a file: appended while
    recording, read back one batch at a time (a plain read, not a memory map, so the bytes
    stay in the file cache and out of the process's resident memory)."""

    def __init__(self, path: Path) -> None:
        self.path, self.batches = path, []   # (byte offset, byte count, shape, dtype) per batch
        self.bytes = 0

    def append(self, output: torch.Tensor) -> None:
        raw = output.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()
        with open(self.path, "ab") as handle:
            handle.write(raw)
        self.batches.append((self.bytes, raw.nbytes, tuple(output.shape), output.dtype))
        self.bytes += raw.nbytes

    def __getitem__(self, i: int) -> torch.Tensor:
        offset, count, shape, dtype = self.batches[i]
        raw = np.fromfile(self.path, dtype=np.uint8, count=count, offset=offset)
        return torch.from_numpy(raw).view(dtype).reshape(shape)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.batches, self.bytes = [], 0


class Replay:
    """`layers`: the module paths evaluations will change (None: any), which decide the points
    worth recording; `cache_dir`: where the temporary folder of recorded outputs goes (the
    system's temporary directory by default); it is removed with this object."""

    def __init__(self, model: nn.Module, splits: Mapping[str, SplitData], batch_size: int = 512,
                 max_mb: float = 8192.0, layers: Iterable[str] | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.model, self.splits, self.batch_size = model, dict(splits), batch_size
        self.device = next(model.parameters()).device
        self.points: list[tuple[str, nn.Module]] = []   # (path, module) in call order, embed last
        self.cache: dict[str, dict[str, RecordedOutputs]] = {}
        self.base: dict[str, torch.Tensor] = {}
        self.full_passes = 0
        self._folder = tempfile.TemporaryDirectory(prefix="spurcore-replay-", dir=cache_dir)
        self._record(max_mb, None if layers is None else list(layers))

    @property
    def bytes_per_example(self) -> float:
        """Bytes the recorded outputs take per example (over every split)."""
        total = sum(len(d) for d in self.splits.values())
        stored = sum(r.bytes for by_split in self.cache.values() for r in by_split.values())
        return stored / max(total, 1)

    def close(self) -> None:
        """Remove the recorded outputs (later evaluations run full forward passes)."""
        self.cache, self.points = {}, []
        self._folder.cleanup()

    # --- recording ---------------------------------------------------------------------------

    def _candidates(self) -> list[tuple[str, nn.Module]]:
        embed = getattr(self.model, "embed", None)
        if not isinstance(embed, nn.Module) or not isinstance(getattr(self.model, "head", None), nn.Module):
            return []
        return [(f"embed.{name}", child) for name, child in embed.named_children()] + [("embed", embed)]

    def _batches(self, split: str) -> Iterator:
        data = self.splits[split]
        return iterate_batches(data, torch.arange(len(data)), self.batch_size)

    def _inputs(self, split: str, replayed: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(example indices, inputs on the device) of every batch; a replayed evaluation reads
        no input (the recorded outputs stand in for it), so it loads and decodes none."""
        if replayed:
            yield from ((index, None) for index in torch.split(torch.arange(len(self.splits[split])), self.batch_size))
            return
        for batch in self._batches(split):
            yield batch.index, to_device(batch.x, self.device)

    def _block_position(self, path: str) -> int | None:
        """Index in the call order of the block holding module `path` (len(order) for the
        head, which runs after every block); None for a module outside the chain."""
        position = None
        for i, block in enumerate(self.order):
            if block != "embed" and (path == block or path.startswith(block + ".")):
                position = i
        if position is None and (path == "head" or path.startswith("head.")):
            position = len(self.order)
        return position

    def _wanted(self, layers: list[str] | None) -> list[str]:
        """The points worth recording, latest first: for each changed layer, the block just
        before the layer's own (any block when the layers are not known)."""
        if layers is None:
            return list(reversed(self.order))
        positions = {self._block_position(path) for path in layers}
        return [self.order[i - 1] for i in sorted((p for p in positions if p is not None and p > 0), reverse=True)]

    @torch.no_grad()
    def _record(self, max_mb: float, layers: list[str] | None) -> None:
        self.order: list[str] = []
        candidates = self._candidates()
        if not candidates:
            self.base = self._evaluate(None)
            return
        calls: list[str] = []
        kept: set[str] | None = None   # decided from the first batch's sizes
        sizes: dict[str, float] = {}
        folder = Path(self._folder.name)
        outputs = {p: {s: RecordedOutputs(folder / f"{i}-{s}.bin") for s in self.splits}
                   for i, (p, _) in enumerate(candidates)}
        current = {"split": None}
        total = sum(len(d) for d in self.splits.values())

        def hook(path):
            def record(module, args, output):
                calls.append(path)
                if not isinstance(output, torch.Tensor):
                    return
                if kept is None:
                    sizes[path] = _mb(output)
                if kept is None or path in kept:
                    outputs[path][current["split"]].append(output)
            return record

        handles = [m.register_forward_hook(hook(p)) for p, m in candidates]
        self.model.eval()
        once = True
        try:
            for split in self.splits:
                current["split"] = split
                logits = []
                for batch in self._batches(split):
                    calls.clear()
                    logits.append(self.model(to_device(batch.x, self.device), index=batch.index.to(self.device)).float().cpu())
                    once = once and sorted(calls) == sorted(p for p, _ in candidates)
                    if kept is None:
                        self.order = list(calls)
                        kept, used = set(), 0.0
                        for path in self._wanted(layers):   # latest first, within budget
                            estimate = sizes.get(path, float("inf")) * total / len(batch)
                            if used + estimate <= max_mb:
                                kept.add(path)
                                used += estimate
                        for path in set(outputs) - kept:
                            for recorded in outputs[path].values():
                                recorded.discard()
                self.base[split] = torch.cat(logits)
        finally:
            for h in handles:
                h.remove()
        self.full_passes += 1
        if not once:
            self.close()
            return
        by_path = dict(candidates)
        self.cache = {p: outputs[p] for p in kept}
        self.points = [(p, by_path[p]) for p in self.order if p in self.cache]
        for path, _ in list(self.points):
            try:
                replayed = self._evaluate(path)
                same = all(torch.allclose(replayed[s], self.base[s], rtol=0, atol=1e-5) for s in self.splits)
            except Exception:  # a block reads an output that replay withholds: not a chain
                same = False
            if not same:
                for recorded in self.cache.pop(path).values():
                    recorded.discard()
        self.points = [(p, m) for p, m in self.points if p in self.cache]

    # --- evaluation -----------------------------------------------------------------------------

    def point_for(self, changed: Iterable[str]) -> str | None:
        """The latest replay point that runs before every changed module path."""
        changed = list(changed)
        if not changed or not self.points:
            return None
        positions = [self._block_position(path) for path in changed]
        if None in positions:
            return None
        first = min(positions)
        usable = [p for p, _ in self.points if self.order.index(p) < first]
        return usable[-1] if usable else None

    @contextlib.contextmanager
    def _replaying(self, path: str, split: str, step: dict) -> Iterator[None]:
        target = self.order.index(path)
        patched = []
        for i, block in enumerate(self.order):
            if i > target or block == "embed" and path != "embed":
                continue
            module = dict(self._candidates())[block]
            if block == path:
                module.forward = lambda *a, _c=self.cache[path][split], **k: _c[step["i"]].to(self.device)
            else:
                module.forward = lambda *a, **k: None
            patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward

    @torch.no_grad()
    def _evaluate(self, point: str | None) -> dict[str, torch.Tensor]:
        out = {}
        training = self.model.training
        self.model.eval()
        try:
            for split in self.splits:
                step = {"i": 0}
                logits = []
                context = self._replaying(point, split, step) if point else contextlib.nullcontext()
                with context:
                    for i, (index, x) in enumerate(self._inputs(split, replayed=point is not None)):
                        step["i"] = i
                        logits.append(self.model(x, index=index.to(self.device)).float().cpu())
                out[split] = torch.cat(logits)
        finally:
            self.model.train(training)
        if point is None:
            self.full_passes += 1
        return out

    def logits(self, changed: Iterable[str]) -> dict[str, torch.Tensor]:
        """Logits of every split with the model as it is now, knowing only the module paths
        in `changed` differ from when it was recorded."""
        return self._evaluate(self.point_for(changed))
