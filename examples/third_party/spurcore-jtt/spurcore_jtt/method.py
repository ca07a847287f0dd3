"""JTT's stage object: the identification model's training errors, then an epoch order in
which each of them appears 1 + `upweight` times (the method is described in the package
docstring)."""

from __future__ import annotations

import numpy as np
import torch

from spurcore import hookimpl
from spurcore.api import SpurcoreError, atomic, open_run, predict, starting_model
from spurcore_jtt import JTTOptions


class JTTError(SpurcoreError):
    """JTT cannot run as configured."""


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
            fresh = self._initialization(run, stage)
            if fresh.state_dict().keys() != stage.model.state_dict().keys():
                raise JTTError(
                    f"stage {stage.key}: an earlier stage changed the model's structure, so JTT cannot "
                    f"restart from the initial model; set restart = \"continue\""
                )
            stage.model = fresh

    def _initialization(self, run, stage):
        """The weights the identification model was trained from: the paper retrains from the
        same initialization. When the identification model is an epoch of the `[init]` run
        (`identification_epoch` > 0), that run's starting weights count, not its trained model,
        which is what `run.initial_model()` gives in such a pipeline."""
        if self.options.identification_epoch > 0:
            return open_run(run.config.init.run, run.plugins, device=str(run.device.device)).initial_model()
        return starting_model(run, stage)

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
