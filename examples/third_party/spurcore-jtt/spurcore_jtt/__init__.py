"""Just Train Twice (Liu et al., ICML 2021), as a spurcore mitigation.

JTT needs no attribute labels to train: an identification model trained by ERM for a few
epochs gets the minority examples wrong; the final model is trained by ERM on a training set
in which every one of those errors appears 1 + `upweight` times.

In a pipeline the identification model is the stage before this one (an ERM stage of T
epochs, or the model of `[init]`); this stage collects its training-set errors when it starts,
then trains a fresh model (`restart = "initial"`, the paper's choice: the model the pipeline
started from) or keeps training the identification model (`restart = "continue"`).

Uses only spurcore's documented plugin API (docs/api.md).
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np
import torch

from spurcore import atomic, hookimpl
from spurcore.config import non_negative, positive
from spurcore.errors import SpurcoreError
from spurcore.evaluation import predict
from spurcore.runner import open_run
from spurcore.specs import MitigationSpec


class JTTError(SpurcoreError):
    """JTT cannot run as configured."""


@attrs.frozen(kw_only=True)
class JTTOptions:
    """`upweight` is the paper's lambda_up: each error appears 1 + upweight times per epoch.
    `identification_epoch` is the paper's T: 0 takes the errors of the model this stage starts
    from; N > 0 those of epoch N of the `[init]` run's stage (an ERM run stopped early makes
    errors a model trained to interpolation no longer makes)."""

    upweight: int = attrs.field(default=20, validator=positive)
    restart: Literal["initial", "continue"] = "initial"
    identification_epoch: int = attrs.field(default=0, validator=non_negative)


def upsampled_order(n: int, errors: np.ndarray, upweight: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch's example order: every example once, every error `upweight` more times, shuffled."""
    order = torch.cat([torch.arange(n), torch.as_tensor(errors, dtype=torch.long).repeat(upweight)])
    return order[torch.randperm(len(order), generator=generator)]


class JTT:
    def __init__(self, options: JTTOptions) -> None:
        self.options = options
        self.errors: np.ndarray | None = None

    @hookimpl
    def spurcore_stage_start(self, run, stage):
        if stage.index == 0 and run.config.init is None:
            raise JTTError(
                f"stages[0]: jtt needs an identification model: put an ERM stage before it "
                f"(e.g. [[stages]] method = \"erm\" with train.epochs = T), or start from a run with [init]"
            )
        train = run.data.splits["train"]
        logits = predict(self._identification_model(run, stage), train, run.device, stage.train.eval_batch_size)
        self.errors = np.flatnonzero(logits.argmax(1) != train.y)
        atomic.write_json(run.out.stage_dir(stage.key) / "jtt_errors.json", {
            "n_train": len(train), "n_errors": int(len(self.errors)), "upweight": self.options.upweight,
            "restart": self.options.restart, "identification_epoch": self.options.identification_epoch,
            "errors": self.errors.tolist(),
        })
        run.log(f"stage {stage.key}: JTT up-weights {len(self.errors)} of {len(train)} training examples "
                f"x{1 + self.options.upweight}")
        if self.options.restart == "initial":
            fresh = run.initial_model()
            if fresh.state_dict().keys() != stage.model.state_dict().keys():
                raise JTTError(
                    f"stage {stage.key}: an earlier stage changed the model's structure, so JTT cannot "
                    f"restart from the initial model; set restart = \"continue\""
                )
            stage.model = fresh

    def _identification_model(self, run, stage):
        epoch = self.options.identification_epoch
        if epoch == 0:
            return stage.model
        init = run.config.init
        if init is None:
            raise JTTError(f"stage {stage.key}: identification_epoch = {epoch} names an epoch of the [init] run, "
                           f"and this pipeline has no [init]")
        return open_run(init.run, run.plugins, device=str(run.device.device)).load_model(init.stage, epoch)

    @hookimpl
    def spurcore_train_sampler(self, run, generator):
        return upsampled_order(len(run.data.splits["train"]), self.errors, self.options.upweight, generator)


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(
        name="jtt", kind="train", options=JTTOptions, factory=JTT,
        search_space={"upweight": [5, 20, 50, 100], "identification_epoch": [0, 1, 2, 5]},
        fine_tunes=True,  # it starts from an identification model: comparisons start it from the baseline run
        description="Just Train Twice: up-weight the training errors of the previous stage's model, retrain",
    )]
