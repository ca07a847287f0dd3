"""The writer and reader: round trip, layout, bounded memory, and a killed writer."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import weakref
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from spurcore_activations import ActivationError, ActivationFile, ActivationWriter, SCHEMA_VERSION
from spurcore_activations.schema import CHUNK_MAX, CHUNK_MIN, chunk_shape

SPLITS = ["train", "val", "test"]


def writer(path, **kw):
    return ActivationWriter(path, splits=SPLITS, class_names=["c0", "c1"], attr_names=["a0", "a1"],
                            attrs={"config_hash": "abc"}, **kw)


def batch(rng, n, widths, start):
    acts = {m: rng.normal(size=(n, w)).astype(np.float32) for m, w in widths.items()}
    y = rng.integers(0, 2, n)
    a = rng.integers(-1, 2, n)
    return acts, np.arange(start, start + n), y, a


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.dictionaries(st.sampled_from(["embed", "embed.block2", "head", "x.0.conv"]),
                           st.integers(1, 300), min_size=1, max_size=3),
    sizes=st.lists(st.integers(0, 70), min_size=1, max_size=6),
    splits=st.lists(st.sampled_from(SPLITS), min_size=6, max_size=6),
    compression=st.sampled_from(["lzf", "gzip"]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_equals_what_was_written_in_order(widths, sizes, splits, compression, seed):
    rng = np.random.default_rng(seed)
    written = {m: [] for m in widths}
    meta = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.h5"
        with writer(path, compression=compression, rows_hint=32) as w:
            start = 0
            for i, n in enumerate(sizes):
                acts, index, y, a = batch(rng, n, widths, start)
                split, epoch = splits[i], i % 3
                w.append(acts, index=index, y=y, a=a, split=split, epoch=epoch, stage=1)
                for m in widths:
                    written[m].append(acts[m])
                meta += [(ix, yy, aa, split, epoch) for ix, yy, aa in zip(index, y, a)]
                start += n
        f = ActivationFile(path)
        assert sorted(f.modules) == sorted(widths) and len(f) == sum(sizes)
        for m in widths:
            assert np.array_equal(f.read(m), np.concatenate(written[m]))
        rows = f.index()
        assert [(r["index"], r["y"], r["a"], r["split"], r["epoch"]) for r in rows] == meta
        assert np.array_equal(rows["group"], np.where(rows["a"] >= 0, rows["y"] * 2 + rows["a"], -1))
        assert set(rows["stage"]) <= {1}
        for split in set(splits):
            for epoch in (0, 1, 2):
                mask = (rows["split"] == split) & (rows["epoch"] == epoch)
                for m in widths:
                    assert np.array_equal(f.read(m, split=split, epoch=epoch), np.concatenate(written[m])[mask])
                assert np.array_equal(f.index(split=split, epoch=epoch), rows[mask])
        mask = rows["group"] == 3
        m = next(iter(widths))
        assert np.array_equal(f.read(m, group=3), np.concatenate(written[m])[mask])
        assert np.array_equal(f.read(m, group="c1/a1"), f.read(m, group=3))


def test_layout_chunks_compression_swmr_and_attributes(tmp_path):
    path = tmp_path / "a.h5"
    rng = np.random.default_rng(0)
    with writer(path, compression="gzip", rows_hint=512) as w:
        for i in range(3):
            acts, index, y, a = batch(rng, 4, {"embed": 128, "wide": 270_000}, 4 * i)
            w.append(acts, index=index, y=y, a=a, split="val", epoch=2)
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION and f.attrs["config_hash"] == "abc"
        assert f.id.get_create_plist().get_version()[0] >= 3  # superblock v3: SWMR-capable (libver latest)
        for name in ("embed", "wide"):
            ds = f["modules"][name]
            assert ds.maxshape == (None, ds.shape[1]) and ds.compression == "gzip" and ds.shuffle
            assert CHUNK_MIN <= np.prod(ds.chunks) * 4 <= CHUNK_MAX
        assert f["index"].maxshape == (None,) and f["index"].chunks is not None
    f = ActivationFile(path)
    assert f.splits == ["val"] and f.epochs == [2] and f.units == {"embed": 128, "wide": 270_000}


@given(units=st.integers(1, 2_000_000), itemsize=st.sampled_from([1, 4, 8, 39]), hint=st.integers(1, 100_000))
def test_chunk_shapes_stay_within_10kib_and_1mib(units, itemsize, hint):
    shape = chunk_shape(units, itemsize, hint)
    nbytes = int(np.prod(shape)) * itemsize
    assert nbytes <= CHUNK_MAX
    assert nbytes >= min(CHUNK_MIN, units * itemsize)


def test_mismatched_modules_and_splits_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    with writer(tmp_path / "a.h5") as w:
        acts, index, y, a = batch(rng, 4, {"embed": 3}, 0)
        w.append(acts, index=index, y=y, a=a, split="val", epoch=1)
        with pytest.raises(ActivationError, match="records modules"):
            w.append({"other": acts["embed"]}, index=index, y=y, a=a, split="val", epoch=1)
        with pytest.raises(ActivationError, match="units"):
            w.append({"embed": np.zeros((4, 5))}, index=index, y=y, a=a, split="val", epoch=1)
        with pytest.raises(ActivationError, match="not one of"):
            w.append(acts, index=index, y=y, a=a, split="holdout", epoch=1)


def test_writer_keeps_nothing_it_wrote(tmp_path):
    """Memory does not grow with the data: no written array stays referenced, and the
    Python-side peak over 300 appends of 128 KiB (37 MiB in all) stays under 2 MiB."""
    rng = np.random.default_rng(0)
    with writer(tmp_path / "a.h5", rows_hint=256) as w:
        acts, index, y, a = batch(rng, 256, {"embed": 128}, 0)
        w.append(acts, index=index, y=y, a=a, split="val", epoch=1)  # file created, caches warm
        probe = weakref.ref(acts["embed"])
        del acts
        gc.collect()
        assert probe() is None
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            w.append({"embed": rng.normal(size=(256, 128)).astype(np.float32)}, index=np.arange(256), y=y, a=a,
                     split="val", epoch=i)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak - base < 2 * 2**20, (peak - base)
    assert current - base < 256 * 2**10, (current - base)
    assert len(ActivationFile(tmp_path / "a.h5")) == 301 * 256


CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from spurcore_activations import ActivationWriter
    path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    w = ActivationWriter(path, splits=["val", "test"], class_names=["c0", "c1"], attr_names=["a0", "a1"])
    i = 0
    while True:
        x = np.full((37, 20), float(i), dtype=np.float32)
        w.append({"embed": x, "embed.block2": x[:, :5] * 2}, index=np.arange(37 * i, 37 * (i + 1)),
                 y=np.ones(37, int), a=np.zeros(37, int), split="val", epoch=i)
        i += 1
        print(i, flush=True)
        if mode == "self" and i == n:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "exit" and i == n:
            os._exit(3)
""")


def check_killed_file(path, committed):
    f = ActivationFile(path)
    assert len(f) >= committed
    n = len(f) // 37
    assert len(f) == 37 * n  # whole appends only
    emb = f.read("embed")
    assert np.array_equal(emb, np.repeat(np.arange(n, dtype=np.float32), 37)[:, None].repeat(20, 1))
    assert np.array_equal(f.read("embed.block2"), emb[:, :5] * 2)
    assert np.array_equal(f.index()["index"], np.arange(37 * n))
    assert f.epochs == list(range(n))


@pytest.mark.parametrize("mode", ["self", "exit"])
def test_a_killed_writer_leaves_every_flushed_row(tmp_path, mode):
    path = tmp_path / "killed.h5"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), mode, "5"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == (-signal.SIGKILL if mode == "self" else 3), proc.stderr
    check_killed_file(path, 5 * 37)
    assert len(ActivationFile(path)) == 5 * 37


def test_a_writer_killed_from_outside_mid_stream(tmp_path):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "loop", "0"], stdout=subprocess.PIPE, text=True)
    try:
        last = 0
        for line in proc.stdout:
            last = int(line)
            if last >= 40:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    check_killed_file(path, last * 37)


def test_a_live_file_reads_while_the_writer_appends(tmp_path):
    rng = np.random.default_rng(1)
    with writer(tmp_path / "live.h5") as w:
        for i in range(3):
            acts, index, y, a = batch(rng, 10, {"embed": 4}, 10 * i)
            w.append(acts, index=index, y=y, a=a, split="test", epoch=0)
            assert len(ActivationFile(tmp_path / "live.h5")) == 10 * (i + 1)
            assert np.array_equal(ActivationFile(tmp_path / "live.h5").read("embed")[-10:], acts["embed"])
