"""The cost of FairDropout in a training step: the small CNN with FairDropout after a block
against the same model without it, same inputs, alternated round by round in one process.
Prints JSON {"ratio", "with_ms", "without_ms"} (medians of per-round step times).

    python benchmarks/fairdropout_overhead.py [--rounds 15] [--steps 20] [--placement block3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from spurcore.builtins.backbones import SmallCNNOptions
from spurcore.builtins.networks import build_small_cnn
from spurcore.model import build_model
from spurcore_fairdropout import FairDropoutOptions, FairDropoutStage


class Shape:
    input_shape = (3, 28, 28)


def make(placement: list[str] | None):
    torch.manual_seed(0)
    model = build_model(build_small_cnn(SmallCNNOptions(), Shape()), 2)
    if placement:
        FairDropoutStage(FairDropoutOptions(placement=placement)).spurcore_prepare_model(model)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def steps(model, optimizer, batches) -> float:
    model.train()
    start = time.perf_counter()
    for index, x, y in batches:
        loss = F.cross_entropy(model(x, index=index), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--placement", default="block3")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 5000, (64,), generator=g), torch.randn(64, 3, 28, 28, generator=g),
                torch.randint(0, 2, (64,), generator=g)) for _ in range(args.steps)]
    plain, with_fd = make(None), make(args.placement.split(","))
    steps(*plain, batches[:3]), steps(*with_fd, batches[:3])  # warm-up
    times = {"without": [], "with": []}
    for round_ in range(args.rounds):
        order = (("without", plain), ("with", with_fd)) if round_ % 2 == 0 else (("with", with_fd), ("without", plain))
        for name, (model, optimizer) in order:
            times[name].append(steps(model, optimizer, batches))
    with_ms, without_ms = (1000 * statistics.median(times[k]) for k in ("with", "without"))
    print(json.dumps({"ratio": round(with_ms / without_ms, 4), "with_ms": round(with_ms, 3),
                      "without_ms": round(without_ms, 3), "placement": args.placement,
                      "rounds": args.rounds, "steps": args.steps, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
