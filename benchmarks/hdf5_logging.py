"""The cost of activation logging to HDF5 during an evaluation forward pass.

The small CNN (random weights, eval mode, no gradients) forwards every split of waterdigits
in batches of 512, once plainly and once recording `embed.block2`, `embed.block3` and `embed`
(mean-reduced per channel) through `spurcore_activations` (forward hooks, a crash-safe SWMR
HDF5 writer that flushes after every batch), the very path the pipeline observer and
`spur activations` use. After one warm-up of each, the two alternate in one process (R
rounds, ABBA order) so machine noise hits both alike. Prints JSON {"ratio", "mb_per_s", ...}:
ratio = time with logging / time without; mb_per_s = MB (10^6 bytes, float32, before
compression) of activations written per second of the logging passes.

    python benchmarks/hdf5_logging.py [--rounds 6] [--batch-size 512] [--compression lzf]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from spurcore.builtins.backbones import SmallCNNOptions
from spurcore.builtins.networks import build_small_cnn
from spurcore.builtins.waterdigits import WaterdigitsOptions, build
from spurcore.device import Device
from spurcore.model import build_model
from spurcore_activations import ActivationFile, ActivationWriter, ModuleRecorder
from spurcore_activations.extract import forward_split

MODULES = ["embed.block2", "embed.block3", "embed"]


def one_pass(model, data, device, batch_size, out: Path | None, compression: str) -> float:
    start = time.perf_counter()
    if out is None:
        for split, split_data in data.splits.items():
            forward_split(model, split_data, device, batch_size, split=split)
    else:
        writer = ActivationWriter(out, splits=list(data.splits), class_names=data.class_names,
                                  attr_names=data.attr_names, compression=compression, rows_hint=batch_size,
                                  attrs={"config_hash": "benchmark", "source": "benchmark", "reduce": "mean"})
        with writer, ModuleRecorder(model, MODULES, "mean") as recorder:
            for split, split_data in data.splits.items():
                forward_split(model, split_data, device, batch_size, split=split, recorder=recorder, writer=writer)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--compression", choices=["lzf", "gzip"], default="lzf")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = build(WaterdigitsOptions())
    model = build_model(build_small_cnn(SmallCNNOptions(), data), data.n_classes).eval()
    device = Device(torch.device("cpu"))
    plain, logged = 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "acts.h5"
        one_pass(model, data, device, args.batch_size, None, args.compression)  # warm-up
        one_pass(model, data, device, args.batch_size, out, args.compression)
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for with_logging in order:
                if with_logging:
                    out.unlink(missing_ok=True)
                t = one_pass(model, data, device, args.batch_size, out if with_logging else None, args.compression)
                if with_logging:
                    logged += t
                else:
                    plain += t
        written = ActivationFile(out)
        mb_per_round = sum(len(written) * written.units[m] * 4 for m in written.modules) / 1e6
        file_mb = out.stat().st_size / 1e6
        rows = len(written)
    print(json.dumps({
        "ratio": round(logged / plain, 4),
        "mb_per_s": round(mb_per_round * args.rounds / logged, 2),
        "with_s": round(logged, 3), "without_s": round(plain, 3), "rounds": args.rounds,
        "rows_per_round": rows, "mb_per_round": round(mb_per_round, 2), "file_mb": round(file_mb, 2),
        "modules": MODULES, "batch_size": args.batch_size, "compression": args.compression, "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
