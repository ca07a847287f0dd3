"""`spur data check` / `spur data prepare`, and short training runs through each modality."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import spurcore_datasets
import spurcore_text
from spurcore.api import DataError, PluginManager, RunDir, cli, pipeline_from_dict, run_pipeline
from spurcore_datasets import miniature


def manager() -> PluginManager:
    pm = PluginManager(entry_points=False, block=["progress"])
    pm.register(spurcore_datasets, "datasets")
    pm.register(spurcore_text, "text")
    return pm


def spur(*args):
    pm = manager()
    pm.hook.spurcore_register_commands(cli=cli)
    return CliRunner().invoke(cli, list(map(str, args)), obj={"manager": pm, "plugin_args": []})


def test_check_prints_group_counts_per_split(tmp_path):
    miniature.waterbirds(tmp_path)
    result = spur("data", "check", "waterbirds", "--root", tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("waterbird_complete95_forest2water2/metadata.csv is valid")
    assert lines[1].split() == ["group", "train", "val", "test"]
    assert lines[2].split() == ["landbird/land", "6", "2", "2"]
    assert lines[3].split() == ["landbird/water", "2", "2", "2"]
    assert lines[-1].split() == ["total", "16", "8", "8"]
    as_json = json.loads(spur("data", "check", "waterbirds", "--root", tmp_path, "--json").output)
    assert as_json["counts"] == {"train": [6, 2, 2, 6], "val": [2, 2, 2, 2], "test": [2, 2, 2, 2]}


def test_check_with_options_and_text_datasets_needs_no_tokenizer(tmp_path):
    miniature.celeba(tmp_path, "csv")
    result = spur("data", "check", "celeba", "--root", tmp_path, "-o", "target=Male", "-o", "attribute=Blond_Hair",
                  "--json")
    assert json.loads(result.output)["groups"] == ["not_Male/not_Blond_Hair", "not_Male/Blond_Hair",
                                                   "Male/not_Blond_Hair", "Male/Blond_Hair"]
    miniature.civilcomments(tmp_path)
    result = spur("data", "check", "civilcomments", "--root", tmp_path, "-o", "tokenizer=nobody/nothing")
    assert result.exit_code == 0 and "test:" in result.output.splitlines()[1]


def test_check_refuses_bad_data_with_one_message_and_exit_code(tmp_path):
    miniature.waterbirds(tmp_path)
    (tmp_path / "waterbird_complete95_forest2water2" / "001.Black_footed_Albatross").rename(tmp_path / "moved")
    result = spur("data", "check", "waterbirds", "--root", tmp_path)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "16 of 32 image files are missing" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = spur("data", "check", "waterbirds", "--root", tmp_path, "-o", "image_size=-3")
    assert result.exit_code == 2 and "image_size: must be positive" in result.output
    result = spur("data", "check", "nosuch", "--root", tmp_path)
    assert result.exit_code != 0 and "no dataset named 'nosuch'" in result.output
    result = spur("data", "check", "waterdigits", "--root", tmp_path)
    assert result.exit_code == 2 and "dataset 'waterdigits' is not read from a folder" in result.output


def test_check_names_the_line_of_a_byte_that_is_not_utf8(tmp_path):
    meta = miniature.waterbirds(tmp_path)
    data = meta.read_bytes()
    assert data.count(b"_0009_9.jpg") == 1  # data row 9, on line 10
    meta.write_bytes(data.replace(b"_0009_9.jpg", b"\xe9_0009_9.jpg"))
    result = spur("data", "check", "waterbirds", "--root", tmp_path)
    assert result.exit_code == 1
    offset = data.index(b"_0009_9.jpg")
    assert result.output == f"Error: {meta} line 10: not UTF-8 (byte 0xe9 at offset {offset}); save the file as UTF-8\n"


def test_check_images_decodes_every_image(tmp_path):
    miniature.waterbirds(tmp_path)
    assert spur("data", "check", "waterbirds", "--root", tmp_path, "--images").exit_code == 0
    bad = sorted(tmp_path.rglob("*.jpg"))[4]
    bad.write_bytes(b"\xff\xd8 truncated")
    result = spur("data", "check", "waterbirds", "--root", tmp_path, "--images")
    assert result.exit_code == 1 and "1 of 32 images are unreadable" in result.output and bad.name in result.output


@pytest.mark.parametrize("name, write", [("metashift", miniature.metashift), ("celeba", miniature.celeba)])
def test_prepare_writes_the_canonical_table(tmp_path, name, write):
    write(tmp_path / "raw")
    result = spur("data", "prepare", name, "--raw", tmp_path / "raw", "--out", tmp_path / "table")
    assert result.exit_code == 0, result.output
    assert "load it with [dataset] name = \"subpop\"" in result.output
    header = (tmp_path / "table" / "metadata.csv").read_text().splitlines()[0]
    assert header == "filename,split,y,a"
    before = spur("data", "check", name, "--root", tmp_path / "raw", "--json").output
    after = spur("data", "check", "subpop", "--root", tmp_path / "table", "--json").output
    assert json.loads(before)["counts"] == json.loads(after)["counts"]


def pipeline(dataset: dict, backbone: dict, **train) -> dict:
    return {"selector": "val-wga", "seed": 0, "device": "cpu", "dataset": dataset, "backbone": backbone,
            "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, **train}, "stages": [{"method": "erm"}]}


def test_image_pipeline_trains_from_jpegs_with_workers(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    config = pipeline({"name": "waterbirds", "options": {"root": str(tmp_path / "data"), "image_size": 16}},
                      {"name": "small-cnn", "options": {"width": 4}}, num_workers=1, lr=0.01)
    summary = run_pipeline(pipeline_from_dict(config), tmp_path / "run", manager(), log=lambda m: None)
    test = summary["metrics"]["test"]
    assert test["group_count"] == {"landbird/land": 2, "landbird/water": 2, "waterbird/land": 2, "waterbird/water": 2}
    assert 0 <= test["worst_group_acc"] <= test["avg_acc"] <= 1
    assert RunDir(tmp_path / "run").epochs("0-erm") == [1, 2]


def test_bad_data_stops_a_run_before_it_writes_anything(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    next((tmp_path / "data").rglob("*.jpg")).unlink()
    config = pipeline({"name": "waterbirds", "options": {"root": str(tmp_path / "data"), "image_size": 16}},
                      {"name": "small-cnn"})
    with pytest.raises(DataError, match="1 of 32 image files are missing"):
        run_pipeline(pipeline_from_dict(config), tmp_path / "run", manager(), log=lambda m: None)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_text_pipeline_trains_the_pretrained_minilm_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    miniature.civilcomments(tmp_path / "data")
    config = pipeline({"name": "civilcomments", "options": {"root": str(tmp_path / "data"), "tokenizer": "minilm",
                                                            "max_length": 24}},
                      {"name": "minilm"}, epochs=1, optimizer="adamw", lr=1e-4)
    summary = run_pipeline(pipeline_from_dict(config), tmp_path / "run", manager(), log=lambda m: None)
    assert summary["metrics"]["test"]["group_count"] == {"non_toxic/no_identity": 2, "non_toxic/identity": 2,
                                                         "toxic/no_identity": 2, "toxic/identity": 2}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    identity_splits = {r["split"] for r in rows if ":" in r["split"]}
    assert identity_splits and all(s.startswith("test:") for s in identity_splits)
    # the pretrained encoder separates "awful" from "lovely" after one short epoch
    assert summary["metrics"]["test"]["avg_acc"] >= 0.75


# --- hostile files (issue 25) ---------------------------------------------------------------------


def write_bomb(path, side=20000):
    """A PNG (under a .jpg name) whose header says `side` x `side` pixels: 400 million for the
    default, beyond PIL's decompression-bomb limit; the file itself is a few hundred bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_named_with_its_metadata_line_and_skip_is_honoured(tmp_path):
    """Issue 25, item 8: `spur data check --images` stopped on DecompressionBombError's
    traceback, with bad_images = "skip" too."""
    meta = miniature.waterbirds(tmp_path)
    bomb = sorted(tmp_path.rglob("*.jpg"))[2]
    write_bomb(bomb)
    line = next(i for i, text in enumerate(meta.read_text().splitlines(), 1) if bomb.name in text)
    result = spur("data", "check", "waterbirds", "--root", tmp_path, "--images")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith(f"Error: {meta}: 1 of 32 images are unreadable: {meta} line {line}: {bomb}: "
                                    f"unreadable image (DecompressionBombError: Image size (400000000 pixels)")
    skipped = spur("data", "check", "waterbirds", "--root", tmp_path, "--images", "-o", "bad_images=skip")
    assert skipped.exit_code == 0, skipped.output
    assert f"skipping 1 unreadable image(s) of 32: {meta} line {line}: {bomb}: unreadable image" in skipped.output
    assert ["total", "15", "8", "8"] in [line.split() for line in skipped.output.splitlines()]


def test_a_nul_byte_in_a_file_name_is_named_by_its_metadata_line(tmp_path):
    """Issue 25, item 8: `ValueError: embedded null byte`, or a 'missing' file printed with a
    raw NUL in it."""
    from test_formats import set_cell

    meta = miniature.waterbirds(tmp_path)
    set_cell(meta, 4, "img_filename", lambda rows: rows[4][1].replace(".jpg", "\0.jpg"))
    for args in ([], ["--images"], ["--images", "-o", "bad_images=skip"]):
        result = spur("data", "check", "waterbirds", "--root", tmp_path, *args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.output.startswith(f"Error: {meta} line 6: file name ") and "holds a NUL byte" in result.output


def test_a_corrupt_image_met_while_training_names_the_file_and_its_metadata_line(tmp_path):
    """Issue 25, item 8: the message named the image but not where the metadata lists it."""
    import torch

    from spurcore.api import iterate_batches
    from test_formats import build

    meta = miniature.waterbirds(tmp_path)
    data = build("waterbirds", root=str(tmp_path), image_size=16)
    split = data.splits["train"]
    bad = split.inputs.paths[3]
    bad.write_bytes(b"\xff\xd8 truncated")
    line = next(i for i, text in enumerate(meta.read_text().splitlines(), 1) if bad.name in text)
    for augment in (False, True):
        with pytest.raises(DataError, match=rf"^{meta} line {line}: {bad}: unreadable image"):
            list(iterate_batches(split, torch.arange(len(split)), 8, augment=augment))
