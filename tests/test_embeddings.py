"""The embedding cache: extracted once per model, reused across stages and runs, rebuilt when
the checkpoint changes; and starting a pipeline from another run's model."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import spurcore.embeddings
from spurcore import hookimpl
from spurcore.embeddings import extract
from spurcore.data import SplitData, SpuriousData
from spurcore.finished import open_run
from spurcore.planning import RunError
from spurcore.runner import run_pipeline
from spurcore.specs import DatasetSpec, MitigationSpec


class KeepHead:
    """A post-hoc method that records the embeddings it was given and keeps the head."""

    seen: list = []

    def __init__(self, options):
        pass

    @hookimpl
    def spurcore_posthoc_head(self, model, embeddings):
        KeepHead.seen.append(embeddings)
        head = nn.Linear(model.feature_dim, 2)
        head.load_state_dict(model.head.state_dict())
        return head


class Plugin:
    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="keep", kind="posthoc", factory=KeepHead)]


@pytest.fixture
def keep(spur_plugins):
    KeepHead.seen = []
    spur_plugins.register(Plugin(), "keep-plugin")
    return spur_plugins


def test_embeddings_are_extracted_once_and_reused_by_another_run(tmp_path, keep, spur_tiny_config, monkeypatch):
    logs = []
    first = run_pipeline(spur_tiny_config(stages=[{"method": "erm"}, {"method": "keep"}]), tmp_path / "a", keep,
                         log=logs.append)
    files = list((tmp_path / "a" / "embeddings").glob("*.h5"))
    assert len(files) == 1 and any("extracted to" in line for line in logs)
    reopened = open_run(tmp_path / "a", keep)
    direct = extract(reopened.load_model(0), reopened.data, reopened.device)
    for split in ("train", "val", "test"):
        assert np.allclose(KeepHead.seen[0][split].features, direct[split].features, atol=1e-6)
        assert KeepHead.seen[0][split].features.shape == (len(direct[split].y), 16)

    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction should have been skipped")

    monkeypatch.setattr(spurcore.embeddings, "extract", no_extraction)
    monkeypatch.setattr(spurcore.embeddings, "extract_to_file", no_extraction)
    logs.clear()
    second = run_pipeline(spur_tiny_config(init={"run": str(tmp_path / "a"), "stage": 0}, stages=[{"method": "keep"}]),
                          tmp_path / "b", keep, log=logs.append)
    assert any(f"reused from {files[0]}" in line for line in logs)
    assert second["metrics"] == first["metrics"]  # same model, same head
    assert np.array_equal(KeepHead.seen[1]["val"].features, KeepHead.seen[0]["val"].features)


def test_a_changed_checkpoint_is_extracted_again(tmp_path, keep, spur_tiny_config):
    run_pipeline(spur_tiny_config(stages=[{"method": "erm"}, {"method": "keep"}]), tmp_path / "a", keep)
    selected = open_run(tmp_path / "a", keep).stage(0).selected
    other = 1 if selected != 1 else 2
    logs = []
    run_pipeline(spur_tiny_config(init={"run": str(tmp_path / "a"), "stage": 0, "epoch": other}, stages=[{"method": "keep"}]),
                 tmp_path / "b", keep, log=logs.append)
    assert any("extracted to" in line for line in logs)
    assert len(list((tmp_path / "a" / "embeddings").glob("*.h5"))) == 2


def test_init_starts_from_the_named_model_and_checks_it(tmp_path, keep, spur_tiny_config):
    run_pipeline(spur_tiny_config(train={"epochs": 2}), tmp_path / "a", keep)
    source = open_run(tmp_path / "a", keep).load_model(0, epoch=1)
    config = spur_tiny_config(init={"run": str(tmp_path / "a"), "epoch": 1}, train={"epochs": 1, "lr": 1e-9})
    run_pipeline(config, tmp_path / "b", keep)
    tuned = open_run(tmp_path / "b", keep).load_model(0, epoch=1)
    assert torch.allclose(tuned.head.weight, source.head.weight, atol=1e-6)  # lr ~ 0: unchanged
    with pytest.raises(RunError, match="post-hoc method; start with a training stage"):
        run_pipeline(spur_tiny_config(stages=[{"method": "keep"}]), tmp_path / "c", keep)
    with pytest.raises(RunError, match="not a run directory"):
        run_pipeline(spur_tiny_config(init={"run": str(tmp_path / "nowhere")}), tmp_path / "d", keep)


STREAMING_SCRIPT = """
import resource, sys
import numpy as np, torch
from torch import nn
from spurcore.data import SplitData, SpuriousData
from spurcore.device import Device
from spurcore.embeddings import cached
from spurcore.model import SpurModel

n, width = 100_000, 2048  # 800 MB of features in the training split
splits = {s: SplitData(name=s, inputs=torch.zeros(m, 1), y=np.arange(m) % 2, a=np.arange(m) % 2)
          for s, m in (("train", n), ("val", 64), ("test", 64))}
data = SpuriousData(name="wide", splits=splits, class_names=("a", "b"), attr_names=("x", "y"))
model = SpurModel(nn.Linear(1, width), nn.Linear(width, 2), width)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
found = cached(model, data, Device(torch.device("cpu")), {"name": "wide"}, write_to=sys.argv[1], batch_size=512)
assert found.embeddings["train"].features.shape == (n, width)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024,
      isinstance(found.embeddings["train"].features, np.memmap))
"""


def test_extraction_streams_to_the_cache_and_reads_it_back_mapped(tmp_path):
    """800 MB of training features pass through the cache while the process grows by far less
    (concatenating the batches held them twice, 1.6 GB); reading them back maps the file."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", STREAMING_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown, mapped = done.stdout.split()[-2:]
    assert int(grown) < 200, f"the process grew by {grown} MiB while extracting 800 MB of features"
    assert mapped == "True"
    (cache,) = tmp_path.glob("*.h5")
    assert cache.stat().st_size >= 100_000 * 2048 * 4


def test_cached_features_are_the_extracted_ones_and_a_compressed_cache_still_reads(tmp_path, spur_tiny_data,
                                                                                   spur_tiny_backbone):
    import h5py

    from spurcore.device import Device
    from spurcore.embeddings import cached, read
    from spurcore.model import build_model

    data, model = spur_tiny_data, build_model(spur_tiny_backbone, spur_tiny_data.n_classes)
    device = Device(torch.device("cpu"))
    found = cached(model, data, device, {"name": "tiny"}, write_to=tmp_path, batch_size=7)
    direct = extract(model, data, device, batch_size=7)
    for split in data.splits:
        assert isinstance(found.embeddings[split].features, np.memmap)
        assert np.array_equal(found.embeddings[split].features, direct[split].features)
        assert np.array_equal(found.embeddings[split].y, data.splits[split].y)
    assert "KiB per example" in found.describe()
    legacy = tmp_path / "legacy.h5"  # as caches were written before streaming: lzf-compressed
    with h5py.File(legacy, "w") as handle:
        for split, emb in direct.splits.items():
            handle.create_group(split).create_dataset("features", data=emb.features, compression="lzf")
            handle[split].create_dataset("y", data=emb.y)
    again = read(legacy)
    assert np.array_equal(again["val"].features, direct["val"].features) and again["val"].a is None


# --- what the cache is keyed on, and what is checked before it is used (issue 25) ------------


@attrs.frozen(kw_only=True)
class FiledOptions:
    path: str


def build_filed(options: FiledOptions) -> SpuriousData:
    """The tiny data, read from an .npz file as a benchmark is read from its metadata: the same
    config, whatever the file says."""
    with np.load(options.path) as saved:
        splits = {s: SplitData(name=s, inputs=torch.from_numpy(saved[f"{s}_x"]), y=saved[f"{s}_y"], a=saved[f"{s}_a"])
                  for s in ("train", "val", "test")}
    return SpuriousData(name="filed", splits=splits, class_names=("neg", "pos"), attr_names=("off", "on"),
                        input_shape=(8,))


class FiledPlugin:
    @hookimpl
    def spurcore_register_datasets(self):
        return [DatasetSpec(name="filed", build=build_filed, options=FiledOptions)]


def write_filed(path, data):
    np.savez(path, **{f"{s}_{k}": v for s, split in data.splits.items()
                      for k, v in (("x", split.inputs.numpy()), ("y", split.y), ("a", split.a))})


@pytest.fixture
def filed(tmp_path, keep, spur_tiny_data, spur_tiny_config):
    """A trained run `a` on the file-backed tiny data; returns the data file and a config maker."""
    keep.register(FiledPlugin(), "filed-plugin")
    path = tmp_path / "data.npz"
    write_filed(path, spur_tiny_data)

    def config(**keys):
        return spur_tiny_config(dataset={"name": "filed", "options": {"path": str(path)}}, **keys)

    run_pipeline(config(train={"epochs": 2}), tmp_path / "a", keep)
    return path, config


def test_embeddings_of_changed_labels_are_extracted_again(tmp_path, keep, filed, spur_tiny_data):
    """Issue 25, item 1: 40 validation rows change attribute in the data file (same dataset
    config): the cache of the old labels is not reused."""
    path, config = filed
    logs = []
    start = {"init": {"run": str(tmp_path / "a")}, "stages": [{"method": "keep"}]}
    run_pipeline(config(**start), tmp_path / "b", keep, log=logs.append)
    assert any("extracted to" in line for line in logs)
    val = spur_tiny_data.splits["val"]
    changed = val.a.copy()
    changed[:40] = 1 - changed[:40]
    splits = {**spur_tiny_data.splits, "val": SplitData(name="val", inputs=val.inputs, y=val.y, a=changed)}
    write_filed(path, attrs.evolve(spur_tiny_data, splits=splits))
    logs.clear()
    run_pipeline(config(**start), tmp_path / "c", keep, log=logs.append)
    assert not any("reused from" in line for line in logs), logs
    assert np.array_equal(KeepHead.seen[-1]["val"].a, changed)
    assert len(list((tmp_path / "a" / "embeddings").glob("*.h5"))) == 2


def test_a_damaged_cache_is_extracted_again_saying_why(tmp_path, keep, filed):
    """Issue 25, item 2: 7 rows of val's features and labels dropped from the cache file; then
    one byte of train's features flipped: each time the file is named and extracted again."""
    import h5py

    _, config = filed
    start = {"init": {"run": str(tmp_path / "a")}, "stages": [{"method": "keep"}]}
    run_pipeline(config(**start), tmp_path / "b", keep)
    (cache,) = (tmp_path / "a" / "embeddings").glob("*.h5")
    with h5py.File(cache, "r+") as handle:
        for key in ("features", "y", "a"):
            kept = handle["val"][key][7:]
            del handle["val"][key]
            handle["val"].create_dataset(key, data=kept)
    logs = []
    run_pipeline(config(**start), tmp_path / "c", keep, log=logs.append)
    assert any(f"{cache} is not used: split 'val': features of shape (113, 16)" in line for line in logs), logs
    assert any(f"extracted to {cache}" in line for line in logs)
    assert KeepHead.seen[-1]["val"].features.shape == (120, 16)
    with h5py.File(cache, "r") as handle:
        offset = handle["train"]["features"].id.get_offset()
    with open(cache, "r+b") as handle:
        handle.seek(offset + 5)
        byte = handle.read(1)
        handle.seek(offset + 5)
        handle.write(bytes([byte[0] ^ 0x40]))
    logs.clear()
    run_pipeline(config(**start), tmp_path / "d", keep, log=logs.append)
    assert any("split 'train': features damaged" in line for line in logs), logs
    assert np.array_equal(KeepHead.seen[-1]["train"].features, KeepHead.seen[0]["train"].features)


def test_a_post_hoc_run_from_a_read_only_run_caches_its_embeddings_in_its_own_folder(tmp_path, keep, filed,
                                                                                     spur_read_only):
    """Issue 25, item 6: the run that trained the model cannot be written: the cache goes into
    the new run, which says so; the source run is left as it was."""
    _, config = filed
    before = sorted(p.name for p in (tmp_path / "a").rglob("*"))
    spur_read_only(tmp_path / "a")
    logs = []
    run_pipeline(config(init={"run": str(tmp_path / "a")}, stages=[{"method": "keep"}]), tmp_path / "b", keep,
                 log=logs.append)
    (cache,) = (tmp_path / "b" / "embeddings").glob("*.h5")
    assert any(f"cached here since {tmp_path / 'a' / 'embeddings'}" in line and "cannot be written" in line
               for line in logs), logs
    assert any(f"extracted to {cache}" in line for line in logs)
    assert sorted(p.name for p in (tmp_path / "a").rglob("*")) == before


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A cache file of the tiny data, its data, key and the features it holds."""
    from spurcore.data import content_digest
    from spurcore.device import Device
    from spurcore.embeddings import cached, fingerprint
    from spurcore.model import build_model
    from spurcore.testing import MLPOptions, TinyOptions, make_mlp, make_tiny

    torch.manual_seed(0)
    data = make_tiny(TinyOptions(n_train=40))
    model = build_model(make_mlp(MLPOptions(hidden=4), data), data.n_classes)
    found = cached(model, data, Device(torch.device("cpu")), {"name": "tiny"}, write_to=tmp_path_factory.mktemp("c"))
    key = fingerprint(model, {"name": "tiny"}, content_digest(data))
    return found.path, data, key, {s: np.array(e.features) for s, e in found.embeddings.splits.items()}


DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("rows"), st.sampled_from(["train", "val", "test"]), st.integers(-3, 3).filter(bool)),
    st.tuples(st.just("width"), st.sampled_from(["train", "val", "test"]), st.integers(-2, 2).filter(bool)),
)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE)
def test_any_damage_to_a_cache_file_is_found_before_use(pristine, tmp_path_factory, damage):
    """Truncated, a byte flipped anywhere, rows or feature columns added or dropped: `problem`
    names it, or (a byte no reader looks at) the file still gives exactly its features."""
    import shutil

    import h5py

    from spurcore.embeddings import problem, read

    source, data, key, features = pristine
    path = tmp_path_factory.mktemp("damaged") / source.name
    shutil.copyfile(source, path)
    size = path.stat().st_size
    if damage[0] == "truncate":
        with open(path, "r+b") as handle:
            handle.truncate(int(damage[1] * size))
    elif damage[0] == "flip":
        with open(path, "r+b") as handle:
            handle.seek(int(damage[1] * size))
            byte = handle.read(1)[0]
            handle.seek(int(damage[1] * size))
            handle.write(bytes([byte ^ damage[2]]))
    else:
        with h5py.File(path, "r+") as handle:
            group = handle[damage[1]]
            old = group["features"][()]
            rows, width = old.shape
            shape = (rows + damage[2], width) if damage[0] == "rows" else (rows, max(width + damage[2], 1))
            new = np.resize(old, shape).astype(np.float32)
            del group["features"]
            group.create_dataset("features", data=new)
    found = problem(path, data, key)
    if found is None:
        again = read(path)
        for split, expected in features.items():
            assert np.array_equal(again[split].features, expected), damage
    else:
        assert isinstance(found, str) and found
