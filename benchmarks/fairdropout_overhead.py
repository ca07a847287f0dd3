"""The cost of FairDropout in a training step: the small CNN with FairDropout after a block
against the same model without it, same inputs, the two interleaved step by step in one
process (`rounds.interleave`). Prints JSON: "ratio", the median over rounds of with / without
time, with its quartiles, interquartile range and every round's ratio (`rounds.spread`), the
median step times, and the load average. 31 rounds of 40 steps; step by step, a round's
ratio varies by about 0.015 on a quiet machine, where alternating whole rounds varied by 0.08,
so two runs agree within 0.02.

    python benchmarks/fairdropout_overhead.py [--rounds 31] [--steps 40] [--placement block3]
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
from rounds import interleave, load, spread


class Shape:
    input_shape = (3, 28, 28)


def make(placement: list[str] | None):
    torch.manual_seed(0)
    model = build_model(build_small_cnn(SmallCNNOptions(), Shape()), 2)
    if placement:
        FairDropoutStage(FairDropoutOptions(placement=placement)).spurcore_prepare_model(model)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def step(model, optimizer, batch) -> float:
    """Seconds of one training step on `batch`."""
    index, x, y = batch
    start = time.perf_counter()
    loss = F.cross_entropy(model(x, index=index), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--placement", default="block3")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 5000, (64,), generator=g), torch.randn(64, 3, 28, 28, generator=g),
                torch.randint(0, 2, (64,), generator=g)) for _ in range(args.steps)]
    plain, with_fd = make(None), make(args.placement.split(","))
    for model in (plain, with_fd):
        model[0].train()
        for batch in batches[:3]:  # warm-up
            step(*model, batch)
    with_s, without_s = interleave(args.rounds, args.steps, lambda k: step(*with_fd, batches[k]),
                                   lambda k: step(*plain, batches[k]))
    print(json.dumps({**spread([a / b for a, b in zip(with_s, without_s)]),
                      "with_ms": round(1000 * statistics.median(with_s) / args.steps, 3),
                      "without_ms": round(1000 * statistics.median(without_s) / args.steps, 3), "placement": args.placement,
                      "rounds": args.rounds, "steps": args.steps, "torch_threads": torch.get_num_threads(), **load()}))

if __name__ == "__main__":
    main()
