"""Groups inferred from the incoming model instead of read from attribute labels.

EIIL (Creager, Jacobsen & Zemel, ICML 2021, "Environment Inference for Invariant Learning")
splits the training set into the two environments across which the incoming (reference)
model's fixed logits are least invariant: it maximises the IRMv1 penalty of a soft assignment
q_i in [0, 1] of each example to the first environment (1 - q_i to the second), then assigns
each example where q_i > 1/2. The minority examples a model built on a shortcut gets wrong end
up apart from the majority it gets right. Group DRO then trains the model the reference model
was trained from over the inferred environments, within each class by default. No attribute
label is read."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore.api import SpurcoreError, atomic, predict, starting_model
from spurcore_baselines.options import EIILOptions
from spurcore_groupdro import GroupDRO


class EIILError(SpurcoreError):
    """EIIL cannot run as configured."""


def scale_gradients(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each example's d/ds CE(s * logits_i, y_i) at s = 1, the IRMv1 gradient with respect to a
    scale on the logits: the logits' mean under the softmax minus the true class's logit."""
    logits = logits.double()
    return (F.softmax(logits, 1) * logits).sum(1) - logits.gather(1, y[:, None]).squeeze(1)


def environment_penalties(gradients: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The IRMv1 penalty of each of the two soft environments (q_i and 1 - q_i of example i): the
    square of its risk's gradient with respect to the scale, the risk being the weighted losses
    summed over the environment and divided by the number of examples, as the authors' code has it."""
    return torch.stack([(q * gradients).mean(), ((1 - q) * gradients).mean()]).pow(2)


def infer_environments(logits: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                       generator: torch.Generator) -> np.ndarray:
    """Each example's environment (0 or 1): Adam on the logits of q, drawn from a standard normal
    by `generator`, maximising the mean of the two environments' penalties; then q > 1/2 is
    environment 0."""
    gradients = scale_gradients(logits, y)
    assignment = torch.randn(len(gradients), generator=generator, dtype=torch.float64).requires_grad_()
    optimizer = torch.optim.Adam([assignment], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        (-environment_penalties(gradients, assignment.sigmoid()).mean()).backward()
        optimizer.step()
    return np.where(assignment.detach().sigmoid().numpy() > 0.5, 0, 1)


def inferred_groups(environments: np.ndarray, y: np.ndarray, n_classes: int, by: str) -> tuple[np.ndarray, int]:
    """Group DRO's group of each example and how many groups there are: class x environment
    (`y * 2 + environment`, the layout of the attribute groups) or the environment alone."""
    if by == "environment-class":
        return np.asarray(y, dtype=np.int64) * 2 + environments, 2 * n_classes
    return np.asarray(environments, dtype=np.int64), 2


class EIIL(GroupDRO):
    """Infers the environments from the incoming model when the stage starts, then trains, from
    the weights that model was trained from, Group DRO over the inferred groups."""

    options: EIILOptions

    @hookimpl
    def spurcore_stage_start(self, run, stage):
        if stage.index == 0 and run.config.init is None:
            raise EIILError(
                f"stages[0]: eiil infers its environments from a trained model: put an ERM stage before it "
                f"or start from a run with [init]")
        train = run.data.splits["train"]
        logits = torch.from_numpy(predict(stage.model, train, run.device, stage.train.eval_batch_size))
        y = torch.tensor(train.y, dtype=torch.long)
        environments = infer_environments(logits, y, self.options.steps, self.options.lr,
                                          torch.Generator().manual_seed(run.config.seed))
        groups, n_groups = inferred_groups(environments, train.y, run.data.n_classes, self.options.groups)
        self.use_groups(groups, n_groups)
        sizes = np.bincount(environments, minlength=2).tolist()
        errors = logits.argmax(1).numpy() != train.y
        penalties = environment_penalties(scale_gradients(logits, y), torch.from_numpy(1.0 - environments))
        atomic.write_json(run.out.stage_dir(stage.key) / "eiil.json", {
            "n_train": len(train), "steps": self.options.steps, "lr": self.options.lr, "groups": self.options.groups,
            "environment_sizes": sizes,
            "errors_per_environment": np.bincount(environments[errors], minlength=2).tolist(),
            "group_sizes": np.bincount(groups, minlength=n_groups).tolist(),
            "penalties": penalties.tolist(),
            "environments": environments.tolist(),
        })
        run.log(f"stage {stage.key}: EIIL split the {len(train)} training examples into environments of "
                f"{sizes[0]} and {sizes[1]}")
        stage.model = starting_model(run, stage)
