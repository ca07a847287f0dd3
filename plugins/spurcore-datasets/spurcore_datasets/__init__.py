"""spurcore-datasets: the spurious-correlation benchmarks as users have them on disk.

Waterbirds, CelebA, MetaShift, MultiNLI, CivilComments, MIMIC-CXR and CheXpert, and the
SubpopBench table for any dataset (`subpop`). Each dataset reads its real layout into a
validated `Table` (`spurcore_datasets.read(name, options)`), which becomes lazy image files
or tokenized text. `spur data check` and `spur data prepare` are the command-line side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from spurcore import hookimpl
from spurcore.api import DatasetSpec
from spurcore_datasets import formats, options as opts

if TYPE_CHECKING:  # pragma: no cover
    from spurcore_datasets.tables import Table

__all__ = ["FORMATS", "Format", "read"]


@attrs.frozen
class Format:
    """A dataset of this plugin: its options class and how to read its table."""

    name: str
    options: type
    read: Callable[[Any], Table]
    description: str


FORMATS = {f.name: f for f in (
    Format("waterbirds", opts.ImageOptions, lambda o: formats.waterbirds(o.root),
           "Waterbirds (group_DRO / WILDS metadata.csv): landbird/waterbird on land/water"),
    Format("celeba", opts.CelebAOptions, lambda o: formats.celeba(o.root, o.target, o.attribute),
           "CelebA (official txt or Kaggle csv lists): Blond_Hair by Male by default"),
    Format("metashift", opts.MetaShiftOptions,
           lambda o: formats.metashift(o.root, o.split_seed, o.test_fraction, o.val_fraction),
           "MetaShift cat/dog indoor/outdoor folders, SubpopBench's seeded random split"),
    Format("multinli", opts.MultiNLIOptions, lambda o: formats.multinli(o.root, o.text_files),
           "MultiNLI (group_DRO metadata_random.csv + GLUE MNLI text): label by negation"),
    Format("civilcomments", opts.CivilCommentsOptions, lambda o: formats.civilcomments(o.root, o.identity_splits),
           "CivilComments (WILDS): toxicity by identity mention; the 16 WILDS groups as extra splits"),
    Format("subpop", opts.TableOptions,
           lambda o: formats.canonical("subpop", o.root, o.metadata, o.class_names, o.attr_names),
           "any dataset as a SubpopBench table: metadata.csv with filename, split, y, a"),
    Format("mimic-cxr", opts.ChestXrayOptions,
           lambda o: formats.canonical("mimic-cxr", o.root, o.metadata, o.class_names, o.attr_names),
           "MIMIC-CXR via SubpopBench's metadata_no_finding.csv: No Finding by sex x race"),
    Format("chexpert", opts.ChestXrayOptions,
           lambda o: formats.canonical("chexpert", o.root, o.metadata, o.class_names, o.attr_names),
           "CheXpert via SubpopBench's metadata_no_finding.csv: No Finding by sex x race"),
)}


def read(name: str, options: Any) -> Table:
    """The validated table of dataset `name` (metadata only: no image is decoded)."""
    return FORMATS[name].read(options)


def _builder(fmt: Format) -> Callable[[Any], Any]:
    def build(options: Any) -> Any:
        from spurcore_datasets.build import to_data  # on use: images and tensors need torch

        return to_data(fmt.read(options), options)

    return build


@hookimpl
def spurcore_register_datasets():
    return [DatasetSpec(name=f.name, build=_builder(f), options=f.options, description=f.description)
            for f in FORMATS.values()]


@hookimpl
def spurcore_register_commands(cli):
    from spurcore_datasets.cli import data

    cli.add_command(data)
