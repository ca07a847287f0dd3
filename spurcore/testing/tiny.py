"""The kit's miniature world: a tiny spurious dataset (`tiny`), a tiny backbone (`mlp`) and a
tiny last-layer stage (`tiny-refit`), registered by `TinyPlugin`. Everything trains in well
under a second on a CPU, so plugin tests can run whole pipelines."""

from __future__ import annotations

import attrs
import numpy as np
import torch
from torch import nn

from spurcore import hookimpl
from spurcore.config import FieldError
from spurcore.data import REQUIRED_SPLITS, SplitData, SpuriousData
from spurcore.model import Backbone, linear_head
from spurcore.specs import BackboneSpec, DatasetSpec, MitigationSpec


def _attribute_splits(instance, attribute, value) -> None:
    if isinstance(value, list) and set(value) - set(REQUIRED_SPLITS):
        raise FieldError(attribute.name, f"names unknown splits {sorted(set(value) - set(REQUIRED_SPLITS))}")


@attrs.frozen(kw_only=True)
class TinyOptions:
    """`attributes`: true (attribute labels on every split), false (none), or the list of
    splits that keep them (the conformance suite hides the others from a method)."""

    n_train: int = 200
    seed: int = 0
    attributes: bool | list[str] = attrs.field(default=True, validator=_attribute_splits)

    def keeps_attributes(self, split: str) -> bool:
        return self.attributes if isinstance(self.attributes, bool) else split in self.attributes


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
        splits[name] = SplitData(name=name, inputs=torch.from_numpy(x), y=y,
                                 a=a if options.keeps_attributes(name) else None)
    return SpuriousData(name="tiny", splits=splits, class_names=("neg", "pos"), attr_names=("off", "on"),
                        input_shape=(8,))


@attrs.frozen(kw_only=True)
class MLPOptions:
    hidden: int = 16


def make_mlp(options: MLPOptions, data: SpuriousData) -> Backbone:
    net = nn.Sequential(nn.Linear(data.input_shape[0], options.hidden), nn.ReLU())
    return Backbone(net, options.hidden)


class TinyRefit:
    """A last-layer stage for tests: a ridge regression of one-hot classes on the validation
    embeddings (closed form, deterministic), reading no attribute labels."""

    def __init__(self, options: None) -> None:
        self.options = options

    @hookimpl
    def spurcore_posthoc_head(self, run, embeddings):
        val = embeddings["val"]
        x = torch.from_numpy(np.c_[val.features, np.ones(len(val.y))]).double()
        targets = torch.nn.functional.one_hot(torch.tensor(val.y), run.data.n_classes).double()
        solution = torch.linalg.solve(x.T @ x + 1e-3 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ targets)
        return linear_head(solution[:-1].T, solution[-1])


class TinyPlugin:
    """The test plugin: dataset `tiny`, backbone `mlp`, post-hoc method `tiny-refit`."""

    @hookimpl
    def spurcore_register_datasets(self):
        return [DatasetSpec(name="tiny", build=make_tiny, options=TinyOptions, description="tiny test data")]

    @hookimpl
    def spurcore_register_backbones(self):
        return [BackboneSpec(name="mlp", build=make_mlp, options=MLPOptions, description="tiny MLP")]

    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="tiny-refit", factory=TinyRefit, kind="posthoc",
                               description="test last-layer refit on val")]
