"""Digit pretraining of small-cnn: what it trains on, that it is deterministic and cached, and
that a run started from it does not depend on whether the cache existed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurcore.builtins import digits_pretraining as pretraining
from spurcore.builtins import waterdigits
from spurcore.builtins import waterdigits_gen as gen
from spurcore.builtins.backbones import SmallCNNOptions
from spurcore.builtins.networks import build_small_cnn
from spurcore.config import pipeline_from_dict
from spurcore.runner import run_pipeline


@pytest.fixture
def quick(tmp_path, monkeypatch):
    """A tiny recipe (one rendering per digit, one epoch) and a private cache."""
    monkeypatch.setenv(waterdigits.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(pretraining.RECIPE, "copies", 1)
    monkeypatch.setitem(pretraining.RECIPE, "epochs", 1)
    monkeypatch.setitem(pretraining.RECIPE, "batch_size", 256)
    return tmp_path / "cache" / "pretrained"


@pytest.fixture(scope="module")
def data():
    return waterdigits.build(waterdigits.WaterdigitsOptions(scale=0.02, size=16, cache=False))


def test_pretraining_uses_only_the_training_split_source_digits(data):
    pools = gen.pools(0)
    sources = pretraining.train_sources(data)
    assert np.array_equal(sources, np.sort(pools["train"]))
    assert not set(sources) & (set(pools["val"]) | set(pools["test"]))
    x, digits = pretraining.render(sources[:30], 2, 16, np.random.default_rng(0))
    _, all_digits = gen.source_digits()
    assert x.shape == (60, 3, 16, 16) and x.dtype == np.uint8
    assert sorted(digits.tolist()) == sorted(np.repeat(all_digits[sources[:30]], 2).tolist())

    class Other:
        provenance: dict = {}

    assert len(pretraining.train_sources(Other())) == 1797  # data not made of the digits: all of them


def test_pretraining_backgrounds_carry_no_label_information():
    sources = np.arange(1797)
    x, digits = pretraining.render(sources, 1, 16, np.random.default_rng(0))
    corner = x[:, :, :3, :3].reshape(len(x), 3, -1).mean(2)  # background colour, away from the stroke
    means = np.stack([corner[digits == d].mean(0) for d in range(10)])
    assert np.abs(means - means.mean(0)).max() < 8  # of 255: every digit sees the same colours


def test_pretraining_is_deterministic_and_leaves_global_state_alone(quick, data):
    net = build_small_cnn(SmallCNNOptions(width=4), data).module
    rng_before, threads = torch.get_rng_state(), torch.get_num_threads()
    first, record = pretraining.pretrain(net, pretraining.train_sources(data), progress=False)
    again, _ = pretraining.pretrain(net, pretraining.train_sources(data), progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before) and torch.get_num_threads() == threads
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["block1.0.weight"], net.state_dict()["block1.0.weight"])
    assert record["images"] == len(pretraining.train_sources(data)) and len(record["held_out_accuracy"]) == 1


def test_pretrained_weights_are_cached_by_fingerprint_and_rebuilt_when_unreadable(quick, data, monkeypatch):
    built = build_small_cnn(SmallCNNOptions(width=4, pretrained="digits"), data).module
    files = sorted(quick.glob("*.pt"))
    assert len(files) == 1 and files[0].with_suffix(".json").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("pretrained again although the cache holds the weights")

    with monkeypatch.context() as patch:
        patch.setattr(pretraining, "pretrain", fail)
        cached = build_small_cnn(SmallCNNOptions(width=4, pretrained="digits"), data).module
    assert all(torch.equal(v, cached.state_dict()[k]) for k, v in built.state_dict().items())
    build_small_cnn(SmallCNNOptions(width=8, pretrained="digits"), data)
    assert len(list(quick.glob("*.pt"))) == 2  # another architecture, another fingerprint
    files[0].write_bytes(b"damaged")
    rebuilt = build_small_cnn(SmallCNNOptions(width=4, pretrained="digits"), data).module
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in built.state_dict().items())


def test_pretrained_digits_need_three_channels(quick):
    class Gray:
        name, input_shape, provenance = "gray", (1, 16, 16), {}

    with pytest.raises(pretraining.PretrainingError, match="needs 3-channel images; dataset 'gray' has 1"):
        build_small_cnn(SmallCNNOptions(width=4, pretrained="digits"), Gray())


def test_a_run_from_pretrained_weights_is_the_same_with_and_without_the_cache(quick, tmp_path, spur_plugins):
    config = pipeline_from_dict({
        "device": "cpu", "dataset": {"name": "waterdigits", "options": {"scale": 0.02, "size": 16, "cache": False}},
        "backbone": {"name": "small-cnn", "options": {"width": 4, "pretrained": "digits"}},
        "train": {"epochs": 2, "batch_size": 32}, "stages": [{"method": "erm"}], "selector": "val-worst-class",
    })
    first = run_pipeline(config, tmp_path / "first", spur_plugins, log=lambda m: None)  # builds the weights
    assert list(quick.glob("*.pt"))
    second = run_pipeline(config, tmp_path / "second", spur_plugins, log=lambda m: None)  # reads them
    assert first == second


def test_spur_prepare_builds_the_weights_ahead_of_time(quick, tmp_path, spur_cli):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        'selector = "val-worst-class"\ndevice = "cpu"\n[dataset]\nname = "waterdigits"\n'
        '[dataset.options]\nscale = 0.02\nsize = 16\ncache = false\n'
        '[backbone]\nname = "small-cnn"\n[backbone.options]\nwidth = 4\npretrained = "digits"\n'
        '[[stages]]\nmethod = "erm"\n'
    )
    result = spur_cli("prepare", pipeline)
    assert result.exit_code == 0, result.output
    assert "dataset waterdigits: train 96, val 24, test 116" in result.output
    assert "backbone small-cnn, 16 features, 2 classes" in result.output
    assert len(list(quick.glob("*.pt"))) == 1
    bad = spur_cli("prepare", pipeline, "-o", 'backbone.options.pretrained="imagenet"')
    assert bad.exit_code == 2 and "backbone.options.pretrained: 'imagenet' is not one of '', 'digits'" in bad.output
