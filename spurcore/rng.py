"""The random state of a run: seeding, each epoch's data-order seed, and every generator's
state saved in a checkpoint and put back, so a resumed run repeats the uninterrupted one."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """The data-order seed of one epoch: fixed by (seed, stage, epoch), so resume matches."""
    return (seed * 1_000_003 + stage * 10_007 + epoch) % 2**63


def get_rng_state() -> dict[str, Any]:
    """Every RNG the training step may draw from, as tensors (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def kept_rng_state() -> Iterator[None]:
    """Run a block that may draw from the global RNGs, then put every RNG back exactly as it
    was (numpy's cached Gaussian included)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
