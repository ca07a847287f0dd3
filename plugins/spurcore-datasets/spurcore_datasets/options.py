"""The `[dataset.options]` of each dataset, validated by the kernel against these classes."""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore.api import FieldError, fraction, positive


def _root(instance, attribute, value: str) -> None:
    if not value:
        raise FieldError(attribute.name, "name the dataset folder (or its parent), e.g. root = \"/data/waterbirds\"")


def _cache_side(instance, attribute, value: int) -> None:
    if value and value < instance.image_size:
        raise FieldError(attribute.name, f"the stored shorter side ({value}) must be at least image_size "
                                         f"({instance.image_size}), or 0 for the evaluation resize")


@attrs.frozen(kw_only=True)
class ImageOptions:
    """`image_size`: the side of the square the network sees (224 for ImageNet backbones;
    smaller for CPUs and small GPUs). `augment`: standard | seed | none (training only).
    `bad_images`: stop at the first unreadable image, or skip them all (found by decoding
    every image once before training) and say how many. `cache = "decoded"`: decode every
    image once into a memory-mapped uint8 cache in `cache_dir` (default: the user's cache,
    `spurcore_datasets.cache.default_folder`), stored at shorter side `cache_side` (0: the
    evaluation resize, 256 for 224)."""

    root: str = attrs.field(validator=_root)
    image_size: int = attrs.field(default=224, validator=positive)
    augment: Literal["standard", "seed", "none"] = "standard"
    bad_images: Literal["stop", "skip"] = "stop"
    cache: Literal["none", "decoded"] = "none"
    cache_dir: str = ""
    cache_side: int = attrs.field(default=0, validator=_cache_side)


@attrs.frozen(kw_only=True)
class CelebAOptions(ImageOptions):
    """y = `target`, a = `attribute`: any two of the 40 attribute names."""

    target: str = "Blond_Hair"
    attribute: str = "Male"


@attrs.frozen(kw_only=True)
class MetaShiftOptions(ImageOptions):
    """SubpopBench's random split of the pooled folders."""

    split_seed: int = 42
    test_fraction: float = attrs.field(default=0.25, validator=fraction)
    val_fraction: float = attrs.field(default=0.1, validator=fraction)


@attrs.frozen(kw_only=True)
class TableOptions(ImageOptions):
    """The SubpopBench table `metadata` (filename, split, y, a) in `root`; names for classes
    and attribute values (default: y0, y1, ... and a0, a1, ... up to the largest label)."""

    metadata: str = "metadata.csv"
    class_names: list[str] = attrs.field(factory=list)
    attr_names: list[str] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class ChestXrayOptions(TableOptions):
    """MIMIC-CXR and CheXpert as SubpopBench prepares them: y = No Finding, a = sex x race (6)."""

    metadata: str = "metadata_no_finding.csv"
    class_names: list[str] = attrs.field(factory=lambda: ["finding", "no_finding"])


@attrs.frozen(kw_only=True)
class TextOptions:
    """`tokenizer`: the model whose tokenizer reads the text (`minilm`, `bert-base-uncased`
    or a model folder); use the backbone's model. `max_length`: tokens per example."""

    root: str = attrs.field(validator=_root)
    tokenizer: str = "bert-base-uncased"
    max_length: int = attrs.field(default=128, validator=positive)


@attrs.frozen(kw_only=True)
class MultiNLIOptions(TextOptions):
    text_files: list[str] = attrs.field(factory=lambda: ["glue_data/MNLI/train.tsv", "glue_data/MNLI/dev_matched.tsv",
                                                         "glue_data/MNLI/dev_mismatched.tsv"])


@attrs.frozen(kw_only=True)
class CivilCommentsOptions(TextOptions):
    """`identity_splits`: the splits to report per identity (extra `<split>:<identity>` splits)."""

    max_length: int = attrs.field(default=220, validator=positive)
    identity_splits: list[str] = attrs.field(factory=lambda: ["test"])
