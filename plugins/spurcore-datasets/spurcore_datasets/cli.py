"""`spur data check NAME --root PATH` and `spur data prepare NAME --raw DIR --out DIR`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import click

from spurcore.api import ConfigError, DataError, atomic, parse_override, plugin_manager, structure
from spurcore_datasets.tables import SHOWN, Table

PREPARABLE = ("metashift", "celeba")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@click.group("data")
def data() -> None:
    """Check benchmark datasets on disk, or convert them to the SubpopBench table."""


def _options(ctx: click.Context, name: str, root: Path, overrides: Sequence[str]) -> tuple[Any, Any]:
    spec = plugin_manager(ctx).get("datasets", name)
    values: dict[str, Any] = {"root": str(root)}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) != 1:
            raise ConfigError(f"override {text!r}: dataset options are flat (KEY=VALUE)")
        values[str(path[0])] = value
    if spec.options is None or "root" not in attrs.fields_dict(spec.options):
        raise ConfigError(f"dataset {name!r} is not read from a folder (it has no `root` option): nothing to check")
    return spec, structure(spec.options, values, "dataset.options")


@data.command("check")
@click.argument("name")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="The dataset folder or its parent.")
@click.option("-o", "--option", "overrides", multiple=True, metavar="KEY=VALUE", help="A dataset option.")
@click.option("--images", "decode", is_flag=True, help="Also decode every image (slow on large sets).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def check(ctx: click.Context, name: str, root: Path, overrides: tuple[str, ...], decode: bool, as_json: bool) -> None:
    """Validate dataset NAME at --root and print its group counts per split."""
    from spurcore_datasets import FORMATS

    spec, options = _options(ctx, name, root, overrides)
    if name in FORMATS:
        table = FORMATS[name].read(options)
        if decode and table.kind == "image":
            table = _decodable(table, options)
        source, groups, counts = str(table.source), table.group_names, table.group_counts()
    else:
        built = spec.build(options)
        source, groups = str(root), built.group_names
        counts = {s: list((built.group_counts(s) or {}).values()) for s in built.splits}
    if as_json:
        click.echo(json.dumps({"dataset": name, "source": source, "groups": list(groups), "counts": counts}, indent=2))
        return
    click.echo(f"{name}: {source} is valid")
    click.echo(count_table(groups, counts))


def _decodable(table: Table, options: Any) -> Table:
    """`--images`: the table whose every image decodes; with `bad_images = "skip"` the others
    are left out (and counted on stderr), else they stop the check, each named by its file and
    metadata line."""
    from spurcore_datasets.build import without_unreadable  # PIL and torch, for --images only
    from spurcore_datasets.images import unreadable

    if getattr(options, "bad_images", "stop") == "skip":
        return without_unreadable(table)
    bad = unreadable(table.items, table.lines)
    if bad:
        shown = "; ".join(reason for _, reason in bad[:SHOWN])
        raise DataError(f"{table.source}: {len(bad)} of {len(table.items)} images are unreadable: {shown}; "
                        f"set bad_images = \"skip\" to train without them")
    return table


def count_table(groups: Sequence[str], counts: dict[str, list[int]]) -> str:
    """Groups as rows, splits as columns, with totals."""
    splits = list(counts)
    width = max(len("group"), *(len(g) for g in groups))
    cols = [max(len(s), 7) for s in splits]
    lines = [f"{'group':<{width}}  " + "  ".join(f"{s:>{w}}" for s, w in zip(splits, cols))]
    for g, group in enumerate(groups):
        cells = [str(counts[s][g]) if counts[s] else "-" for s in splits]
        lines.append(f"{group:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols)))
    totals = [str(sum(counts[s])) for s in splits]
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(totals, cols)))
    return "\n".join(lines)


@data.command("prepare")
@click.argument("name")
@click.option("--raw", type=click.Path(path_type=Path), help="The dataset as downloaded (with --out).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Where metadata.csv goes.")
@click.option("--cache", "build_cache", is_flag=True,
              help="Instead: decode every image of the dataset at --root into the decoded-image cache now.")
@click.option("--root", type=click.Path(path_type=Path), help="The dataset folder or its parent (with --cache).")
@click.option("--workers", type=click.IntRange(min=0), help="Decoding processes for --cache (default: one per core).")
@click.option("-o", "--option", "overrides", multiple=True, metavar="KEY=VALUE", help="A dataset option.")
@click.pass_context
def prepare(ctx: click.Context, name: str, raw: Path | None, out: Path | None, build_cache: bool, root: Path | None,
            workers: int | None, overrides: tuple[str, ...]) -> None:
    """Write dataset NAME from --raw as a SubpopBench table (--out/metadata.csv), loadable as `subpop`;
    or, with --cache --root, build its decoded-image cache ahead of the first run."""
    from spurcore_datasets import FORMATS

    if build_cache:
        if root is None or raw is not None or out is not None:
            raise click.UsageError("--cache takes --root (the dataset folder), not --raw / --out")
        _prepare_cache(ctx, name, root, workers, overrides)
        return
    if raw is None or out is None or root is not None:
        raise click.UsageError("give --raw and --out (convert to a SubpopBench table), or --cache and --root")
    if name not in PREPARABLE:
        raise click.UsageError(f"only {', '.join(PREPARABLE)} convert to a SubpopBench table (got {name!r}); "
                               f"--cache --root works for every image dataset")
    _, options = _options(ctx, name, raw, overrides)
    table = FORMATS[name].read(options)
    path = write_table(table, out)
    click.echo(f"wrote {len(table.items)} rows to {path}; load it with [dataset] name = \"subpop\", "
               f"options.root = \"{out}\", options.class_names = {json.dumps(list(table.class_names))}, "
               f"options.attr_names = {json.dumps(list(table.attr_names))}")


def _prepare_cache(ctx: click.Context, name: str, root: Path, workers: int | None, overrides: Sequence[str]) -> None:
    from spurcore_datasets import FORMATS
    from spurcore_datasets.build import cached_splits, without_unreadable

    if name not in FORMATS:
        raise ConfigError(f"dataset {name!r} is not one of spurcore-datasets' ({', '.join(FORMATS)}): no image cache")
    _, options = _options(ctx, name, root, overrides)
    if "cache" not in attrs.fields_dict(type(options)):
        raise ConfigError(f"dataset {name!r} holds text, not images: there is nothing to decode")
    options = attrs.evolve(options, cache="decoded")
    table = FORMATS[name].read(options)
    if options.bad_images == "skip":
        table = without_unreadable(table)
    stores = cached_splits(table, options, workers)
    size = sum(store.path.stat().st_size for store in stores.values())
    images = sum(len(store) for store in stores.values())
    folder = next(iter(stores.values())).path.parent
    counts = ", ".join(f"{split} {len(store)}" for split, store in stores.items())
    click.echo(f"{name}: decoded-image cache in {folder} ({counts} images; {size / 2**20:.1f} MiB, "
               f"{size / images / 1024:.1f} KiB per image); runs with dataset.options.cache = \"decoded\" read it")


def write_table(table: Table, out: Path) -> Path:
    """`out/metadata.csv` (filename, split, y, a): file names relative to `out` when the
    images lie inside it, absolute otherwise."""
    out = Path(os.path.abspath(out))
    split_of = {}
    for split, rows in table.splits.items():
        if split in SPLIT_IDS:
            split_of.update({int(i): SPLIT_IDS[split] for i in rows})
    lines = ["filename,split,y,a\n"]
    for i, item in enumerate(table.items):
        image = Path(os.path.abspath(item))
        name = image.relative_to(out) if out in image.parents else image
        lines.append(f"{_csv_field(str(name))},{split_of[i]},{table.y[i]},{table.a[i]}\n")
    path = out / "metadata.csv"
    with atomic.atomic_open(path, "wb") as handle:  # UTF-8 whatever the locale: the encoding every reader reads
        handle.write("".join(lines).encode("utf-8"))
    return path


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
