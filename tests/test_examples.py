"""Every example pipeline loads, and resolves against the installed plugins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from click.testing import CliRunner

from spurcore.cli import cli
from spurcore.config import load_pipeline
from spurcore.plugins import PluginManager
from spurcore.finished import open_run
from spurcore.planning import plan

GENERATED = {"waterdigits", "planted"}  # datasets generated in memory, with no folder to read
EXAMPLES = sorted([*(Path(__file__).parents[1] / "examples").glob("*.toml"),
                   *(Path(__file__).parents[1] / "examples" / "memorization").glob("*.toml")])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_pipeline_is_valid(path):
    config = load_pipeline(path)
    planned = plan(config, PluginManager())
    assert planned.stages[0].spec.name == config.stages[0].method
    if config.dataset.name not in GENERATED:  # a real benchmark: its folder, read by the datasets plugin
        assert planned.dataset_options.root.startswith("/data/")
        tokenizer = getattr(planned.dataset_options, "tokenizer", None)
        assert tokenizer in (None, getattr(planned.backbone_options, "model", None))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"erm.toml", "dfr.toml", "neurontune.toml", "fairdropout.toml",
                                          "fairdropout_dfr.toml", "waterbirds_resnet50.toml", "celeba_resnet50.toml",
                                          "multinli_bert.toml", "civilcomments_bert.toml",
                                          "waterbirds_vit_small.toml"}


def test_the_vit_small_example_runs_end_to_end_on_a_tiny_vit(tmp_path):
    """`spur run examples/waterbirds_vit_small.toml` as its header says, on a miniature Waterbirds
    (32-pixel images) and a ViT-Small cut down to 2 blocks of 32 features, with weights from a
    file the test writes (the example's own pretrained = true needs the real weights), on the CPU;
    then `spur gradcam` on the run (ERM next to DFR)."""
    import timm
    from safetensors.torch import save_file
    from spurcore_datasets import miniature

    miniature.waterbirds(tmp_path / "data")
    tiny = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
    weights = tmp_path / "vit_small_tiny.safetensors"
    save_file(timm.create_model("vit_small_patch16_224", num_classes=0, img_size=32, **tiny).state_dict(), str(weights))
    manager = PluginManager(block=["progress"])
    kwargs = "{" + ", ".join(f"{k} = {v}" for k, v in tiny.items()) + "}"
    overrides = [f"dataset.options.root={tmp_path / 'data'}", "dataset.options.image_size=32",
                 "backbone.options.pretrained=false", f"backbone.options.weights='{weights}'",
                 f"backbone.options.kwargs={kwargs}", "device=cpu", "amp=false", "train.epochs=1",
                 "train.batch_size=8", "train.eval_batch_size=16", "train.num_workers=0"]
    run = tmp_path / "run"
    manager.hook.spurcore_register_commands(cli=cli)

    def spur(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], obj={"manager": manager, "plugin_args": []})

    result = spur("run", EXAMPLES[0].with_name("waterbirds_vit_small.toml"), "--out", run, "--quiet",
                  *[a for o in overrides for a in ("-o", o)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["erm", "dfr"]
    assert summary["metrics"]["test"]["group_count"] == {"landbird/land": 2, "landbird/water": 2,
                                                         "waterbird/land": 2, "waterbird/water": 2}
    model = open_run(run, manager).load_model(0)
    loaded = torch.load(run / "checkpoints" / "0-erm" / "epoch_001.pt", weights_only=True)
    assert model.block_paths() == ["embed.blocks.0", "embed.blocks.1"] and model.feature_dim == 32
    assert hasattr(model.embed, "input_norm")  # the images are ImageNet-normalized, the ViT expects 0.5 / 0.5
    assert "embed.input_norm.scale" not in loaded["model"]  # ImageNet -> (x - 0.5) / 0.5, not a weight
    result = spur("gradcam", run, "--per-group", "1")
    assert result.exit_code == 0, result.output
    assert (run / "gradcam.png").read_bytes()[:4] == b"\x89PNG" and "layer embed.blocks.0; 0-erm" in result.output
