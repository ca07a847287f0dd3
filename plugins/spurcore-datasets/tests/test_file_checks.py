"""Every bad dataset file stops the read with one message naming the file and the line:
encodings (UTF-8, with or without a byte-order mark), symlinks that lead outside the dataset
folder, and line numbers that count file lines (a CSV header is line 1) in every message."""

from __future__ import annotations

import codecs
import csv
import re
import shutil
from pathlib import Path

import pytest

from spurcore.api import DataError
from spurcore_datasets import miniature
from spurcore_datasets.cli import write_table
from test_formats import read, rewrite_csv, set_cell, waterbirds_metadata


def _prepared_metashift(root: Path) -> Path:
    miniature.metashift(root / "raw")
    write_table(read("metashift", root=str(root / "raw")), root / "table")
    return root / "table"


def _chexpert(root: Path) -> Path:
    miniature.canonical(root, "metadata_no_finding.csv", counts={s: [1] * 12 for s in ("train", "val", "test")},
                        n_attrs=6)
    return root


def _written(write):
    def layout(root: Path) -> Path:
        write(root)
        return root

    return layout


# layout: (write the miniature under a folder and return the root to read, dataset, options)
LAYOUTS = {
    "waterbirds": (_written(miniature.waterbirds), "waterbirds", {}),
    "celeba-txt": (_written(lambda r: miniature.celeba(r, "txt")), "celeba", {}),
    "celeba-csv": (_written(lambda r: miniature.celeba(r, "csv")), "celeba", {}),
    "multinli": (_written(miniature.multinli), "multinli", {"tokenizer": "minilm"}),
    "civilcomments": (_written(miniature.civilcomments), "civilcomments", {}),
    "subpop": (_written(miniature.canonical), "subpop", {}),
    "chexpert": (_chexpert, "chexpert", {}),
    "prepared-metashift": (_prepared_metashift, "subpop", {"class_names": ["dog", "cat"]}),
}


def text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".csv", ".tsv", ".txt"))


def read_layout(layout: str, folder: Path):
    write, name, options = LAYOUTS[layout]
    root = write(folder)
    return lambda: read(name, root=str(root), **options)


# --- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_reader_accepts_a_byte_order_mark(tmp_path, layout):
    load = read_layout(layout, tmp_path)
    plain = load()
    files = text_files(tmp_path)
    assert files
    for path in files:  # as Excel and Windows Notepad save "UTF-8"
        path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    table = load()
    assert table.group_counts() == plain.group_counts()
    assert list(table.items) == list(plain.items) and table.class_names == plain.class_names


def put_latin1(path: Path, line: int) -> int:
    """Write a Latin-1 'é' (byte 0xe9, not UTF-8) after the first character of `line`
    (1-based); return its byte offset in the file."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][:1] + b"\xe9" + lines[line - 1][1:]
    path.write_bytes(b"\n".join(lines))
    return sum(len(text) + 1 for text in lines[: line - 1]) + 1


@pytest.mark.parametrize("layout, name, line", [
    ("waterbirds", "metadata.csv", 11),
    ("celeba-txt", "list_attr_celeba.txt", 20),
    ("celeba-txt", "list_eval_partition.txt", 9),
    ("celeba-csv", "list_attr_celeba.csv", 2),
    ("celeba-csv", "list_eval_partition.csv", 30),
    ("multinli", "metadata_random.csv", 1),
    ("multinli", "dev_matched.tsv", 4),
    ("civilcomments", "all_data_with_identities.csv", 9),  # the second line of the 4th comment
    ("subpop", "metadata.csv", 17),
    ("chexpert", "metadata_no_finding.csv", 20),
    ("prepared-metashift", "metadata.csv", 44),
])
def test_a_file_that_is_not_utf8_is_named_with_the_line_of_the_first_bad_byte(tmp_path, layout, name, line):
    load = read_layout(layout, tmp_path)
    (path,) = [p for p in text_files(tmp_path) if p.name == name]
    offset = put_latin1(path, line)
    with pytest.raises(DataError) as error:
        load()
    assert str(error.value) == (f"{path} line {line}: not UTF-8 (byte 0xe9 at offset {offset}); "
                                f"save the file as UTF-8")
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no decoder traceback


def test_the_bad_byte_is_found_far_into_a_large_file_with_a_byte_order_mark(tmp_path):
    """The text decoder reads ahead in 8 KiB chunks: the line must come from the file, not
    from wherever the reader was when the chunk failed."""
    path = miniature.canonical(tmp_path)
    rewrite_csv(path, lambda h, rows: (h + ["note"], [r + ["x" * 1000] for r in rows]))
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    assert path.stat().st_size > 3 * 8192
    offset = put_latin1(path, 30)
    assert offset > 8192
    with pytest.raises(DataError, match=re.escape(f"{path} line 30: not UTF-8 (byte 0xe9 at offset {offset})")):
        read("subpop", root=str(tmp_path))


def test_a_utf16_file_is_refused_at_line_1(tmp_path):
    path = miniature.canonical(tmp_path)
    path.write_bytes(path.read_text().encode("utf-16"))  # Excel's "Unicode Text"
    with pytest.raises(DataError, match=re.escape(f"{path} line 1: not UTF-8 (byte 0xff at offset 0)")):
        read("subpop", root=str(tmp_path))


# --- symlinks ----------------------------------------------------------------------------------


def row_of(meta: Path, row: int) -> dict[str, str]:
    """Data row `row` (from 0; on line row + 2) of a CSV file, by column."""
    with open(meta, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))[row]


def test_a_file_symlinked_from_outside_the_dataset_folder_is_refused(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    meta = waterbirds_metadata(tmp_path / "data")
    name = row_of(meta, 9)["img_filename"]  # data row 9: line 11
    outside = tmp_path / "elsewhere" / "secret.jpg"
    outside.parent.mkdir()
    shutil.move(meta.parent / name, outside)
    (meta.parent / name).symlink_to(outside)
    message = (f"{meta} line 11: {name!r} leads outside the dataset folder {meta.parent} "
               f"through a symlink (to {outside.resolve()}); refused")
    with pytest.raises(DataError, match=re.escape(message)):
        read("waterbirds", root=str(tmp_path / "data"))


def test_a_folder_symlinked_from_outside_the_dataset_folder_is_refused(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    meta = waterbirds_metadata(tmp_path / "data")
    shutil.move(meta.parent / "146.Forsters_Tern", tmp_path / "terns")
    (meta.parent / "146.Forsters_Tern").symlink_to(tmp_path / "terns", target_is_directory=True)
    first_tern = next(i for i in range(32) if row_of(meta, i)["img_filename"].startswith("146."))
    with pytest.raises(DataError, match=rf"metadata.csv line {first_tern + 2}: '146.Forsters_Tern/.*' leads "
                                        rf"outside the dataset folder .* through a symlink \(to .*terns/.*\); refused"):
        read("waterbirds", root=str(tmp_path / "data"))


def test_symlinks_that_stay_inside_the_dataset_folder_are_fine(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    meta = waterbirds_metadata(tmp_path / "data")
    name = row_of(meta, 9)["img_filename"]
    store = meta.parent / "store"
    store.mkdir()
    shutil.move(meta.parent / name, store / "kept.jpg")
    (meta.parent / name).symlink_to(Path("..") / "store" / "kept.jpg")  # relative, still inside
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)  # the root itself may be a link
    for root in ("data", "link"):
        table = read("waterbirds", root=str(tmp_path / root))
        assert table.items[9] == Path(tmp_path / root / meta.parent.name / name)


def test_a_metashift_image_symlinked_from_outside_is_refused(tmp_path):
    base = miniature.metashift(tmp_path / "raw")
    outside = tmp_path / "elsewhere.jpg"
    image = sorted((base / "train" / "dog" / "dog(outdoor)").glob("*.jpg"))[3]
    shutil.move(image, outside)
    image.symlink_to(outside)
    with pytest.raises(DataError, match=re.escape(f"{image}: leads outside the dataset folder {base} through a "
                                                  f"symlink (to {outside.resolve()}); refused")):
        read("metashift", root=str(tmp_path / "raw"))


# --- line numbers: the header is line 1, the first data row line 2 ----------------------------


@pytest.mark.parametrize("layout, name, row, column, value, message", [
    ("waterbirds", "metadata.csv", 9, "y", "5", "line 11: column 'y' is '5', outside 0, 1"),
    ("celeba-csv", "list_attr_celeba.csv", 12, "Smiling", "0", "line 14: attribute 'Smiling' is '0', not -1 or 1"),
    ("celeba-csv", "list_eval_partition.csv", 20, "partition", "9", "line 22: column 'partition' is '9', not 0/1/2"),
    ("multinli", "metadata_random.csv", 10, "split", "x", "line 12: column 'split' is 'x', not 0/1/2"),
    ("civilcomments", "all_data_with_identities.csv", 10, "toxicity", "?", "line 22: column 'toxicity' is '\\?'"),
    ("subpop", "metadata.csv", 15, "a", "-1", "line 17: column 'a' is '-1', outside 0 or more"),
])
def test_a_bad_row_in_the_middle_of_a_csv_file_names_its_line(tmp_path, layout, name, row, column, value, message):
    load = read_layout(layout, tmp_path)
    (path,) = [p for p in text_files(tmp_path) if p.name == name]
    set_cell(path, row, column, value)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))} {message}"):
        load()


@pytest.mark.parametrize("layout, meta, column", [
    ("waterbirds", "metadata.csv", "img_filename"),
    ("subpop", "metadata.csv", "filename"),
    ("celeba-csv", "list_attr_celeba.csv", "image_id"),
])
def test_a_file_listed_twice_names_both_lines(tmp_path, layout, meta, column):
    load = read_layout(layout, tmp_path)
    (path,) = [p for p in text_files(tmp_path) if p.name == meta]
    set_cell(path, 12, column, row_of(path, 7)[column])  # line 14 names the file of line 9
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))} line 14: (file|image) .* repeats line 9$"):
        load()


def with_blank_line(path: Path, after: int) -> list[str]:
    """Insert a blank line after line `after` (1-based); return the new lines."""
    lines = path.read_text().splitlines()
    lines.insert(after, "")
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_celeba_txt_lines_count_blank_lines_too(tmp_path):
    miniature.celeba(tmp_path)
    folder = tmp_path / "celeba"
    attrs_file = folder / "list_attr_celeba.txt"
    lines = with_blank_line(attrs_file, 6)  # lines 3-6: images 1-4, line 7 blank, line 8: image 5
    fields = lines[13].split()  # image 11, on line 14
    lines[13] = " ".join([*fields[:5], "0", *fields[6:]])
    attrs_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"list_attr_celeba.txt line 14: attribute '{miniature.CELEBA_ATTRS[4]}' "
                                        rf"is '0', not -1 or 1"):
        read("celeba", root=str(folder))


def test_celeba_txt_duplicates_and_partitions_name_file_lines(tmp_path):
    miniature.celeba(tmp_path)
    folder = tmp_path / "celeba"
    attrs_file, partition = folder / "list_attr_celeba.txt", folder / "list_eval_partition.txt"
    original_attrs, original_partition = attrs_file.read_text(), partition.read_text()
    lines = with_blank_line(attrs_file, 4)  # line 5 blank; image 3 on line 6
    lines[15] = "000003.jpg" + lines[15][len("000003.jpg"):]  # line 16 repeats image 3
    attrs_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list_attr_celeba.txt line 16: image '000003.jpg' repeats line 6"):
        read("celeba", root=str(tmp_path))
    attrs_file.write_text(original_attrs)
    lines = partition.read_text().splitlines()
    partition.write_text("\n".join(lines[:6] + lines[7:]) + "\n")  # image 7 (line 9 of the attributes) has none
    with pytest.raises(DataError, match=rf"list_attr_celeba.txt line 9: 000007.jpg has no partition in "
                                        rf"{re.escape(str(partition))} \(1 image has none\)"):
        read("celeba", root=str(tmp_path))
    lines = original_partition.splitlines()
    lines[16] = lines[3]  # line 17 repeats image 4 of line 4
    partition.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt line 17: image '000004.jpg' repeats line 4"):
        read("celeba", root=str(tmp_path))
    lines = original_partition.splitlines()
    lines[16] = lines[16].split()[0] + " 9"
    partition.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt line 17: column 'partition' is '9'"):
        read("celeba", root=str(tmp_path))


def test_skipping_unreadable_images_keeps_each_row_on_its_line(tmp_path):
    from spurcore_datasets.build import without_unreadable

    miniature.waterbirds(tmp_path)
    table = read("waterbirds", root=str(tmp_path))
    table.items[4].write_bytes(b"not an image")
    kept = without_unreadable(table)
    assert kept.lines.numbers == [n for n in table.lines.numbers if n != 6]
    assert [str(p) for p in kept.items] == [str(p) for p in table.items if p != table.items[4]]
