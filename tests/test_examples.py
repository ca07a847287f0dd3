"""Every example pipeline loads, and resolves against the installed plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from spurcore.config import load_pipeline
from spurcore.plugins import PluginManager
from spurcore.runner import plan

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_pipeline_is_valid(path):
    config = load_pipeline(path)
    planned = plan(config, PluginManager())
    assert planned.stages[0].spec.name == config.stages[0].method
    if config.dataset.name != "waterdigits":  # a real benchmark: its folder, read by the datasets plugin
        assert planned.dataset_options.root.startswith("/data/")
        tokenizer = getattr(planned.dataset_options, "tokenizer", None)
        assert tokenizer in (None, getattr(planned.backbone_options, "model", None))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"erm.toml", "dfr.toml", "neurontune.toml", "fairdropout.toml",
                                          "fairdropout_dfr.toml", "waterbirds_resnet50.toml", "celeba_resnet50.toml",
                                          "multinli_bert.toml", "civilcomments_bert.toml"}
