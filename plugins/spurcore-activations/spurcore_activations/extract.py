"""An evaluation pass over a finished run's model, recording chosen modules to HDF5.

    extract_run("runs/erm", ["embed.block2", "embed"], splits=["train", "test"])

The model is `open_run(RUN_DIR, plugins).load_model(stage, epoch)` (default: the last stage, at the
epoch its selector chose), in eval mode without gradients, fed as the runner's evaluation
feeds it (every example in index order, `model(x, index=...)`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spurcore.api import Device, SplitData, atomic, iterate_batches

from spurcore_activations.hooks import ActivationError, ModuleRecorder
from spurcore_activations.reduce import Reduce
from spurcore_activations.schema import config_hash
from spurcore_activations.writer import ActivationWriter


@torch.no_grad()
def forward_split(model: torch.nn.Module, data: SplitData, device: Device, batch_size: int, *, split: str,
                  recorder: ModuleRecorder | None = None, writer: ActivationWriter | None = None,
                  epoch: int = 0, stage: int = 0, progress: Any = None) -> int:
    """Forward every example of `data` in index order; with a recorder, append each batch's
    rows to `writer`. Returns the number of examples."""
    model.eval()
    seen = 0
    for batch in iterate_batches(data, torch.arange(len(data)), batch_size, pin_memory=device.pin_memory):
        batch = device.move(batch)
        with device.autocast():
            model(batch.x, index=batch.index)
        if recorder is not None and writer is not None:
            attrs = {n: {"example_shape": list(s), "reduce": recorder.reduce} for n, s in recorder.shapes.items()}
            writer.append(recorder.take(), index=batch.index, y=batch.y, a=batch.a, split=split, epoch=epoch,
                          stage=stage, module_attrs=attrs)
        seen += len(batch)
        if progress is not None:
            progress.update(len(batch))
    return seen


def extract_run(run_dir: str | Path, modules: Sequence[str], *, splits: Sequence[str] = (), out: str | Path | None = None,
                reduce: Reduce = "mean", device: str = "cpu", stage: int = -1, epoch: int | None = None,
                batch_size: int | None = None, compression: str = "lzf", plugins: Any = None,
                progress: bool = True) -> Path:
    """Record `modules` of a finished run's model on `splits` (default: every split) into
    `out` (default `RUN_DIR/activations/<stage>-epoch_<NNN>.h5`), written to a temporary
    file and renamed when complete. Returns the path."""
    from tqdm.auto import tqdm

    from spurcore.api import PluginManager, open_run

    plugins = plugins if plugins is not None else PluginManager()
    atomic.check_writable(Path(out).parent if out is not None else Path(run_dir) / "activations")  # before the work
    run = open_run(run_dir, plugins, device=device)
    data = run.data
    planned = run.stage(stage)
    epoch = run.resolve_epoch(planned.index, "selected" if epoch is None else epoch)
    splits = list(splits) or list(data.splits)
    for split in splits:
        if split not in data.splits:
            raise ActivationError(f"--split {split}: dataset {data.name!r} has splits {', '.join(data.splits)}")
    model = run.load_model(planned.index, epoch)
    batch_size = batch_size or planned.train.eval_batch_size
    options = {"run": str(Path(run_dir).resolve()), "modules": list(modules), "splits": splits, "reduce": reduce,
               "stage": planned.key, "epoch": epoch, "run_config": config_hash(run.out.config.read_text())}
    out = Path(out) if out is not None else Path(run_dir) / "activations" / f"{planned.key}-epoch_{epoch:03d}.h5"
    with atomic.writing(out):  # a full disk or a read-only folder: one sentence naming the file
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temporary_path(out)
        writer = ActivationWriter(tmp, splits=list(data.splits), class_names=data.class_names,
                                  attr_names=data.attr_names, compression=compression, rows_hint=batch_size,
                                  attrs={"config_hash": config_hash(options), "source": "finished-run",
                                         "reduce": reduce, "settings": options})
        total = sum(len(data.splits[s]) for s in splits)
        bar = tqdm(total=total, desc=f"activations {planned.key} epoch {epoch}", unit="ex", disable=not progress,
                   dynamic_ncols=True)
        try:
            with writer, ModuleRecorder(model, modules, reduce) as recorder:
                for split in splits:
                    bar.set_postfix_str(split, refresh=False)
                    forward_split(model, data.splits[split], run.device, batch_size, split=split,
                                  recorder=recorder, writer=writer, epoch=epoch, stage=planned.index, progress=bar)
            os.replace(tmp, out)
        finally:
            bar.close()
            tmp.unlink(missing_ok=True)
    return out
