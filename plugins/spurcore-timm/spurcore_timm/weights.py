"""Where a timm model's weights come from: the local Hugging Face cache (`pretrained = true`),
the torch hub cache for weights timm names by URL only, or a file named in the pipeline.
Nothing here reaches the network: files are looked up, never fetched, so a model whose
weights are not on this machine is an error saying where we looked and what to put there."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from spurcore.api import SpurcoreError

HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's Hugging Face repositories hold


class TimmBackboneError(SpurcoreError):
    pass


def _hub_checkpoint(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def cached_weights(cfg: dict[str, Any]) -> Path | None:
    """The local file of the pretrained weights `cfg` (a timm pretrained config) names, or None:
    its Hugging Face repository in the local cache, else its URL's file in the torch hub cache.
    Only the file system is read."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo = cfg.get("hf_hub_id")
    if repo:
        for filename in dict.fromkeys(filter(None, (cfg.get("hf_hub_filename"), *HF_FILES))):
            found = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE)
            if isinstance(found, str):
                return Path(found)
    url = cfg.get("url")
    if url and not url.endswith(".npz") and _hub_checkpoint(url).is_file():
        return _hub_checkpoint(url)
    return None


def missing_weights(name: str, cfg: dict[str, Any]) -> TimmBackboneError:
    """The error for pretrained weights that are not on this machine: where they would be."""
    from huggingface_hub import constants

    repo = cfg.get("hf_hub_id")
    where = []
    if repo:
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        where.append(f"{' or '.join(HF_FILES)} of {repo} in the Hugging Face cache ({folder}); on a machine that "
                     f"is online, `hf download {repo} {HF_FILES[0]}` puts it in that machine's cache, and copying "
                     f"the folder {folder.name} into {constants.HF_HUB_CACHE} here makes it found")
    url = cfg.get("url")
    if url and not url.endswith(".npz"):
        where.append(f"{_hub_checkpoint(url)} (the torch hub cache)")
    if not where:  # no weights at all, or only in a format timm loads by its own code (.npz)
        return TimmBackboneError(f"timm names no state-dict weights for {name!r}; set backbone.options.weights = "
                                 f"\"/path/{name}.safetensors\" or backbone.options.pretrained = false")
    return TimmBackboneError(
        f"no pretrained weights for timm model {name!r} on this machine, and spurcore never downloads. Looked for "
        f"{'; and for '.join(where)}. Or set backbone.options.weights = \"/path/{name}.safetensors\" (a state dict "
        f"of the model), or backbone.options.pretrained = false for random weights"
    )


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file, or from a `.pth` / `.bin` file with
    `torch.load(weights_only=True)` (a checkpoint holding it under "state_dict" or "model" too)."""
    if not path.is_file():
        raise TimmBackboneError(f"{path}: no such weights file (backbone.options.weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the file's
        raise TimmBackboneError(f"{path}: not a readable state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TimmBackboneError(f"{path}: not a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}
