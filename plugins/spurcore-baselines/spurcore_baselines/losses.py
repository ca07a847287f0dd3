"""Per-example losses and logit adjustments of the imbalanced-learning baselines, as plain
functions of logits and labels (the stages in `weighted`, `mixing` and `lastlayer` call them)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-example focal loss (Lin et al., ICCV 2017): the cross-entropy times (1 - p_y)^gamma,
    differentiated through both factors; gamma = 0 is the cross-entropy."""
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    return (1.0 - torch.exp(-ce)) ** gamma * ce


def ldam_margins(class_counts: np.ndarray, max_margin: float) -> torch.Tensor:
    """LDAM's margin of each class (Cao et al., NeurIPS 2019): proportional to n_j^(-1/4), the
    rarest class's margin being `max_margin`; a class without examples gets none."""
    counts = np.asarray(class_counts, dtype=np.float64)
    margins = np.where(counts > 0, np.maximum(counts, 1.0) ** -0.25, 0.0)
    return torch.as_tensor(margins * (max_margin / margins.max()), dtype=torch.float32)


def subtract_margin(logits: torch.Tensor, y: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """The logits with each example's own class's margin taken off its logit."""
    return logits - F.one_hot(y, logits.shape[1]).to(logits.dtype) * margins[y.cpu()].to(logits)[:, None]


def log_priors(class_counts: np.ndarray) -> torch.Tensor:
    """log(n_j / n) of each class: what the balanced softmax (Ren et al., NeurIPS 2020) adds to
    the logits in training (a class without examples is counted once, keeping it finite)."""
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    return torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32)


def cvar(losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """The conditional value at risk at level `alpha`: the mean of the worst `alpha` fraction of
    `losses` (the worst whole ones, plus the next one's share of the remaining fraction), the
    maximum of <p, losses> over the distributions p with p_i <= 1 / (alpha m) (Levy et al.,
    NeurIPS 2020). alpha = 1 is the mean."""
    m = losses.numel()
    size = alpha * m
    whole = min(int(np.floor(size + 1e-9)), m)
    worst = torch.sort(losses.flatten(), descending=True).values
    total = worst[:whole].sum()
    if whole < m and size - whole > 1e-9:
        total = total + (size - whole) * worst[whole]
    return total / size


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy against soft targets (rows of class probabilities)."""
    return -(targets.to(torch.float32) * F.log_softmax(logits.float(), dim=1)).sum(1)
