"""spurcore's pytest plugin (entry point `pytest11: spurcore`): fixtures for testing spurcore
and its plugins against a tiny spurious dataset (`tiny`) and a tiny backbone (`mlp`).

    def test_my_method(plugins, tiny_config, tmp_path):
        plugins.register(MyPlugin(), "mine")
        summary = run_pipeline(tiny_config(stages=[{"method": "mine"}]), tmp_path / "run", plugins)
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch
from torch import nn

from spurcore import hookimpl
from spurcore.config import pipeline_from_dict
from spurcore.data import SplitData, SpuriousData
from spurcore.model import Backbone
from spurcore.plugins import PluginManager
from spurcore.specs import BackboneSpec, DatasetSpec


@attrs.frozen(kw_only=True)
class TinyOptions:
    n_train: int = 200
    seed: int = 0
    attributes: bool = True


def make_tiny(options: TinyOptions) -> SpuriousData:
    """8-d inputs: dimension 0 carries the class (noisily), dimension 1 the attribute, which
    agrees with the class on 90% of training examples and on half of val/test."""
    rng = np.random.default_rng(options.seed)
    splits = {}
    for name, n, agree in (("train", options.n_train, 0.9), ("val", 120, 0.5), ("test", 160, 0.5)):
        y = rng.integers(0, 2, n)
        a = np.where(rng.random(n) < agree, y, 1 - y)
        x = rng.normal(0, 1, (n, 8)).astype(np.float32)
        x[:, 0] += 1.5 * (2 * y - 1)
        x[:, 1] += 3.0 * (2 * a - 1)
        splits[name] = SplitData(name=name, inputs=torch.from_numpy(x), y=y, a=a if options.attributes else None)
    return SpuriousData(name="tiny", splits=splits, class_names=("neg", "pos"), attr_names=("off", "on"),
                        input_shape=(8,))


@attrs.frozen(kw_only=True)
class MLPOptions:
    hidden: int = 16


def make_mlp(options: MLPOptions, data: SpuriousData) -> Backbone:
    net = nn.Sequential(nn.Linear(data.input_shape[0], options.hidden), nn.ReLU())
    return Backbone(net, options.hidden)


class TinyPlugin:
    """The test plugin: dataset `tiny` and backbone `mlp`."""

    @hookimpl
    def spurcore_register_datasets(self):
        return [DatasetSpec(name="tiny", build=make_tiny, options=TinyOptions, description="tiny test data")]

    @hookimpl
    def spurcore_register_backbones(self):
        return [BackboneSpec(name="mlp", build=make_mlp, options=MLPOptions, description="tiny MLP")]


@pytest.fixture
def plugins() -> PluginManager:
    """A plugin manager with the built-ins and the tiny test plugin (no entry points)."""
    manager = PluginManager(entry_points=False, block=["progress"])
    manager.register(TinyPlugin(), "tiny")
    return manager


def tiny_pipeline(**overrides) -> dict:
    data = {
        "selector": "val-wga",
        "seed": 0,
        "device": "cpu",
        "dataset": {"name": "tiny"},
        "backbone": {"name": "mlp"},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01},
        "stages": [{"method": "erm"}],
    }
    data.update(overrides)
    return data


@pytest.fixture
def tiny_config():
    """Build a validated tiny pipeline; keyword arguments replace top-level keys."""

    def build(**overrides):
        return pipeline_from_dict(tiny_pipeline(**overrides))

    return build
