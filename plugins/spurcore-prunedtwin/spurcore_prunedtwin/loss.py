"""The pruned-twin loss: NT-Xent between the target's and the twin's representations (or,
as a control, their alignment alone), plus lambda x a supervised term (squared error between
softmax-or-logits and one-hot labels, or CE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(r: torch.Tensor, r_p: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2N representations [r; r_p], L2-normalised.

    For example i, the positive of r_i is r_p_i (the same image in the other branch) and vice
    versa; the negatives are the other 2N - 2 representations of the batch. The loss is the
    mean over all 2N anchors of -log(exp(s_ip / tau) / sum_{k != i} exp(s_ik / tau)), s the
    cosine similarity. Invariant to the scale of either input.
    """
    n = r.shape[0]
    z = F.normalize(torch.cat([r, r_p]).float(), dim=1)
    sim = z @ z.t() / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positive)


def nt_xent_stopgrad(r: torch.Tensor, r_p: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """The released code's symmetric form: each branch is pulled towards the other one held
    fixed, 0.5 * (NT-Xent(r, sg(r_p)) + NT-Xent(sg(r), r_p))."""
    return 0.5 * (nt_xent(r, r_p.detach(), tau) + nt_xent(r.detach(), r_p, tau))


def alignment(r: torch.Tensor, r_p: torch.Tensor) -> torch.Tensor:
    """The positives alone: mean over pairs of 1 - cos(r_i, r_p_i), no negatives (a control for
    what NT-Xent's negatives do)."""
    return (1 - F.cosine_similarity(r.float(), r_p.float(), dim=1)).mean()


def supervised(logits: torch.Tensor, y: torch.Tensor, target: str = "softmax", kind: str = "mse") -> torch.Tensor:
    """||softmax(logits) - y||^2 (or of the logits), the squared error summed over classes and
    averaged over the batch (the paper's MSE); or cross-entropy when `kind` is "ce"."""
    logits = logits.float()
    if kind == "ce":
        return F.cross_entropy(logits, y)
    out = logits.softmax(1) if target == "softmax" else logits
    return (out - F.one_hot(y, logits.shape[1]).float()).pow(2).sum(1).mean()
