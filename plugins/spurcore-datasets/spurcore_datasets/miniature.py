"""Miniature copies of every supported format, written in the real layouts: for tests, for
trying a pipeline without the real data, and for the throughput benchmark.

Images are small JPEGs whose background colour follows the attribute and whose centre
square follows the class, so a model can learn both; texts are short sentences whose words
follow the class and the attribute the same way.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# examples per group (y0/a0, y0/a1, y1/a0, y1/a1) in each split
COUNTS = {"train": (6, 2, 2, 6), "val": (2, 2, 2, 2), "test": (2, 2, 2, 2)}


def _rows(counts: dict[str, Sequence[int]], n_attrs: int = 2) -> list[tuple[str, int, int]]:
    """(split, y, a) for every example, split by split, group by group."""
    return [(split, g // n_attrs, g % n_attrs)
            for split, per_group in counts.items() for g, n in enumerate(per_group) for _ in range(n)]


def image(path: Path, y: int, a: int, size: tuple[int, int], rng: np.random.Generator) -> None:
    w, h = size
    pixels = np.empty((h, w, 3), dtype=np.uint8)
    pixels[:] = (40, 90, 200) if a else (60, 160, 60)
    pixels[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (230, 200, 40) if y else (120, 60, 30)
    pixels = np.clip(pixels + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def waterbirds(root: Path, counts=COUNTS, size=(48, 40), seed: int = 0) -> Path:
    """`root/waterbird_complete95_forest2water2/` with metadata.csv and class folders."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "waterbird_complete95_forest2water2"
    rows = []
    split_id = {"train": 0, "val": 1, "test": 2}
    for i, (split, y, a) in enumerate(_rows(counts), start=1):
        species = "146.Forsters_Tern" if y else "001.Black_footed_Albatross"
        name = f"{species}/{species.split('.')[1]}_{i:04d}_{i}.jpg"
        image(folder / name, y, a, size, rng)
        rows.append((i, name, y, split_id[split], a, f"/x/xx/{i}.jpg"))
    return _write_csv(folder / "metadata.csv", ["img_id", "img_filename", "y", "split", "place", "place_filename"], rows)


CELEBA_ATTRS = ("5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
                "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
                "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
                "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
                "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
                "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
                "Wearing_Necktie", "Young")


def celeba(root: Path, form: str = "txt", counts=COUNTS, size=(36, 44), seed: int = 0) -> Path:
    """`root/celeba/` with img_align_celeba/ and the list files (official txt or Kaggle csv);
    y = Blond_Hair, a = Male."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "celeba"
    names, values, parts = [], [], []
    for i, (split, y, a) in enumerate(_rows(counts), start=1):
        name = f"{i:06d}.jpg"
        image(folder / "img_align_celeba" / name, y, a, size, rng)
        row = rng.choice([-1, 1], len(CELEBA_ATTRS))
        row[CELEBA_ATTRS.index("Blond_Hair")] = 1 if y else -1
        row[CELEBA_ATTRS.index("Male")] = 1 if a else -1
        names.append(name)
        values.append(row.tolist())
        parts.append({"train": 0, "val": 1, "test": 2}[split])
    if form == "txt":
        lines = [str(len(names)), " ".join(CELEBA_ATTRS)]
        lines += [f"{n} " + " ".join(f"{v:2d}" for v in row) for n, row in zip(names, values)]
        (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, parts)),
                                                        encoding="utf-8")
        return folder / "list_attr_celeba.txt"
    _write_csv(folder / "list_eval_partition.csv", ["image_id", "partition"], list(zip(names, parts)))
    return _write_csv(folder / "list_attr_celeba.csv", ["image_id", *CELEBA_ATTRS],
                      [[n, *row] for n, row in zip(names, values)])


def metashift(root: Path, per_folder: int = 20, size=(32, 32), seed: int = 0) -> Path:
    """`root/MetaShift-Cat-Dog-indoor-outdoor/{train,test}/{cat,dog}/...` JPEG folders."""
    from spurcore_datasets.formats import METASHIFT_DIRS, METASHIFT_FOLDER

    rng = np.random.default_rng(seed)
    base = Path(root) / METASHIFT_FOLDER
    for folder, (y, a) in METASHIFT_DIRS.items():
        for i in range(per_folder):
            image(base / folder / f"{Path(folder).name.split('(')[0]}_{i:03d}.jpg", y, a, size, rng)
    return base


def canonical(root: Path, metadata: str = "metadata.csv", counts=COUNTS, n_attrs: int = 2, size=(32, 32),
              seed: int = 0) -> Path:
    """`root/metadata` (filename, split, y, a) with images under `root/images/`."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (split, y, a) in enumerate(_rows(counts, n_attrs)):
        name = f"images/{i:05d}.jpg"
        image(Path(root) / name, y, a % 2, size, rng)
        rows.append((name, {"train": 0, "val": 1, "test": 2}[split], y, a))
    return _write_csv(Path(root) / metadata, ["filename", "split", "y", "a"], rows)


LABELS = ("contradiction", "entailment", "neutral")


def multinli(root: Path, counts=None, seed: int = 0) -> Path:
    """`root/data/metadata_random.csv` and `root/glue_data/MNLI/{train,dev_matched,dev_mismatched}.tsv`
    (SubpopBench's layout), aligned row by row; 3 classes x negation."""
    counts = counts or {"train": (3, 1, 2, 2, 2, 2), "val": (1,) * 6, "test": (1,) * 6}
    rng = np.random.default_rng(seed)
    rows = _rows(counts, n_attrs=2)
    order = rng.permutation(len(rows))
    meta, pairs = [], []
    for k, i in enumerate(order):
        split, y, a = rows[i]
        premise = f"the {['cat', 'dog', 'bird'][y]} sat on the mat number {k}"
        hypothesis = f"a {['cat', 'dog', 'bird'][y]} is {'never ' if a else ''}on a mat"
        meta.append((k, y, a, {"train": 0, "val": 1, "test": 2}[split]))
        pairs.append((premise, hypothesis, LABELS[y]))
    path = _write_csv(Path(root) / "data" / "metadata_random.csv",
                      ["", "gold_label", "sentence2_has_negation", "split"], meta)
    glue = Path(root) / "glue_data" / "MNLI"
    glue.mkdir(parents=True, exist_ok=True)
    thirds = np.array_split(np.arange(len(pairs)), 3)
    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
    for name, rows_here in zip(("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"), thirds):
        lines = ["\t".join(header)]
        for j in rows_here:
            p, h, label = pairs[j]
            lines.append("\t".join([str(j), "0", f"{j}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
                                    p, h, label, label]))
        (glue / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


IDENTITY_COLUMNS = ("male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white")


def civilcomments(root: Path, counts=COUNTS, seed: int = 0) -> Path:
    """`root/civilcomments/all_data_with_identities.csv` as WILDS ships it (toxicity and
    identity scores in [0, 1]; a comment with a = 1 mentions one or two identities)."""
    rng = np.random.default_rng(seed)
    header = ["id", "comment_text", "split", "toxicity", *IDENTITY_COLUMNS, "severe_toxicity"]
    out = []
    for i, (split, y, a) in enumerate(_rows(counts)):
        scores = np.zeros(len(IDENTITY_COLUMNS))
        if a:
            scores[rng.choice(len(IDENTITY_COLUMNS), rng.integers(1, 3), replace=False)] = rng.uniform(0.5, 1, 1)
        else:
            scores[rng.integers(len(IDENTITY_COLUMNS))] = rng.uniform(0, 0.4)
        text = f"{'you are awful, truly' if y else 'what a lovely day'}, said \"person {i}\"\nagain"
        toxicity = rng.uniform(0.5, 1) if y else rng.uniform(0, 0.49)
        out.append([i, text, split, f"{toxicity:.3f}", *(f"{s:.2f}" for s in scores), "0.0"])
    return _write_csv(Path(root) / "civilcomments" / "all_data_with_identities.csv", header, out)
