"""`memorizer`: a `planted-mlp` trained on the whole training split, full batch, with Adam,
until it fits every training example, the planted ones included (checked every 10 steps):
the model the checks and the benchmark trace. Training through `spur run` gives the same kind
of model (`examples/planted.toml`); this is the seconds-long version property tests can afford."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from spurcore.api import SpuriousData, build_model
from spurcore_planted.network import build_planted_mlp
from spurcore_planted.options import PlantedMLPOptions


def memorizer(data: SpuriousData, seed: int = 0, *, hidden: int = 64, layers: int = 2, lr: float = 1e-2,
              max_steps: int = 2000, positions: Sequence[int] | None = None) -> torch.nn.Module:
    """The fitted model, in eval mode; `positions`: train on these training examples only (a
    subset, as Feldman & Zhang's models are). Raises RuntimeError if `max_steps` do not fit them."""
    torch.manual_seed(seed)
    model = build_model(build_planted_mlp(PlantedMLPOptions(hidden=hidden, layers=layers), data), data.n_classes)
    train = data.splits["train"]
    rows = torch.as_tensor(np.arange(len(train)) if positions is None else np.asarray(positions), dtype=torch.long)
    x, y = train.inputs[rows], torch.as_tensor(np.array(train.y))[rows]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(1, max_steps + 1):
        model.train()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                if bool((model(x).argmax(1) == y).all()):
                    return model
    raise RuntimeError(f"planted-mlp did not fit all {len(rows)} training examples in {max_steps} steps")
