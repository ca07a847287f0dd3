"""The embedding cache: extracted once per model, reused across stages and runs, rebuilt when
the checkpoint changes; and starting a pipeline from another run's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spurcore.embeddings
from spurcore import hookimpl
from spurcore.embeddings import extract
from spurcore.runner import RunError, open_run, run_pipeline
from spurcore.specs import MitigationSpec


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
