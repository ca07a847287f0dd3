"""The baselines that retrain only the last layer of a trained model.

CRT and ReWeightCRT (Kang et al., ICLR 2020, "Decoupling representation and classifier"; in
SubpopBench's form) are train stages that continue the model before them (`fine_tunes`): the
features are computed without gradients and with the backbone in eval mode (batch-norm
statistics frozen too), the head is re-initialised (to zero, unless `reinit_head = false`) and
trained on the training split, CRT on balanced draws, ReWeightCRT with inverse-frequency weights.

AFR (Qiu, Potapczynski, Izmailov & Wilson, ICML 2023, "Simple and Fast Group Robustness by
Automatic Feature Reweighting") is a post-hoc stage: it refits the head on frozen features, each
example weighted by exp(-gamma * p), p the incoming model's probability of the example's class,
the weights balanced across classes, with a pull ||W - W_0||^2 towards the incoming head. It
reads no attribute label."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore.api import atomic, linear_head
from spurcore_baselines.options import AFROptions, CRTOptions
from spurcore_baselines.sampling import Resample
from spurcore_baselines.weighted import Reweight


def frozen_logits(model, batch) -> torch.Tensor:
    """The head's logits on features computed without gradients: only the head learns."""
    with torch.no_grad():
        features = model.features(batch.x, index=batch.index)
    return model.head(features)


class LastLayer:
    """What CRT and ReWeightCRT share: the zeroed head, the frozen backbone, the head's logits."""

    options: CRTOptions

    @hookimpl
    def spurcore_stage_start(self, run, stage):
        self.read_labels(run.data)
        self.ready(run)
        if self.options.reinit_head:
            with torch.no_grad():
                for parameter in stage.model.head.parameters():
                    parameter.zero_()

    def ready(self, run) -> None:
        """What the method prepares once the labels are read."""

    @hookimpl
    def spurcore_epoch_start(self, stage):
        stage.model.embed.eval()  # after the kernel's model.train(): batch-norm statistics stay

    def logits(self, model, batch) -> torch.Tensor:
        return frozen_logits(model, batch)


class CRT(LastLayer, Resample):
    def __init__(self, options: CRTOptions, by: str) -> None:
        super().__init__(options, by)

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        return F.cross_entropy(self.logits(model, batch).float(), batch.y)


class ReweightCRT(LastLayer, Reweight):
    def __init__(self, options: CRTOptions) -> None:
        super().__init__(options, by="group")

    def ready(self, run) -> None:
        self.weights = torch.as_tensor(self.label_weights(), dtype=torch.float32)
        self.example_labels = torch.from_numpy(self.labels)


def afr_weights(p_true: np.ndarray, y: np.ndarray, n_classes: int, gamma: float) -> np.ndarray:
    """Each example's weight exp(-gamma * p_true), normalised within its class so that every
    class present has the same total; the weights sum to 1."""
    raw = np.exp(-gamma * np.asarray(p_true, dtype=np.float64))
    totals = np.bincount(y, weights=raw, minlength=n_classes)
    present = np.count_nonzero(np.bincount(y, minlength=n_classes))
    return raw / (totals[y] * present)


def fit_head(features: np.ndarray, y: np.ndarray, weights: np.ndarray, weight0: np.ndarray, bias0: np.ndarray,
             reg: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The head minimising sum_i w_i CE_i + reg * (|W - W_0|^2 + |b - b_0|^2), from (W_0, b_0) by
    full-batch L-BFGS in float64 (deterministic)."""
    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    w = torch.from_numpy(np.asarray(weights, dtype=np.float64))
    start_w = torch.from_numpy(np.asarray(weight0, dtype=np.float64))
    start_b = torch.from_numpy(np.asarray(bias0, dtype=np.float64))
    weight, bias = start_w.clone().requires_grad_(), start_b.clone().requires_grad_()
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (w * F.cross_entropy(x @ weight.T + bias, target, reduction="none")).sum()
        loss = loss + reg * ((weight - start_w).pow(2).sum() + (bias - start_b).pow(2).sum())
        loss.backward()
        return loss

    optimizer.step(objective)
    return weight.detach().numpy(), bias.detach().numpy()


class AFR:
    def __init__(self, options: AFROptions) -> None:
        self.options = options

    @hookimpl
    def spurcore_posthoc_head(self, run, stage, model, embeddings):
        split = embeddings[self.options.fit_split]
        weight0 = model.head.weight.detach().cpu().double().numpy()
        bias0 = model.head.bias.detach().cpu().double().numpy()
        logits = split.features.astype(np.float64) @ weight0.T + bias0
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        p_true = probabilities[np.arange(len(split.y)), split.y]
        weights = afr_weights(p_true, split.y, run.data.n_classes, self.options.gamma)
        weight, bias = fit_head(split.features, split.y, weights, weight0, bias0, self.options.reg, self.options.steps)
        atomic.write_json(run.out.stage_dir(stage.key) / "afr.json", {
            "fit_split": self.options.fit_split, "examples": int(len(split.y)),
            "gamma": self.options.gamma, "reg": self.options.reg,
            "effective_examples": float(1.0 / np.sum(weights**2)),
            "weight_of_misclassified": float(weights[logits.argmax(1) != split.y].sum()),
        })
        return linear_head(weight, bias)
