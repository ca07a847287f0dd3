"""Digit pretraining: the offline stand-in for ImageNet pretraining of `small-cnn`.

The seeds study memorization in backbones pretrained on a large generic task and then
fine-tuned to high training accuracy ("the high baseline accuracy achieved by pre-trained
models is critical for studying memorization"). Here the generic task is telling apart all ten
of scikit-learn's digits, rendered as waterdigits renders them (rotation, zoom, shift, ink,
noise) over backgrounds whose colour and texture are drawn independently of the digit, so the
task holds no spurious cue. Only the source digits of the dataset's *training* split are used
(`SpuriousData.provenance`), never one that a val or test image is made from; a dataset that is
not made of these digits gets all of them.

The weights are built once, deterministically (fixed seed, fixed thread count, the global RNGs
untouched), on the CPU, and cached under `$SPURCORE_CACHE/pretrained` with a fingerprint of
everything they depend on (this recipe, the renderer's and this module's source, the
architecture, the source digits, whether the CPU kernels are the portable ones of
`spurcore.portable`). A missing, stale or unreadable file is rebuilt; nothing downloads. `spur prepare PIPELINE` builds it ahead of time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spurcore import atomic, portable
from spurcore.builtins import waterdigits_gen as gen
from spurcore.builtins.waterdigits import SOURCE_DIGITS, cache_dir, to_inputs
from spurcore.errors import SpurcoreError

RECIPE = {
    "copies": 20,  # renderings of each source digit (898 training digits: 17,960 images)
    "size": 28,  # pixels; the network pools globally, so it fine-tunes at any size
    "colour_range": [0.1, 0.6],  # background RGB drawn uniformly per channel, any texture
    "epochs": 6,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "seed": 0,
    "threads": 2,  # fixed, so the weights are the same on every machine of a kind
}
N_DIGITS = 10


class PretrainingError(SpurcoreError):
    pass


def train_sources(data: Any) -> np.ndarray:
    """The source digits the dataset's training split draws on (all of them if it is not made of
    scikit-learn's digits)."""
    pools = data.provenance.get(SOURCE_DIGITS) if data is not None else None
    if pools is None:
        images, _ = gen.source_digits()
        return np.arange(len(images))
    return np.asarray(sorted(pools["train"]), dtype=np.int64)


def render(sources: np.ndarray, copies: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The ten-digit task: `copies` renderings of each source digit over random backgrounds, in
    a random order; uint8 images (n, 3, size, size) and digits 0-9."""
    images, digits = gen.source_digits()
    src = rng.permutation(np.repeat(sources, copies))
    low, high = RECIPE["colour_range"]

    def background(n: int) -> np.ndarray:
        colour = rng.uniform(low, high, (n, 3))
        return gen.textured(colour, rng.random(n) < 0.5, size, rng)

    return gen.compose(images[src], size, rng, background), digits[src]


def fingerprint(net: nn.Module, sources: np.ndarray) -> str:
    """What the pretrained weights depend on."""
    digest = hashlib.sha256(json.dumps({**RECIPE, "portable_kernels": portable.pinned()}, sort_keys=True).encode())
    digest.update(Path(gen.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    for name, tensor in net.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    digest.update(np.asarray(sources, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def cache_path(net: nn.Module, data: Any) -> Path:
    return cache_dir() / "pretrained" / f"small-cnn-digits-{fingerprint(net, train_sources(data))}.pt"


def pretrained_state(net: nn.Module, options: Any, data: Any) -> dict[str, torch.Tensor]:
    """The pretrained weights of `net`'s architecture: read from the cache, or built and cached."""
    channels = data.input_shape[0] if data is not None and data.input_shape else 3
    if channels != 3:
        raise PretrainingError(f"small-cnn: pretrained = \"digits\" needs 3-channel images; dataset "
                               f"{data.name!r} has {channels}. Set backbone.options.pretrained = \"\"")
    path = cache_path(net, data)
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache file is rebuilt below
            pass
    state, record = pretrain(net, train_sources(data))
    with atomic.atomic_open(path, "wb") as handle:
        torch.save(state, handle)
    atomic.write_json(path.with_suffix(".json"), record)
    return state


def pretrain(net: nn.Module, sources: np.ndarray, *, progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train a copy of `net` (freshly initialised) with a ten-way head on the digit task; return
    its state dict and a record (held-out accuracy per epoch, images, seconds). Leaves every
    global RNG and the thread count as it found them."""
    from tqdm.auto import tqdm

    r = RECIPE
    started = time.perf_counter()
    threads = torch.get_num_threads()
    rng = np.random.default_rng(r["seed"])
    x, y = render(sources, r["copies"], r["size"], rng)
    held_x, held_y = render(sources, 2, r["size"], np.random.default_rng(r["seed"] + 1))
    accuracies = []
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(r["threads"])
        try:
            torch.manual_seed(r["seed"])
            body = copy.deepcopy(net).cpu()
            for module in body.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            with torch.no_grad():
                features = body(to_inputs(x[:2])).shape[1]
            model = nn.Sequential(body, nn.Linear(features, N_DIGITS))
            optimizer = torch.optim.Adam(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
            generator = torch.Generator().manual_seed(r["seed"])
            steps = r["epochs"] * -(-len(y) // r["batch_size"])
            bar = tqdm(total=steps, desc="pretraining small-cnn on digits (once)", unit="step",
                       file=sys.stderr, disable=None if progress else True, dynamic_ncols=True)  # None: not on a pipe
            targets = torch.from_numpy(y)
            for _ in range(r["epochs"]):
                model.train()
                for idx in torch.split(torch.randperm(len(y), generator=generator), r["batch_size"]):
                    loss = F.cross_entropy(model(to_inputs(x[idx.numpy()])), targets[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    bar.update()
                accuracies.append(_accuracy(model, to_inputs(held_x), held_y))
                bar.set_postfix({"held-out acc": f"{accuracies[-1]:.3f}"}, refresh=True)
            bar.close()
        finally:
            torch.set_num_threads(threads)
    record = {"recipe": r, "source_digits": len(sources), "images": len(y),
              "held_out_accuracy": accuracies, "seconds": round(time.perf_counter() - started, 1)}
    return {k: v.detach().clone() for k, v in body.state_dict().items()}, record


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    model.eval()
    pred = torch.cat([model(chunk).argmax(1) for chunk in torch.split(x, 1024)])
    return float((pred.numpy() == y).mean())
