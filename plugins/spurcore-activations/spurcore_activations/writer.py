"""The writer: one HDF5 file, appended batch by batch, readable after a crash.

The file is created on the first append, when the units of every module are known: every
dataset is created, then SWMR mode is switched on, and every append ends with `flush()` and
then an update (and flush) of `/committed`. A writer killed at any point leaves a file that
opens (with `ActivationFile`) and holds every committed row. Nothing written is kept in
memory: each append resizes the datasets and writes its rows straight through.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from spurcore_activations.hooks import ActivationError
from spurcore_activations.schema import INDEX_DTYPE, SCHEMA_VERSION, chunk_shape

Compression = Literal["lzf", "gzip"]


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, on any device
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _attr(value: Any) -> Any:
    """Scalars and arrays as they are; anything else (lists, tables) as JSON text."""
    if isinstance(value, (str, int, float, bool, np.generic, np.ndarray)):
        return value
    return json.dumps(value)


class ActivationWriter:
    """Appends rows of module activations with their index rows to `path`.

    `splits` fixes the split codes, `class_names` and `attr_names` the groups
    (`y * n_attrs + a`). `attrs` are extra file attributes (config_hash, source, reduce...).
    """

    def __init__(self, path: str | Path, *, splits: Sequence[str], class_names: Sequence[str] = (),
                 attr_names: Sequence[str] = (), attrs: Mapping[str, Any] | None = None,
                 compression: Compression = "lzf", rows_hint: int = 512) -> None:
        if compression not in ("lzf", "gzip"):
            raise ActivationError(f"unknown compression {compression!r}: use lzf or gzip")
        self.path = Path(path)
        self.splits = list(splits)
        self.class_names = list(class_names)
        self.attr_names = list(attr_names)
        self.attrs = dict(attrs or {})
        self.compression = compression
        self.rows_hint = rows_hint
        self.file: h5py.File | None = None
        self.modules: dict[str, int] = {}
        self.rows = 0
        self.closed = False

    # --- creation ------------------------------------------------------------------------------

    def _compression(self) -> dict[str, Any]:
        if self.compression == "gzip":
            return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        return {"compression": "lzf"}

    def create(self, modules: Mapping[str, int], module_attrs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Create the file and every dataset (`modules`: name -> units), then enter SWMR mode."""
        if self.file is not None:
            raise ActivationError(f"{self.path}: already created")
        if self.closed:
            raise ActivationError(f"{self.path}: writer is closed")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(self.path, "w", libver="latest")
        try:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["splits"] = json.dumps(self.splits)
            f.attrs["class_names"] = json.dumps(self.class_names)
            f.attrs["attr_names"] = json.dumps(self.attr_names)
            f.attrs["n_attrs"] = len(self.attr_names)
            f.attrs["group_names"] = json.dumps([f"{c}/{a}" for c in self.class_names for a in self.attr_names])
            for key, value in self.attrs.items():
                f.attrs[key] = _attr(value)
            f.create_dataset("index", shape=(0,), maxshape=(None,), dtype=INDEX_DTYPE,
                             chunks=chunk_shape(None, INDEX_DTYPE.itemsize, self.rows_hint),
                             **self._compression())
            f.create_dataset("committed", data=np.zeros(1, dtype=np.int64))
            group = f.create_group("modules")
            for name, n_units in modules.items():
                ds = group.create_dataset(name, shape=(0, n_units), maxshape=(None, n_units), dtype=np.float32,
                                          chunks=chunk_shape(n_units, 4, self.rows_hint), **self._compression())
                ds.attrs["units"] = n_units
                for key, value in (module_attrs or {}).get(name, {}).items():
                    ds.attrs[key] = _attr(value)
            f.swmr_mode = True
            f.flush()
        except BaseException:
            f.close()
            raise
        self.file = f
        self.modules = dict(modules)

    # --- appending -----------------------------------------------------------------------------

    def index_rows(self, *, index: Any, y: Any, a: Any, split: str, epoch: int, stage: int = 0) -> np.ndarray:
        """The index rows of one batch (groups computed from y and a; -1 without a)."""
        if split not in self.splits:
            raise ActivationError(f"split {split!r} is not one of this file's splits {self.splits}")
        index, y, a = _numpy(index), _numpy(y), _numpy(a)
        rows = np.empty(len(index), dtype=INDEX_DTYPE)
        rows["index"], rows["y"], rows["a"] = index, y, a
        n_attrs = max(len(self.attr_names), 1)
        rows["group"] = np.where(a >= 0, y.astype(np.int64) * n_attrs + a, -1)
        rows["split"], rows["stage"], rows["epoch"] = self.splits.index(split), stage, epoch
        return rows

    def append(self, activations: Mapping[str, Any], *, index: Any, y: Any, a: Any, split: str,
               epoch: int, stage: int = 0, module_attrs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Write one batch: `activations[name]` is `(batch, units)` for every module."""
        self.append_rows(activations, self.index_rows(index=index, y=y, a=a, split=split, epoch=epoch, stage=stage),
                         module_attrs=module_attrs)

    def append_rows(self, activations: Mapping[str, Any], rows: np.ndarray,
                    module_attrs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        arrays = {name: _numpy(value) for name, value in activations.items()}
        for name, array in arrays.items():
            if array.ndim != 2 or len(array) != len(rows):
                raise ActivationError(f"module {name!r}: expected ({len(rows)}, units) rows, got shape {array.shape}")
        if self.file is None:
            self.create({name: array.shape[1] for name, array in arrays.items()}, module_attrs)
        if set(arrays) != set(self.modules):
            raise ActivationError(f"{self.path}: this file records modules {sorted(self.modules)}, got {sorted(arrays)}")
        for name, array in arrays.items():
            if array.shape[1] != self.modules[name]:
                raise ActivationError(f"module {name!r}: {array.shape[1]} units, the file has {self.modules[name]}")
        if len(rows) == 0:
            return
        f = self.file
        start, stop = self.rows, self.rows + len(rows)
        for name, array in arrays.items():
            ds = f["modules"][name]
            ds.resize(stop, axis=0)
            ds[start:stop] = array.astype(np.float32, copy=False)
        ds = f["index"]
        ds.resize(stop, axis=0)
        ds[start:stop] = rows
        f.flush()
        committed = f["committed"]
        committed[0] = stop
        committed.flush()
        self.rows = stop

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.flush()
            finally:
                self.file.close()
                self.file = None
        self.closed = True

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_stale(path: str | Path) -> None:
    """Delete an earlier file at `path` (refusing anything that is not an HDF5 file)."""
    path = Path(path)
    if path.exists():
        if not h5py.is_hdf5(path):
            raise ActivationError(f"{path} exists and is not an HDF5 file; refusing to replace it")
        os.unlink(path)
