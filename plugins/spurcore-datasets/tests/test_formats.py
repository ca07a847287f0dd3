"""Every supported on-disk format, written in miniature: loading, group counts, and every
bad input with its one message."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spurcore.api import DataError, iterate_batches
from spurcore_datasets import FORMATS, miniature, options as opts
from spurcore_datasets.build import to_data
from spurcore_datasets.formats import IDENTITIES

COUNTS = {s: list(c) for s, c in miniature.COUNTS.items()}


def read(name, **options):
    return FORMATS[name].read(FORMATS[name].options(**options))


def build(name, **options):
    options = FORMATS[name].options(**options)
    return to_data(FORMATS[name].read(options), options)


def rewrite_csv(path: Path, change) -> None:
    """Apply `change(header, rows)` to a CSV file in place."""
    with open(path, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    header, rows = change(header, rows)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])


def set_cell(path: Path, row: int, column: str, value) -> None:
    """Set one cell of a CSV file (`row` counts data rows from 0); `value(rows)` may read others."""

    def change(header, rows):
        rows[row][header.index(column)] = value(rows) if callable(value) else value
        return header, rows

    rewrite_csv(path, change)


def waterbirds_metadata(root: Path) -> Path:
    return root / "waterbird_complete95_forest2water2" / "metadata.csv"


@pytest.fixture
def waterbirds(tmp_path):
    miniature.waterbirds(tmp_path)
    return tmp_path


# --- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("root_level", ["parent", "own"])
def test_waterbirds_loads_from_its_folder_or_the_parent(waterbirds, root_level):
    root = waterbirds if root_level == "parent" else waterbirds / "waterbird_complete95_forest2water2"
    table = read("waterbirds", root=str(root))
    assert table.group_names == ("landbird/land", "landbird/water", "waterbird/land", "waterbird/water")
    assert table.group_counts() == COUNTS
    data = build("waterbirds", root=str(root), image_size=24)
    train = data.splits["train"]
    assert len(train) == 16 and data.input_shape == (3, 24, 24)
    x = train.inputs[0]
    assert type(x) is torch.Tensor and x.shape == (3, 24, 24) and x.dtype == torch.float32
    # the training split has an augmented view of the same examples; evaluation is deterministic
    assert len(train.train_inputs) == 16 and data.splits["val"].train_inputs is None
    assert torch.equal(train.inputs[3], train.inputs[3])


@pytest.mark.parametrize("form", ["txt", "csv"])
def test_celeba_official_txt_and_kaggle_csv_give_the_same_table(tmp_path, form):
    miniature.celeba(tmp_path, form)
    table = read("celeba", root=str(tmp_path))
    assert table.class_names == ("not_Blond_Hair", "Blond_Hair") and table.attr_names == ("not_Male", "Male")
    assert table.group_counts() == COUNTS
    assert Path(table.items[0]).name == "000001.jpg"
    other = read("celeba", root=str(tmp_path), target="Male", attribute="Blond_Hair")
    assert np.array_equal(other.y, table.a) and np.array_equal(other.a, table.y)


def test_celeba_attribute_rows_are_parsed_without_holding_every_row_split(tmp_path):
    """40,000 rows of 40 attributes: splitting them all at once held 1.6 million strings
    (about 90 MB); parsed one row at a time, the values end in a 1.6 MB int8 array."""
    import tracemalloc

    from spurcore_datasets.formats import _celeba_attr_txt

    names = [f"attr_{i}" for i in range(40)]
    path = tmp_path / "list_attr_celeba.txt"
    row = " ".join(["-1", " 1"] * 20)
    path.write_text(f"40000\n{' '.join(names)}\n" + "".join(f"{i:06d}.jpg {row}\n" for i in range(1, 40001)))
    tracemalloc.start()
    try:
        _, files, values, _ = _celeba_attr_txt(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"parsing peaked at {peak / 2**20:.0f} MiB"
    assert values.shape == (40000, 40) and values.dtype == np.int8 and values[0, :2].tolist() == [-1, 1]
    assert files[-1] == "040000.jpg"


def test_celeba_kaggle_nested_image_folder(tmp_path):
    miniature.celeba(tmp_path, "csv")
    images = tmp_path / "celeba" / "img_align_celeba"
    nested = images / "img_align_celeba"
    nested.mkdir()
    for f in images.glob("*.jpg"):
        f.rename(nested / f.name)
    table = read("celeba", root=str(tmp_path))
    assert all(Path(p).parent == nested for p in table.items)


def test_metashift_pools_the_folders_and_splits_with_the_seed(tmp_path):
    miniature.metashift(tmp_path)
    table = read("metashift", root=str(tmp_path))
    sizes = {s: len(r) for s, r in table.splits.items()}
    assert sizes == {"train": 52, "val": 8, "test": 20}  # 25% of 80 to test, 10% to val
    assert read("metashift", root=str(tmp_path)).splits["val"].tolist() == table.splits["val"].tolist()
    other = read("metashift", root=str(tmp_path), split_seed=1).splits["val"].tolist()
    assert other != table.splits["val"].tolist()
    cats_indoor = [p for p, y, a in zip(table.items, table.y, table.a) if y == 1 and a == 1]
    assert len(cats_indoor) == 20 and all("cat(indoor)" in str(p) for p in cats_indoor)


def test_canonical_table_with_extra_split_and_absolute_paths(tmp_path):
    path = miniature.canonical(tmp_path)

    def change(header, rows):
        rows[0][0] = str(tmp_path / rows[0][0])  # an absolute path is taken as it is
        rows[-1][1] = "mixed_rand"
        return header, rows

    rewrite_csv(path, change)
    table = read("subpop", root=str(tmp_path), class_names=["no", "yes"])
    assert table.class_names == ("no", "yes") and table.attr_names == ("a0", "a1")
    assert len(table.splits["mixed_rand"]) == 1 and len(table.splits["test"]) == 7
    data = build("subpop", root=str(tmp_path), image_size=16)
    assert set(data.splits) == {"train", "val", "test", "mixed_rand"}


def test_chest_xray_tables_use_metadata_no_finding_with_six_attributes(tmp_path):
    counts = {s: [1] * 12 for s in ("train", "val", "test")}
    miniature.canonical(tmp_path, "metadata_no_finding.csv", counts=counts, n_attrs=6)
    for name in ("mimic-cxr", "chexpert"):
        table = read(name, root=str(tmp_path))
        assert table.class_names == ("finding", "no_finding") and len(table.attr_names) == 6
        assert table.group_counts()["val"] == [1] * 12


def test_multinli_aligns_metadata_with_the_glue_text(tmp_path):
    miniature.multinli(tmp_path)
    table = read("multinli", root=str(tmp_path), tokenizer="minilm")
    assert table.kind == "text" and table.class_names == ("contradiction", "entailment", "neutral")
    assert table.group_counts()["train"] == [3, 1, 2, 2, 2, 2]
    words = ["cat", "dog", "bird"]
    for premise, hypothesis, y, a in zip(table.items, table.pairs, table.y, table.a):
        assert words[y] in premise and ("never" in hypothesis) == bool(a)


def test_civilcomments_coarse_groups_and_the_wilds_identity_groups(tmp_path):
    path = miniature.civilcomments(tmp_path)
    table = read("civilcomments", root=str(tmp_path), identity_splits=["val", "test"])
    assert table.attr_names == ("no_identity", "identity") and table.group_counts()["train"] == COUNTS["train"]
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for split in ("val", "test"):
        for identity in IDENTITIES:
            expected = [i for i, r in enumerate(rows) if r["split"] == split and float(r[identity]) >= 0.5]
            got = table.splits.get(f"{split}:{identity}", np.array([], dtype=int)).tolist()
            assert got == expected  # comments mentioning the identity; their groups are y x identity
    assert all(table.a[table.splits[s]].all() for s in table.splits if ":" in s)
    assert sum(":" in s for s in table.splits) >= 4  # comments like "text, \"quoted\"\nnewline" parse


# --- bad inputs, one message each --------------------------------------------------------------


def test_missing_files_name_the_first_few_and_the_count(waterbirds):
    images = sorted((waterbirds / "waterbird_complete95_forest2water2").rglob("*.jpg"))
    for image in images[:7]:
        image.unlink()
    with pytest.raises(DataError, match=r"metadata.csv: 7 of 32 image files are missing: .*_0001_1.jpg.* and 2 more"):
        read("waterbirds", root=str(waterbirds))


def test_missing_root_and_missing_metadata(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such directory"):
        read("waterbirds", root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"no metadata.csv found; looked for .*waterbird_complete95_forest2water2"):
        read("waterbirds", root=str(tmp_path))


def test_missing_column(waterbirds):
    rewrite_csv(waterbirds_metadata(waterbirds), lambda h, rows: (h[:4] + h[5:], [r[:4] + r[5:] for r in rows]))
    with pytest.raises(DataError, match=r"metadata.csv: no column 'place' \(columns: img_id, img_filename, y, split, place_filename\)"):
        read("waterbirds", root=str(waterbirds))


def test_unknown_attribute_column(tmp_path):
    miniature.celeba(tmp_path)
    with pytest.raises(DataError, match=r"list_attr_celeba.txt: no attribute 'Blond' \(attributes: 5_o_Clock_Shadow"):
        read("celeba", root=str(tmp_path), target="Blond")


@pytest.mark.parametrize("row, column, value, message", [
    (4, "y", "2", r"line 6: column 'y' is '2', outside 0, 1"),
    (1, "place", "water", r"line 3: column 'place' is 'water', not a number"),
    (0, "split", "7", r"line 2: column 'split' is '7', not 0/1/2 or train/val/test"),
    (2, "img_filename", "../../etc/passwd.jpg", r"line 4: '../../etc/passwd.jpg' leads outside the dataset folder .*; refused"),
    (2, "img_filename", "a/../../outside.jpg", r"line 4: 'a/../../outside.jpg' leads outside the dataset folder"),
    (0, "img_filename", "/etc/hostname", r"line 2: '/etc/hostname' is an absolute path"),
])
def test_a_bad_cell_is_named_by_file_and_line(waterbirds, row, column, value, message):
    set_cell(waterbirds_metadata(waterbirds), row, column, value)
    with pytest.raises(DataError, match="metadata.csv " + message):
        read("waterbirds", root=str(waterbirds))


def test_celeba_values_and_counts_are_checked(tmp_path):
    miniature.celeba(tmp_path)
    attrs_file = tmp_path / "celeba" / "list_attr_celeba.txt"
    lines = attrs_file.read_text().splitlines()
    attrs_file.write_text("\n".join([lines[0], lines[1], lines[2].replace(" 1", " 0", 1), *lines[3:]]) + "\n")
    with pytest.raises(DataError, match=r"list_attr_celeba.txt line 3: attribute '.*' is '0', not -1 or 1"):
        read("celeba", root=str(tmp_path))
    attrs_file.write_text("\n".join(["99", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"line 1 announces 99 images, the file lists 32"):
        read("celeba", root=str(tmp_path))


def test_duplicated_ids_and_files(waterbirds, tmp_path):
    meta = waterbirds_metadata(waterbirds)
    original = meta.read_text()
    set_cell(meta, 3, "img_id", lambda rows: rows[1][0])
    with pytest.raises(DataError, match=r"metadata.csv line 5: img_id '2' repeats line 3"):
        read("waterbirds", root=str(waterbirds))
    meta.write_text(original)
    set_cell(meta, 3, "img_filename", lambda rows: rows[1][1])
    with pytest.raises(DataError, match=r"metadata.csv line 5: file .*/Black_footed_Albatross_0002_2.jpg repeats line 3$"):
        read("waterbirds", root=str(waterbirds))


def test_a_group_with_no_examples(waterbirds):
    meta = waterbirds_metadata(waterbirds)

    def change(header, rows):
        for r in rows:  # every val waterbird on land moves to water
            if r[3] == "1" and r[2] == "1":
                r[4] = "1"
        return header, rows

    rewrite_csv(meta, change)
    with pytest.raises(DataError, match=r"group waterbird/land \(y=1, a=0\) has no examples in split 'val'"):
        read("waterbirds", root=str(waterbirds))


def test_multinli_text_out_of_step_with_metadata(tmp_path):
    miniature.multinli(tmp_path)
    train = tmp_path / "glue_data" / "MNLI" / "train.tsv"
    lines = train.read_text().splitlines()
    train.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    assert lines[1].split("\t")[-1] != lines[2].split("\t")[-1]  # the swapped rows differ in label
    with pytest.raises(DataError, match=r"metadata_random.csv line 2: gold_label .*/train.tsv line 2 says .*not aligned"):
        read("multinli", root=str(tmp_path))
    train.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"metadata_random.csv: 24 rows, but the text files .* hold 23 pairs"):
        read("multinli", root=str(tmp_path))


def corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # a truncated JPEG


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_stops_the_run_naming_it(waterbirds, workers):
    data = build("waterbirds", root=str(waterbirds), image_size=16)
    train = data.splits["train"]
    bad = train.inputs.paths[5]
    corrupt(bad)
    with pytest.raises(DataError) as error:
        list(iterate_batches(train, torch.arange(len(train)), 4, num_workers=workers))
    message = str(error.value)
    assert message.startswith(f"{waterbirds_metadata(waterbirds)} line ") and "bad_images = \"skip\"" in message
    assert f": {bad}: unreadable image" in message  # the metadata line, then the file
    assert "Traceback" not in message  # one clear message, also from a worker process


def test_unreadable_images_are_skipped_only_when_asked_and_counted(waterbirds, capsys):
    paths = sorted((waterbirds / "waterbird_complete95_forest2water2").rglob("*.jpg"))
    corrupt(paths[0])
    (paths[1]).write_bytes(b"not an image")
    data = build("waterbirds", root=str(waterbirds), image_size=16, bad_images="skip")
    assert sum(len(s) for s in data.splits.values()) == 30
    err = capsys.readouterr().err
    assert "waterbirds: skipping 2 unreadable image(s) of 32" in err and paths[1].name in err
    for split in data.splits.values():
        for i in range(len(split)):
            assert split.inputs[i].shape == (3, 16, 16)


def test_transforms_evaluation_is_fixed_training_is_random(waterbirds):
    from spurcore_datasets.images import eval_transform, train_transform
    from PIL import Image

    image = Image.new("RGB", (60, 40), (124, 116, 104))  # the ImageNet mean colour
    x = eval_transform(32)(image)
    assert x.shape == (3, 32, 32) and x.abs().max() < 0.02  # normalized to about zero
    gradient = Image.fromarray(np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1))[..., None].repeat(3, 2))
    torch.manual_seed(0)
    views = [train_transform(32, "standard")(gradient) for _ in range(4)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])
    names = [type(t).__name__ for t in train_transform(32, "seed").transforms]
    assert names[:5] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomRotation", "RandomAffine",
                         "RandomPerspective"]
    assert torch.equal(train_transform(32, "none")(gradient), eval_transform(32)(gradient))


def test_prepared_tables_load_as_the_canonical_dataset(tmp_path):
    from spurcore_datasets.cli import write_table

    miniature.metashift(tmp_path / "raw")
    table = read("metashift", root=str(tmp_path / "raw"))
    write_table(table, tmp_path / "raw")  # inside: relative names
    write_table(table, tmp_path / "elsewhere")  # outside: absolute names
    for out in ("raw", "elsewhere"):
        again = read("subpop", root=str(tmp_path / out), class_names=list(table.class_names))
        assert again.group_counts() == table.group_counts()
        assert [Path(p) for p in again.items] == [Path(p) for p in table.items]
    first = (tmp_path / "raw" / "metadata.csv").read_text().splitlines()[1]
    assert first.startswith("MetaShift-Cat-Dog-indoor-outdoor/train/cat/cat(indoor)/")
    assert (tmp_path / "elsewhere" / "metadata.csv").read_text().splitlines()[1].startswith(str(tmp_path))
    shutil.rmtree(tmp_path / "raw" / "MetaShift-Cat-Dog-indoor-outdoor" / "test")
    with pytest.raises(DataError, match=r"not the MetaShift cat/dog layout; missing folder\(s\) test/cat/cat\(outdoor\)"):
        read("metashift", root=str(tmp_path / "raw"))


def test_options_are_validated_before_reading(tmp_path):
    from spurcore.api import ConfigError, structure

    with pytest.raises(ConfigError, match=r"augment: 'heavy' is not one of 'standard', 'seed', 'none'"):
        structure(opts.ImageOptions, {"root": str(tmp_path), "augment": "heavy"}, "dataset.options")
    with pytest.raises(ConfigError, match=r"dataset.options.*image_size"):
        structure(opts.ImageOptions, {"root": str(tmp_path), "image_size": 0}, "dataset.options")


def test_line_numbers_count_comments_that_span_lines(tmp_path):
    path = miniature.civilcomments(tmp_path)
    set_cell(path, 3, "toxicity", "high")  # every comment spans two lines: row 3 starts on line 2 + 2 * 3
    with pytest.raises(DataError, match=r"all_data_with_identities.csv line 8: column 'toxicity' is 'high', not a number"):
        read("civilcomments", root=str(tmp_path))
