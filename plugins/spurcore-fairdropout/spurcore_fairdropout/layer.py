"""The FairDropout layer and its example-tied masks.

Units (channels of a conv map, features of a vector) split into generalizing units, the first
`round(p_gen * C)`, always on, and memorizing units, the rest. In training each example keeps
each memorizing unit with probability `p_mem`, drawn by a counter-based hash of (seed, example
index, unit): the same example gets the same mask in every epoch, in any batch, on any device,
with any number of data-loader workers, and no global RNG is touched. Masks for a batch are
computed at once on the batch's device; on the CPU, where each of the hash's small operations
costs more than its arithmetic, each layer keeps the multipliers of every index seen so far in
one table (up to `TABLE_BUDGET` entries), so that a step costs a lookup and a multiply.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("drop", "drop-rescale", "scale", "keep")
_M32 = 0xFFFFFFFF
TABLE_BUDGET = 2**24  # multipliers (examples x units) a layer keeps; beyond, masks are hashed per batch


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding values below
    2**32; the multipliers are below 2**31, so no product overflows int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _M32
    return x ^ (x >> 16)


def keep_mask(index: torch.Tensor, units: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Boolean (len(index), len(units)): whether each example keeps each unit, with
    probability `p`, as a pure function of (seed, index, unit)."""
    rows = _mix32(_mix32((index.to(torch.int64) & _M32) ^ (seed & _M32)) ^ 0x9E3779B9)
    cols = _mix32((units.to(torch.int64) * 0x61C88647) & _M32)
    threshold = int(round(p * 2**32))
    return _mix32(rows[:, None] ^ cols[None, :]) < threshold


class FairDropout(nn.Module):
    """Example-tied dropout over dimension 1 of (N, C, ...) inputs; with `tokens`, over the last
    dimension of (N, T, C) token sequences, one mask per example for all its tokens (a
    transformer's block outputs; other inputs are treated as (N, C, ...)).

    It reads the batch's example indices from `context.index` (a `spurcore.model.ForwardContext`).
    At inference (`eval()`), `mode` says what happens to the memorizing units: "drop" zeroes
    them (the default), "drop-rescale" zeroes them and multiplies the generalizing units by
    (p_gen + p_mem) / p_gen (the authors' code; the paper leaves rescaling open), "scale"
    multiplies them by p_mem, "keep" leaves every unit on (for the paper's kept-vs-dropped check).
    """

    def __init__(self, context, p_gen: float, p_mem: float, seed: int, mode: str = "drop",
                 tokens: bool = False) -> None:
        super().__init__()
        if not (0 <= p_gen <= 1 and 0 <= p_mem <= 1):
            raise ValueError(f"p_gen and p_mem must lie in [0, 1], got {p_gen}, {p_mem}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "drop-rescale" and p_gen == 0:
            raise ValueError("mode 'drop-rescale' needs p_gen > 0")
        self.context = context
        self.p_gen, self.p_mem, self.seed, self.mode, self.tokens = p_gen, p_mem, seed, mode, tokens
        self._table: torch.Tensor | None = None  # row i: example i's training multipliers (derived, not saved)

    def extra_repr(self) -> str:
        return (f"p_gen={self.p_gen}, p_mem={self.p_mem}, seed={self.seed}, mode={self.mode!r}"
                + (", tokens=True" if self.tokens else ""))

    def n_generalizing(self, units: int) -> int:
        return int(round(self.p_gen * units))

    def unit_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The per-example, per-unit multiplier: (N, C) in training, (C,) at inference."""
        units = x.shape[1]
        n_gen = self.n_generalizing(units)
        if self.training:
            index = self.context.index
            if index is None:
                raise RuntimeError(
                    "FairDropout in training needs the batch's example indices: call the model as "
                    "model(x, index=batch.index)"
                )
            index = index.to(x.device)
            table = self._training_table(index, x)
            if table is not None:
                return table[index]
            return self._training_scale(index, units, x.device, x.dtype)
        scale = torch.ones(units, device=x.device, dtype=x.dtype)
        if self.mode in ("drop", "drop-rescale"):
            scale[n_gen:] = 0
            if self.mode == "drop-rescale" and n_gen:
                scale[:n_gen] = (self.p_gen + self.p_mem) / self.p_gen
        elif self.mode == "scale":
            scale[n_gen:] = self.p_mem
        return scale

    def _training_scale(self, index: torch.Tensor, units: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        n_gen = self.n_generalizing(units)
        kept = keep_mask(index, torch.arange(n_gen, units, device=device), self.p_mem, self.seed)
        return torch.cat([torch.ones(len(index), n_gen, device=device, dtype=dtype), kept.to(dtype)], dim=1)

    def _training_table(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """On the CPU, the table of multipliers covering every index of the batch (grown by
        doubling), or None past `TABLE_BUDGET`. Not on a GPU: sizing the table would wait for
        the batch's largest index at every step, and there the hashing costs little."""
        if x.device.type != "cpu" or len(index) == 0:
            return None
        units, needed = x.shape[1], int(index.max()) + 1
        table = self._table
        if table is not None and table.shape[1] == units and table.dtype == x.dtype and len(table) >= needed:
            return table
        rows = max(needed, 2 * len(table) if table is not None else 1024)
        rows = rows if rows * units <= TABLE_BUDGET else needed
        if rows * units > TABLE_BUDGET:
            return None
        self._table = self._training_scale(torch.arange(rows), units, x.device, x.dtype)
        return self._table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens and x.dim() == 3:
            scale = self.unit_scale(x.transpose(1, 2))
            return x * (scale[:, None, :] if self.training else scale)
        scale = self.unit_scale(x)
        shape = (*scale.shape, *([1] * (x.dim() - 2)))
        if not self.training:
            shape = (1, *shape)
        return x * scale.reshape(shape)
