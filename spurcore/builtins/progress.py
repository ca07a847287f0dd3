"""The progress display: a bar per training stage showing epoch, loss and validation accuracy.
It only listens to events; `spur run --quiet` (or `-p no:progress`) leaves it out."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from spurcore.hookspecs import hookimpl

_bar = None


@hookimpl
def spurcore_stage_start(run, stage):
    global _bar
    if stage.spec.kind == "train":
        _bar = tqdm(total=stage.train.epochs, desc=f"stage {stage.key}", unit="epoch", file=sys.stderr,
                    initial=0, dynamic_ncols=True)


@hookimpl
def spurcore_epoch_end(stage, epoch, metrics):
    if _bar is None:
        return
    val = metrics.get("val", {})
    shown = {"loss": f"{metrics['train_loss']:.3f}"}
    for key, label in (("worst_group_acc", "val_wga"), ("worst_class_acc", "val_wca"), ("avg_acc", "val_avg")):
        if key in val:
            shown[label] = f"{val[key]:.3f}"
            break
    _bar.n = epoch
    _bar.set_postfix(shown, refresh=False)
    _bar.refresh()


@hookimpl
def spurcore_stage_end():
    _close()


@hookimpl
def spurcore_run_error():
    _close()


def _close() -> None:
    global _bar
    if _bar is not None:
        _bar.close()
        _bar = None
