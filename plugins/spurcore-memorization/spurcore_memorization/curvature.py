"""The input-loss curvature of Garg, Ravikumar & Roy (2023, "Memorization Through the Lens of
Curvature of Loss Function Around Samples"): for an example (x, y) and the loss L of the model,
the trace of the square of the Hessian H of L with respect to the input x, by Hutchinson's
estimator `Tr(H^2) = E ||H v||^2` over Rademacher directions v (entries +-1), with `H v` from a
finite difference of input gradients, `(grad L(x + h v) - grad L(x)) / h`.

The paper's code reports the squared difference without the division by h^2 (h^2 Tr(H^2)); we
divide, so that the number estimates Tr(H^2) itself and does not depend on h beyond the
finite-difference error. The ranking of examples is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def input_curvature(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, h: float, directions: int,
                    generator: torch.Generator, index: torch.Tensor | None = None) -> torch.Tensor:
    """One estimate per example of the batch `x` (float inputs), as float32 on x's device;
    `generator` (on the CPU) draws the directions, so the estimate repeats from its seed. The
    model is run as it is (eval mode is the caller's), gradients on, in x's dtype."""
    if not torch.is_floating_point(x):
        raise TypeError(f"input curvature needs floating-point inputs, got {x.dtype}")
    x = x.detach()

    def gradient(inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.clone().requires_grad_(True)
        logits = model(inputs) if index is None else model(inputs, index=index)
        loss = F.cross_entropy(logits.to(inputs.dtype), y, reduction="sum")  # sum: each example its own gradient
        return torch.autograd.grad(loss, inputs)[0]

    with torch.enable_grad():
        at_x = gradient(x)
        total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for _ in range(directions):
            v = torch.randint(0, 2, x.shape, generator=generator).to(device=x.device, dtype=x.dtype) * 2 - 1
            total += (gradient(x + h * v) - at_x).flatten(1).pow(2).sum(1)
    return (total / (directions * h * h)).float()
