"""The reader: numpy arrays by module, split, group, epoch and stage.

    f = ActivationFile("runs/erm/activations.h5")
    f.modules, f.splits, f.epochs              # what the file holds
    x = f.read("embed.block2", split="test", group=3, epoch=10)   # (rows, units) float32
    rows = f.index(split="test", group=3, epoch=10)               # the matching index rows

Rows come in the order they were written. Only committed rows are read, so a file whose
writer is still running, or was killed, reads consistently (it is opened in SWMR read mode).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spurcore_activations.hooks import ActivationError
from spurcore_activations.schema import INDEX_FIELDS, SCHEMA_VERSION


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError:
        return h5py.File(path, "r")


class ActivationFile:
    """A file written by `ActivationWriter`; every read opens and closes the file, so the
    object can be kept while a writer appends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ActivationError(f"{self.path}: no such activation file")
        with _open(self.path) as f:
            version = int(f.attrs.get("schema_version", -1))
            if version != SCHEMA_VERSION:
                raise ActivationError(f"{self.path}: schema version {version}, this reader reads {SCHEMA_VERSION}")
            self.attrs: dict[str, Any] = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            self.modules: list[str] = list(f["modules"].keys())
            self.units: dict[str, int] = {m: int(f["modules"][m].shape[1]) for m in self.modules}
        self.split_names: list[str] = json.loads(self.attrs["splits"])
        self.class_names: list[str] = json.loads(self.attrs["class_names"])
        self.attr_names: list[str] = json.loads(self.attrs["attr_names"])
        self.group_names: list[str] = json.loads(self.attrs["group_names"])

    @property
    def schema_version(self) -> int:
        return int(self.attrs["schema_version"])

    @property
    def config_hash(self) -> str:
        return str(self.attrs.get("config_hash", ""))

    def __len__(self) -> int:
        with _open(self.path) as f:
            return self._rows(f)

    def _rows(self, f: h5py.File) -> int:
        lengths = [int(f["committed"][0]), f["index"].shape[0]]
        lengths += [ds.shape[0] for ds in f["modules"].values()]
        return min(lengths)

    def _raw_index(self, f: h5py.File) -> np.ndarray:
        return f["index"][: self._rows(f)]

    @property
    def splits(self) -> list[str]:
        """Splits that have rows, in file order."""
        with _open(self.path) as f:
            codes = np.unique(self._raw_index(f)["split"])
        return [self.split_names[c] for c in codes]

    @property
    def epochs(self) -> list[int]:
        with _open(self.path) as f:
            return sorted(int(e) for e in np.unique(self._raw_index(f)["epoch"]))

    @property
    def stages(self) -> list[int]:
        with _open(self.path) as f:
            return sorted(int(s) for s in np.unique(self._raw_index(f)["stage"]))

    def _mask(self, raw: np.ndarray, split: str | None, group: int | str | None, epoch: int | None,
              stage: int | None) -> np.ndarray:
        mask = np.ones(len(raw), dtype=bool)
        if split is not None:
            if split not in self.split_names:
                raise ActivationError(f"{self.path}: no split {split!r}; it has {self.split_names}")
            mask &= raw["split"] == self.split_names.index(split)
        if group is not None:
            if isinstance(group, str):
                if group not in self.group_names:
                    raise ActivationError(f"{self.path}: no group {group!r}; groups are {self.group_names}")
                group = self.group_names.index(group)
            mask &= raw["group"] == group
        if epoch is not None:
            mask &= raw["epoch"] == epoch
        if stage is not None:
            mask &= raw["stage"] == stage
        return mask

    def index(self, split: str | None = None, group: int | str | None = None, epoch: int | None = None,
              stage: int | None = None) -> np.ndarray:
        """The index rows matching every given filter: a structured array with fields index,
        y, a, group, split (the name), stage, epoch."""
        with _open(self.path) as f:
            raw = self._raw_index(f)
        raw = raw[self._mask(raw, split, group, epoch, stage)]
        width = max((len(s) for s in self.split_names), default=1)
        dtype = [(name, raw.dtype[name] if name != "split" else f"U{width}") for name in INDEX_FIELDS]
        out = np.empty(len(raw), dtype=dtype)
        for name in INDEX_FIELDS:
            out[name] = raw[name] if name != "split" else np.asarray(self.split_names, dtype=f"U{width}")[raw["split"]]
        return out

    def read(self, module: str, split: str | None = None, group: int | str | None = None,
             epoch: int | None = None, stage: int | None = None) -> np.ndarray:
        """Activations of `module` (rows x units, float32) for the rows `index(...)` returns."""
        if module not in self.modules:
            raise ActivationError(f"{self.path}: no module {module!r}; it has {self.modules}")
        with _open(self.path) as f:
            raw = self._raw_index(f)
            mask = self._mask(raw, split, group, epoch, stage)
            rows = np.flatnonzero(mask)
            ds = f["modules"][module]
            if len(rows) == 0:
                return np.empty((0, ds.shape[1]), dtype=np.float32)
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            if hi - lo == len(rows):  # one contiguous block: the common case
                return ds[lo:hi]
            return ds[lo:hi][mask[lo:hi]]
