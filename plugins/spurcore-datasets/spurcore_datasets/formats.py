"""One reader per on-disk format (see docs/datasets.md): each returns a validated `Table`.

Readers take the folder the user points at (the dataset's own folder or its parent), read
only metadata, and never decode an image: building a dataset costs one pass over its
metadata and a stat of every file. Every text file is read through `textfiles` (UTF-8, with
or without a byte-order mark), and every message names a row by its file line.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spurcore.api import DataError
from spurcore_datasets.tables import (
    Inside, Lines, Table, duplicates, find_file, fractions, image_paths, integers, read_csv, split_rows, validate,
)
from spurcore_datasets.textfiles import read_lines

# --- the SubpopBench table: filename, split, y, a --------------------------------------------


def canonical(name: str, root: str, metadata: str, class_names: Sequence[str] = (),
              attr_names: Sequence[str] = ()) -> Table:
    """`metadata` (`filename, split, y, a`) in `root`; group = y * n_attrs + a. Class and
    attribute counts come from the names given, else from the largest label present."""
    path = find_file(root, metadata)
    folder = path.parent
    rows = read_csv(path, ["filename", "split", "y", "a"])
    y = integers(rows, "y", range(len(class_names)) if class_names else None)
    a = integers(rows, "a", range(len(attr_names)) if attr_names else None)
    class_names = tuple(class_names) or tuple(f"y{i}" for i in range(int(y.max()) + 1))
    attr_names = tuple(attr_names) or tuple(f"a{i}" for i in range(int(a.max()) + 1))
    items = image_paths(folder, rows["filename"], rows.lines, absolute_ok=True)
    return validate(Table(name=name, source=path, kind="image", items=items, y=y, a=a,
                          splits=split_rows(rows["split"], rows.lines, extra=True),
                          class_names=class_names, attr_names=attr_names, lines=rows.lines))


# --- Waterbirds (group_DRO / WILDS) ------------------------------------------------------------

WATERBIRDS_FOLDERS = ("waterbird_complete95_forest2water2", "waterbirds_v1.0", "waterbirds")


def waterbirds(root: str) -> Table:
    path = find_file(root, "metadata.csv", WATERBIRDS_FOLDERS)
    rows = read_csv(path, ["img_id", "img_filename", "y", "split", "place"])
    duplicates(rows["img_id"], rows.lines, "img_id")
    items = image_paths(path.parent, rows["img_filename"], rows.lines, absolute_ok=False)
    return validate(Table(
        name="waterbirds", source=path, kind="image", items=items,
        y=integers(rows, "y", (0, 1)), a=integers(rows, "place", (0, 1)),
        splits=split_rows(rows["split"], rows.lines), class_names=("landbird", "waterbird"), attr_names=("land", "water"),
        lines=rows.lines,
    ))


# --- CelebA (official txt files, or the Kaggle csv copy) ---------------------------------------

CELEBA_FOLDERS = ("celeba", "CelebA")


def celeba(root: str, target: str = "Blond_Hair", attribute: str = "Male") -> Table:
    """y = `target`, a = `attribute` (1 where the attribute file says 1)."""
    folder = _celeba_folder(root)
    if (folder / "list_attr_celeba.txt").is_file():
        names, files, values, lines = _celeba_attr_txt(folder / "list_attr_celeba.txt")
    else:
        names, files, values, lines = _celeba_attr_csv(find_file(folder, "list_attr_celeba.csv"))
    attr_path = lines.path
    for column in (target, attribute):
        if column not in names:
            raise DataError(f"{attr_path}: no attribute {column!r} (attributes: {', '.join(names)})")
    part_path, partition = _celeba_partition(folder)
    duplicates(files, lines, "image")
    missing = [i for i, f in enumerate(files) if f not in partition]
    if missing:
        some = "1 image has" if len(missing) == 1 else f"{len(missing)} images have"
        raise DataError(f"{lines(missing[0])}: {files[missing[0]]} has no partition in {part_path} ({some} none)")
    images = folder / "img_align_celeba"
    if (images / "img_align_celeba").is_dir():  # the Kaggle archive nests the folder
        images = images / "img_align_celeba"
    column = {n: i for i, n in enumerate(names)}
    y = (values[:, column[target]] == 1).astype(np.int64)
    a = (values[:, column[attribute]] == 1).astype(np.int64)
    splits = split_rows([partition[f][0] for f in files], Lines(part_path, [partition[f][1] for f in files]),
                        "partition")
    items = image_paths(images, files, lines, absolute_ok=False)
    return validate(Table(name="celeba", source=attr_path, kind="image", items=items, y=y, a=a, splits=splits,
                          class_names=(f"not_{target}", target), attr_names=(f"not_{attribute}", attribute),
                          lines=lines))


def _celeba_folder(root: str) -> Path:
    base = Path(root).expanduser()
    for folder in (base, *(base / f for f in CELEBA_FOLDERS)):
        if (folder / "list_eval_partition.txt").is_file() or (folder / "list_eval_partition.csv").is_file():
            return folder
    if not base.is_dir():
        raise DataError(f"{base}: no such directory (the dataset root)")
    raise DataError(f"{base}: no list_eval_partition.txt or list_eval_partition.csv here or in "
                    f"{' or '.join(CELEBA_FOLDERS)}/ (the CelebA list files)")


def _celeba_attr_txt(path: Path) -> tuple[list[str], list[str], np.ndarray, Lines]:
    """Line 1: the image count; line 2: the 40 names; then `file v1 ... v40` (-1 / 1)."""
    text = read_lines(path)
    if len(text) < 3:
        raise DataError(f"{path}: expected the image count, the attribute names and one row per image")
    try:
        count = int(text[0].strip())
    except ValueError:
        raise DataError(f"{path} line 1: {text[0]!r} is not the image count") from None
    names = text[1].split()
    numbered = [(n, line) for n, line in enumerate(text[2:], start=3) if line.strip()]
    if len(numbered) != count:
        raise DataError(f"{path}: line 1 announces {count} images, the file lists {len(numbered)}")
    lines = Lines(path, [n for n, _ in numbered])
    files, values = [], np.empty((len(numbered), len(names)), dtype=np.int8)
    for i, (_, line) in enumerate(numbered):
        row = line.split()  # one row's fields at a time: CelebA's 202,599 rows split at once held 0.5 GB
        if len(row) != len(names) + 1:
            raise DataError(f"{lines(i)}: {len(row) - 1} values, expected {len(names)}")
        files.append(row[0])
        values[i] = _plus_minus(row[1:], lines(i), names)
    return names, files, values, lines


def _celeba_attr_csv(path: Path) -> tuple[list[str], list[str], np.ndarray, Lines]:
    rows = read_csv(path, None)
    if rows.header[0] != "image_id":
        raise DataError(f"{path}: the first column must be image_id (found {rows.header[:1]})")
    names = rows.header[1:]
    values = np.empty((len(rows), len(names)), dtype=np.int8)
    for i in range(len(rows)):
        values[i] = _plus_minus([rows[n][i] for n in names], rows.lines(i), names)
    return names, rows["image_id"], values, rows.lines


def _plus_minus(texts: Sequence[str], where: str, names: Sequence[str]) -> list[int]:
    out = []
    for name, text in zip(names, texts):
        if text not in ("1", "-1"):
            raise DataError(f"{where}: attribute {name!r} is {text!r}, not -1 or 1")
        out.append(int(text))
    return out


def _celeba_partition(folder: Path) -> tuple[Path, dict[str, tuple[str, int]]]:
    """{file: (partition, line)}."""
    txt = folder / "list_eval_partition.txt"
    if txt.is_file():
        files, parts, numbers = [], [], []
        for line, text in enumerate(read_lines(txt), start=1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DataError(f"{txt} line {line}: expected `file partition`, got {text!r}")
            files.append(fields[0])
            parts.append(fields[1])
            numbers.append(line)
        path, lines = txt, Lines(txt, numbers)
    else:
        path = folder / "list_eval_partition.csv"
        rows = read_csv(path, ["image_id", "partition"])
        files, parts, lines = rows["image_id"], rows["partition"], rows.lines
    duplicates(files, lines, "image")
    return path, {f: (p, line) for f, p, line in zip(files, parts, lines.numbers)}


# --- MetaShift (cat vs dog, indoor vs outdoor; SubpopBench folders) ----------------------------

METASHIFT_FOLDER = "MetaShift-Cat-Dog-indoor-outdoor"
METASHIFT_DIRS = {  # folder: (y, a); y cat = 1, a indoor = 1
    "train/cat/cat(indoor)": (1, 1),
    "train/dog/dog(outdoor)": (0, 0),
    "test/cat/cat(outdoor)": (1, 0),
    "test/dog/dog(indoor)": (0, 1),
}


def metashift(root: str, seed: int = 42, test_fraction: float = 0.25, val_fraction: float = 0.1) -> Table:
    """The four folders pooled (files sorted by name) and split at random with `seed`:
    `test_fraction` to test, `val_fraction` of the rest to val, as SubpopBench does."""
    base = Path(root).expanduser()
    if (base / METASHIFT_FOLDER).is_dir():
        base = base / METASHIFT_FOLDER
    missing = [d for d in METASHIFT_DIRS if not (base / d).is_dir()]
    if missing:
        raise DataError(f"{base}: not the MetaShift cat/dog layout; missing folder(s) {', '.join(missing)}")
    items, y, a = [], [], []
    inside = Inside(base)
    for folder, (label, attr) in METASHIFT_DIRS.items():
        files = sorted((base / folder).glob("*.jpg"))
        for file in files:
            inside.check(file, f"{file}:")
        items += files
        y += [label] * len(files)
        a += [attr] * len(files)
    n = len(items)
    rng = np.random.RandomState(seed)
    test = rng.choice(np.arange(n), size=int(n * test_fraction), replace=False)
    val = rng.choice(np.setdiff1d(np.arange(n), test), size=int(n * val_fraction), replace=False)
    split = np.zeros(n, dtype=np.int64)
    split[val], split[test] = 1, 2
    splits = {name: np.flatnonzero(split == i) for i, name in enumerate(("train", "val", "test"))}
    return validate(Table(name="metashift", source=base, kind="image", items=items, y=np.asarray(y, dtype=np.int64),
                          a=np.asarray(a, dtype=np.int64), splits=splits, class_names=("dog", "cat"),
                          attr_names=("outdoor", "indoor")))


# --- MultiNLI (group_DRO metadata + GLUE MNLI text) ---------------------------------------------

MNLI_FOLDERS = ("data", "multinli", "multinli/data")
MNLI_TEXT = ("glue_data/MNLI/train.tsv", "glue_data/MNLI/dev_matched.tsv", "glue_data/MNLI/dev_mismatched.tsv")
MNLI_LABELS = ("contradiction", "entailment", "neutral")


def multinli(root: str, text_files: Sequence[str] = MNLI_TEXT) -> Table:
    """`metadata_random.csv` aligned row by row with the GLUE MNLI files in `text_files`
    (concatenated in that order). The alignment is checked: each text row's gold label must
    equal the metadata's `gold_label`."""
    path = find_file(root, "metadata_random.csv", MNLI_FOLDERS)
    rows = read_csv(path, ["gold_label", "sentence2_has_negation", "split"])
    y = integers(rows, "gold_label", (0, 1, 2))
    premises, hypotheses, labels, origins = [], [], [], []
    for name in text_files:
        text_path = _beside(path, name)
        tsv = read_csv(text_path, ["sentence1", "sentence2", "gold_label"], delimiter="\t", quoting=csv.QUOTE_NONE)
        premises += tsv["sentence1"]
        hypotheses += tsv["sentence2"]
        labels += tsv["gold_label"]
        origins += [(text_path, line) for line in tsv.lines.numbers]
    if len(premises) != len(y):
        raise DataError(f"{path}: {len(y)} rows, but the text files ({', '.join(text_files)}) hold {len(premises)} "
                        f"pairs; they must align row by row")
    for i, (label, gold) in enumerate(zip(labels, y)):
        if label != MNLI_LABELS[gold]:
            where, line = origins[i]
            raise DataError(f"{rows.lines(i)}: gold_label {gold} ({MNLI_LABELS[gold]}) but {where} line {line} "
                            f"says {label!r}; the text files are not aligned with the metadata")
    return validate(Table(name="multinli", source=path, kind="text", items=premises, pairs=hypotheses, y=y,
                          a=integers(rows, "sentence2_has_negation", (0, 1)),
                          splits=split_rows(rows["split"], rows.lines), class_names=MNLI_LABELS,
                          attr_names=("no_negation", "negation")))


def _beside(metadata: Path, name: str) -> Path:
    """A text file named relative to the metadata's folder or its parent (SubpopBench layout)."""
    for base in (metadata.parent, metadata.parent.parent):
        if (base / name).is_file():
            return base / name
    raise DataError(f"{metadata.parent}: no {name} (looked beside {metadata.name} and one folder up); "
                    f"MultiNLI needs the GLUE MNLI text, or set dataset.options.text_files")


# --- CivilComments (WILDS) ---------------------------------------------------------------------

IDENTITIES = ("male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white")


def civilcomments(root: str, identity_splits: Sequence[str] = ("test",)) -> Table:
    """y = toxicity >= 0.5; a = any of the 8 identities mentioned (>= 0.5): the 4 coarse
    training groups. For each split in `identity_splits` and each identity, an extra
    evaluation split `<split>:<identity>` holds the comments mentioning it, whose two
    groups (x/identity) are the 16 overlapping groups WILDS reports."""
    path = find_file(root, "all_data_with_identities.csv", ("civilcomments", "civilcomments_v1.0"))
    rows = read_csv(path, ["comment_text", "toxicity", "split", *IDENTITIES])
    y = (fractions(rows, "toxicity") >= 0.5).astype(np.int64)
    mentions = np.stack([fractions(rows, c) >= 0.5 for c in IDENTITIES], axis=1)
    splits = split_rows(rows["split"], rows.lines)
    for split in identity_splits:
        if split not in splits:
            raise DataError(f"dataset.options.identity_splits: {split!r} is not a split of {path} "
                            f"(splits: {', '.join(splits)})")
        for j, identity in enumerate(IDENTITIES):
            rows_with = splits[split][mentions[splits[split], j]]
            if len(rows_with):
                splits[f"{split}:{identity}"] = rows_with
    return validate(Table(name="civilcomments", source=path, kind="text", items=rows["comment_text"], y=y,
                          a=mentions.any(axis=1).astype(np.int64), splits=splits,
                          class_names=("non_toxic", "toxic"), attr_names=("no_identity", "identity")))
