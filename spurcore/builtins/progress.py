"""The progress display: a bar per training stage showing epoch, loss and validation accuracy.
An observer like any other, one per run; it shows nothing in a quiet run (`spur run --quiet`,
a sweep's trials: `RunContext.quiet`)."""

from __future__ import annotations

import sys
from typing import Any

from spurcore.hookspecs import hookimpl
from spurcore.specs import ObserverSpec


class Progress:
    """The bar of the train stage that is running, if any."""

    def __init__(self) -> None:
        self.bar: Any = None

    @hookimpl
    def spurcore_stage_start(self, run, stage):
        from tqdm.auto import tqdm

        if stage.spec.kind == "train" and not run.quiet:
            self.bar = tqdm(total=stage.train.epochs, desc=f"stage {stage.key}", unit="epoch", file=sys.stderr,
                            initial=stage.first_epoch - 1, dynamic_ncols=True)

    @hookimpl
    def spurcore_epoch_end(self, epoch, metrics):
        if self.bar is None:
            return
        val = metrics.get("val", {})
        shown = {"loss": f"{metrics['train_loss']:.3f}"}
        for key, label in (("worst_group_acc", "val_wga"), ("worst_class_acc", "val_wca"), ("avg_acc", "val_avg")):
            if key in val:
                shown[label] = f"{val[key]:.3f}"
                break
        self.bar.n = epoch
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    @hookimpl
    def spurcore_stage_end(self):
        self.close()

    @hookimpl
    def spurcore_run_error(self):
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@hookimpl
def spurcore_register_observers():
    return [ObserverSpec(name="progress", factory=lambda settings: Progress(),
                         description="a progress bar per training stage (none in a quiet run)")]
