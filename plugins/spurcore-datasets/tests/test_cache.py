"""The decoded-image cache: the same pixels as decoding the JPEGs, rebuilt when the files
change, never read half-made, built ahead by `spur data prepare --cache`, trained from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from spurcore.api import DataError, RunDir, iterate_batches, pipeline_from_dict, run_pipeline
from spurcore_datasets import FORMATS, cache, miniature
from spurcore_datasets.build import to_data
from test_data_commands import manager, spur

WRITERS = {
    "waterbirds": lambda root: miniature.waterbirds(root),
    "celeba": lambda root: miniature.celeba(root),
    "metashift": lambda root: miniature.metashift(root),
    "subpop": lambda root: miniature.canonical(root),
}


def build(name, root, **options):
    options = FORMATS[name].options(root=str(root), **options)
    return to_data(FORMATS[name].read(options), options)


def batches(split, *, augment=False, size=64):
    return list(iterate_batches(split, torch.arange(len(split)), size, augment=augment))


@pytest.mark.parametrize("name", sorted(WRITERS))
@pytest.mark.parametrize("image_size", [32, 24])
def test_cached_evaluation_gives_the_same_tensors_as_decoding_the_jpegs(tmp_path, name, image_size):
    WRITERS[name](tmp_path / "data")
    plain = build(name, tmp_path / "data", image_size=image_size)
    cached = build(name, tmp_path / "data", image_size=image_size, cache="decoded", cache_dir=str(tmp_path / "c"))
    assert set(cached.splits) == set(plain.splits)
    for split in plain.splits:
        expected, got = batches(plain.splits[split]), batches(cached.splits[split])
        assert len(got) == len(expected)
        for a, b in zip(expected, got):
            assert b.x.dtype == torch.float32 and b.x.shape == a.x.shape == (len(a), 3, image_size, image_size)
            assert torch.equal(a.x, b.x), f"{name} {split}: cached pixels differ"
    assert len(list((tmp_path / "c").glob("*/*.json"))) == len(plain.splits)


def test_training_view_is_augmented_uint8_finished_per_batch_and_seeded(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    data = build("waterbirds", tmp_path / "data", image_size=32, cache="decoded", cache_dir=str(tmp_path / "c"))
    train = data.splits["train"]
    assert train.train_inputs[0].dtype == torch.uint8 and train.train_inputs[0].shape == (3, 32, 32)
    torch.manual_seed(3)
    first = torch.cat([b.x for b in batches(train, augment=True)])
    torch.manual_seed(3)
    again = torch.cat([b.x for b in batches(train, augment=True)])
    evaluated = torch.cat([b.x for b in batches(train)])
    assert first.dtype == torch.float32 and torch.equal(first, again)
    assert not torch.equal(first, evaluated)
    assert abs(float(first.mean() - evaluated.mean())) < 0.3  # the same images, cropped and flipped


def test_a_changed_or_touched_file_rebuilds_the_cache(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    folder = tmp_path / "data" / "waterbird_complete95_forest2water2"
    options = {"image_size": 32, "cache": "decoded", "cache_dir": str(tmp_path / "c")}
    build("waterbirds", tmp_path / "data", **options)
    index = next((tmp_path / "c").glob("*/train-37px.json"))
    before = json.loads(index.read_text())["fingerprint"]
    test_index = index.with_name("test-37px.json").stat().st_mtime_ns
    first = sorted(folder.rglob("*.jpg"))[0]  # a training image (img_id 1)
    miniature.image(first, 1, 1, (48, 40), np.random.default_rng(9))  # rewritten: other colours
    data = build("waterbirds", tmp_path / "data", **options)
    after = json.loads(index.read_text())["fingerprint"]
    assert after != before
    assert index.with_name("test-37px.json").stat().st_mtime_ns == test_index  # other splits untouched
    plain = build("waterbirds", tmp_path / "data", image_size=32)
    assert torch.equal(batches(data.splits["train"])[0].x, batches(plain.splits["train"])[0].x)
    assert len(list(index.parent.glob("train-37px-*.u8"))) == 1  # the stale pixels are gone
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes, newer mtime
    build("waterbirds", tmp_path / "data", **options)
    assert json.loads(index.read_text())["fingerprint"] not in (before, after)


def test_another_image_size_keeps_its_own_cache(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    for size in (32, 24):
        build("waterbirds", tmp_path / "data", image_size=size, cache="decoded", cache_dir=str(tmp_path / "c"))
    names = sorted(p.name for p in next((tmp_path / "c").iterdir()).glob("train-*.json"))
    assert names == ["train-27px.json", "train-37px.json"]


KILLED_BUILD = """
import sys, time
import spurcore_datasets.cache as cache
decode = cache._Decoded.__getitem__
def slow(self, i):
    if i == 3:
        print("writing", flush=True)
        time.sleep(60)
    return decode(self, i)
cache._Decoded.__getitem__ = slow
from spurcore_datasets import FORMATS
from spurcore_datasets.build import to_data
options = FORMATS["waterbirds"].options(root=sys.argv[1], image_size=32, cache="decoded", cache_dir=sys.argv[2])
to_data(FORMATS["waterbirds"].read(options), options)
"""


def test_a_killed_build_leaves_nothing_readable_and_the_next_build_completes(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    child = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(tmp_path / "data"), str(tmp_path / "c")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    folder = next((tmp_path / "c").iterdir())
    leftovers = list(folder.glob(".train-37px-*.tmp"))
    assert leftovers and not list(folder.glob("*.json")) and not list(folder.glob("*.u8"))
    paths = [p for p in FORMATS["waterbirds"].read(FORMATS["waterbirds"].options(root=str(tmp_path / "data"))).items]
    assert cache.load(folder, "train", 37, "anything") is None
    for left in leftovers:  # as if the killed build were long gone
        os.utime(left, (time.time() - 3600, time.time() - 3600))
    data = build("waterbirds", tmp_path / "data", image_size=32, cache="decoded", cache_dir=str(tmp_path / "c"))
    plain = build("waterbirds", tmp_path / "data", image_size=32)
    assert torch.equal(batches(data.splits["train"])[0].x, batches(plain.splits["train"])[0].x)
    assert not list(folder.glob(".*.tmp")) and len(paths) == 32


def test_pixels_without_their_index_or_of_the_wrong_size_are_not_read(tmp_path):
    miniature.waterbirds(tmp_path / "data")
    build("waterbirds", tmp_path / "data", image_size=32, cache="decoded", cache_dir=str(tmp_path / "c"))
    folder = next((tmp_path / "c").iterdir())
    index = json.loads((folder / "val-37px.json").read_text())
    assert cache.load(folder, "val", 37, index["fingerprint"]) is not None
    pixels = folder / index["pixels"]
    pixels.write_bytes(pixels.read_bytes()[:-7])  # cut short
    assert cache.load(folder, "val", 37, index["fingerprint"]) is None
    (folder / "val-37px.json").unlink()  # killed between the pixels' rename and the index
    assert cache.load(folder, "val", 37, index["fingerprint"]) is None
    data = build("waterbirds", tmp_path / "data", image_size=32, cache="decoded", cache_dir=str(tmp_path / "c"))
    assert len(data.splits["val"]) == 8 and (folder / "val-37px.json").is_file()


def test_the_default_folder_is_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_folder() == tmp_path / "xdg" / "spurcore" / "images"
    monkeypatch.setenv(cache.ENV, str(tmp_path / "mine"))
    assert cache.default_folder() == tmp_path / "mine"


def test_cache_side_below_the_image_size_is_refused(tmp_path):
    from spurcore.api import ConfigError, structure

    with pytest.raises(ConfigError, match=r"cache_side: the stored shorter side \(100\) must be at least image_size"):
        structure(FORMATS["waterbirds"].options, {"root": "x", "cache_side": 100}, "dataset.options")


def test_prepare_cache_builds_ahead_and_a_run_reads_it_without_rebuilding(tmp_path):
    miniature.celeba(tmp_path / "data")
    result = spur("data", "prepare", "celeba", "--cache", "--root", tmp_path / "data", "--workers", "0",
                  "-o", "image_size=16", "-o", f"cache_dir={json.dumps(str(tmp_path / 'c'))}")
    assert result.exit_code == 0, result.output
    assert "decoded-image cache in" in result.output and "train 16, val 8, test 8 images" in result.output
    stored = sum(p.stat().st_size for p in (tmp_path / "c").glob("*/*.u8"))
    assert f"{stored / 32 / 1024:.1f} KiB per image" in result.output
    indexes = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("*/*.json")}
    assert len(indexes) == 3
    config = {"selector": "val-wga", "seed": 0, "device": "cpu", "backbone": {"name": "small-cnn", "options": {"width": 4}},
              "dataset": {"name": "celeba", "options": {"root": str(tmp_path / "data"), "image_size": 16,
                                                        "cache": "decoded", "cache_dir": str(tmp_path / "c")}},
              "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "num_workers": 1, "lr": 0.01},
              "stages": [{"method": "erm"}]}
    summary = run_pipeline(pipeline_from_dict(config), tmp_path / "run", manager(), log=lambda m: None)
    assert summary["metrics"]["test"]["group_count"] == {"not_Blond_Hair/not_Male": 2, "not_Blond_Hair/Male": 2,
                                                         "Blond_Hair/not_Male": 2, "Blond_Hair/Male": 2}
    assert RunDir(tmp_path / "run").epochs("0-erm") == [1, 2]
    assert {p: p.stat().st_mtime_ns for p in indexes} == indexes


def test_prepare_cache_refuses_text_and_mixed_arguments(tmp_path):
    miniature.civilcomments(tmp_path / "data")
    result = spur("data", "prepare", "civilcomments", "--cache", "--root", tmp_path / "data")
    assert result.exit_code == 2 and "holds text, not images" in result.output
    result = spur("data", "prepare", "waterbirds", "--cache", "--raw", tmp_path / "data", "--root", tmp_path)
    assert result.exit_code == 2 and "--cache takes --root" in result.output
    result = spur("data", "prepare", "waterbirds", "--raw", tmp_path / "data", "--out", tmp_path / "t")
    assert result.exit_code == 2 and "only metashift, celeba convert" in result.output


def test_store_pickles_without_its_pixels(tmp_path):
    import pickle

    miniature.waterbirds(tmp_path / "data")
    data = build("waterbirds", tmp_path / "data", image_size=32, cache="decoded", cache_dir=str(tmp_path / "c"))
    store = data.splits["test"].inputs.store
    first = store.image(0)
    copy = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 2000 and torch.equal(copy.image(0), first)
    assert isinstance(Path(copy.path), Path)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_stops_the_build_naming_it_and_leaves_no_cache(tmp_path, monkeypatch, workers):
    from spurcore.api import DataError

    monkeypatch.setattr(cache, "SMALL_SPLIT", 1)  # workers even for the miniature's few images
    miniature.waterbirds(tmp_path / "data")
    table = FORMATS["waterbirds"].read(FORMATS["waterbirds"].options(root=str(tmp_path / "data")))
    bad = table.items[int(table.splits["train"][3])]
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    with pytest.raises(DataError) as error:
        cache.open_or_build(tmp_path / "c", "train", [table.items[i] for i in table.splits["train"]], 37, workers)
    assert str(error.value).startswith(f"{bad}: unreadable image") and "Traceback" not in str(error.value)
    assert not any(p for p in (tmp_path / "c").iterdir())


def test_kept_workers_change_no_result_and_a_resumed_run_repeats_the_whole_one(tmp_path):
    """Augmented training from the cache with kept workers: the weights are the same with 0 or
    2 workers, and a run stopped after its first epoch and resumed ends with the same weights."""
    miniature.waterbirds(tmp_path / "data")

    def config(workers):
        return pipeline_from_dict({
            "selector": "val-wga", "seed": 0, "device": "cpu",
            "backbone": {"name": "small-cnn", "options": {"width": 4}},
            "dataset": {"name": "waterbirds", "options": {"root": str(tmp_path / "data"), "image_size": 16,
                                                          "cache": "decoded", "cache_dir": str(tmp_path / "c")}},
            "train": {"epochs": 3, "batch_size": 8, "eval_batch_size": 16, "num_workers": workers, "lr": 0.01},
            "stages": [{"method": "erm"}]})

    def weights(run):
        return torch.load(next((tmp_path / run).rglob("epoch_003.pt")), weights_only=True)["model"]

    plugins = manager()
    run_pipeline(config(0), tmp_path / "here", plugins, log=lambda m: None)
    whole = run_pipeline(config(2), tmp_path / "workers", plugins, log=lambda m: None)
    from spurcore.testing import StopAtEpoch

    stop = StopAtEpoch(2)
    plugins.register(stop, "stop")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(2), tmp_path / "cut", plugins, log=lambda m: None)
    plugins.unregister(stop)
    assert RunDir(tmp_path / "cut").epochs("0-erm") == [1]
    assert run_pipeline(config(2), tmp_path / "cut", plugins, resume=True, log=lambda m: None) == whole
    for key, value in weights("here").items():
        assert torch.equal(value, weights("workers")[key]) and torch.equal(value, weights("cut")[key]), key


# --- what derived caches key on, and damage found before use (issue 25) ------------------------


def test_the_data_content_digest_follows_labels_and_files_for_caches_derived_from_them(tmp_path):
    """Issue 25, item 1: an embeddings cache keyed on the dataset's config outlived a changed
    `place` column; the content digest it is now keyed on covers the labels and, through each
    dataset's `content_key`, the image files (path, size, mtime), read directly or decoded."""
    from spurcore.api import content_digest
    from test_formats import set_cell

    meta = miniature.waterbirds(tmp_path / "data")
    for options in ({}, {"cache": "decoded", "cache_dir": str(tmp_path / "c")}):
        first = content_digest(build("waterbirds", tmp_path / "data", image_size=32, **options))
        assert content_digest(build("waterbirds", tmp_path / "data", image_size=32, **options)) == first
        set_cell(meta, 20, "place", lambda rows: str(1 - int(rows[20][4])))  # a val row's attribute
        relabelled = content_digest(build("waterbirds", tmp_path / "data", image_size=32, **options))
        image = sorted(meta.parent.rglob("*.jpg"))[5]
        os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
        touched = content_digest(build("waterbirds", tmp_path / "data", image_size=32, **options))
        assert len({first, relabelled, touched}) == 3, options
        set_cell(meta, 20, "place", lambda rows: str(1 - int(rows[20][4])))


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """A built decoded-image cache of the miniature Waterbirds' val split, and its images."""
    root = tmp_path_factory.mktemp("decoded")
    miniature.waterbirds(root / "data")
    data = build("waterbirds", root / "data", image_size=32, cache="decoded", cache_dir=str(root / "c"))
    folder = next((root / "c").iterdir())
    store = data.splits["val"].inputs.store
    return root, folder, [store.image(i) for i in range(len(store))]


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["pixels", "index"]), how=st.sampled_from(["flip", "truncate"]),
       where=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_any_damage_to_the_decoded_image_cache_is_found_before_an_image_is_used(decoded, tmp_path_factory,
                                                                                target, how, where, mask):
    """Issue 25, item 2 and its property: a flipped byte or a cut anywhere in a split's pixel
    file or index either makes the cache rebuilt (`load` refuses it) or stops the read of the
    image it hit, naming the file; every image read is the one that was cached."""
    import shutil

    root, folder, images = decoded
    copy = tmp_path_factory.mktemp("damaged") / folder.name
    shutil.copytree(folder, copy)
    index = json.loads((copy / "val-37px.json").read_text())
    path = copy / (index["pixels"] if target == "pixels" else "val-37px.json")
    data = bytearray(path.read_bytes())
    at = int(where * len(data))
    if how == "flip":
        data[at] ^= mask
    else:
        del data[at:]
    path.write_bytes(bytes(data))
    store = cache.load(copy, "val", 37, index["fingerprint"], len(images))
    if store is None:
        return  # rebuilt by the next build
    for i, expected in enumerate(images):
        try:
            assert torch.equal(store.image(i), expected), i
        except DataError as error:
            assert str(error).startswith(f"{store.path}: image {i} of the decoded-image cache is damaged")
            assert target == "pixels" and how == "flip"
