"""The methods on a tiny timm ViT (2 blocks of 32 features, 8-pixel patches of 32-pixel images),
through pipelines and the `spur` commands, with the installed plugins: FairDropout after a
block on the token features, DFR and NeuronTune on the pooled features, the tracer's neurons
(the hidden units of the MLP blocks) and Grad-CAM on the patch tokens."""

from __future__ import annotations

import json

import attrs
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spurcore import hookimpl
from spurcore.api import (DatasetSpec, Normalization, PluginManager, SplitData, SpuriousData, cli, open_run,
                          pipeline_from_dict, run_pipeline)

TINY_VIT = {"model": "vit_tiny_patch16_224", "kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}}
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@attrs.frozen(kw_only=True)
class PictureOptions:
    seed: int = 0


def make_pictures(options: PictureOptions) -> SpuriousData:
    """3x32x32 images, ImageNet-normalised: the class brightens the centre, the attribute (which
    agrees with the class on 80% of training images) the background."""
    rng = np.random.default_rng(options.seed)
    splits = {}
    for name, n, agree in (("train", 48, 0.8), ("val", 32, 0.5), ("test", 32, 0.5)):
        y = np.arange(n) % 2
        a = np.where(rng.random(n) < agree, y, 1 - y)
        x = rng.normal(0, 0.3, (n, 3, 32, 32)).astype(np.float32)
        x += (a - 0.5)[:, None, None, None]
        x[:, :, 8:24, 8:24] += 1.5 * (2 * y - 1)[:, None, None, None]
        splits[name] = SplitData(name=name, inputs=torch.from_numpy(x), y=y, a=a)
    return SpuriousData(name="pictures", splits=splits, class_names=("dim", "bright"), attr_names=("dark", "light"),
                        input_shape=(3, 32, 32), normalization=IMAGENET)


class PicturePlugin:
    @hookimpl
    def spurcore_register_datasets(self):
        return [DatasetSpec(name="pictures", build=make_pictures, options=PictureOptions, description="32-px images")]


@pytest.fixture(scope="module")
def manager():
    """The installed plugins (entry points), the pictures, no progress bars."""
    plugins = PluginManager(block=["progress"])
    plugins.register(PicturePlugin(), "pictures")
    plugins.hook.spurcore_register_commands(cli=cli)
    return plugins


def pipeline(stages: list[dict], requires: list[str]) -> dict:
    return {"selector": "val-wga", "seed": 0, "device": "cpu", "requires": ["timm", *requires],
            "dataset": {"name": "pictures"}, "backbone": {"name": "timm", "options": TINY_VIT},
            "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "eval_batch_size": 64}, "stages": stages}


def spur(manager, *args):
    result = CliRunner().invoke(cli, [str(a) for a in args], obj={"manager": manager, "plugin_args": []})
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def posthoc_run(manager, tmp_path_factory):
    """ERM, then DFR and NeuronTune on the ViT's pooled (class-token) features."""
    path = tmp_path_factory.mktemp("vit") / "run"
    stages = [{"method": "erm"}, {"method": "dfr", "options": {"retrains": 2}},
              {"method": "neurontune", "options": {"epochs": 2}}]
    summary = run_pipeline(pipeline_from_dict(pipeline(stages, ["dfr", "neurontune"])), path, manager,
                           log=lambda m: None)
    return path, summary


def test_dfr_and_neurontune_refit_the_head_on_the_pooled_features(posthoc_run, manager):
    path, summary = posthoc_run
    assert [s["name"] for s in summary["stages"]] == ["erm", "dfr", "neurontune"]
    (cache,) = (path / "embeddings").glob("*.h5")  # one model's features, shared by both post-hoc stages
    with h5py.File(cache, "r") as handle:
        shapes = {name: handle[name]["features"].shape for name in ("train", "val", "test")}
    assert shapes == {"train": (48, 32), "val": (32, 32), "test": (32, 32)}  # 32 = the ViT's embed_dim
    run = open_run(path, manager)
    erm, dfr = run.load_model(0), run.load_model(1)
    assert dfr.head.weight.shape == (2, 32) and not torch.equal(erm.head.weight, dfr.head.weight)
    assert all(torch.equal(a, b) for a, b in zip(erm.embed.state_dict().values(), dfr.embed.state_dict().values()))
    for stage in summary["stages"]:
        assert 0 <= stage["metrics"]["test"]["worst_group_acc"] <= stage["metrics"]["test"]["avg_acc"] <= 1


def test_the_tracer_traces_the_hidden_units_of_the_mlp_blocks(posthoc_run, manager, tmp_path):
    path, _ = posthoc_run
    out = tmp_path / "trace"
    spur(manager, "trace", path, "--stage", "0", "--k", "1", "--intervention", "zero", "--criterion", "gradient,magnitude",
         "--repeats", "1", "--per-layer-k", "1", "--rewind", "", "--subset-size", "8", "--out", out,
         "--quiet")
    trace = json.loads((out / "trace.json").read_text())
    layers = trace["neurons"]["layers"]
    assert [(l["path"], l["kind"], l["units"]) for l in layers] == [
        ("embed.blocks.0.mlp.fc1", "linear", 128), ("embed.blocks.1.mlp.fc1", "linear", 128)]
    assert trace["neurons"]["total"] == 256
    picked = {n for e in trace["effects"] if e["scope"] == "global" for n in e["neurons"] or ()}
    assert picked and all(n.startswith("embed.blocks.") and ".mlp.fc1[" in n for n in picked)


def test_gradcam_maps_the_patch_tokens(posthoc_run, manager, tmp_path):
    path, _ = posthoc_run
    figure = tmp_path / "cam.png"
    result = spur(manager, "gradcam", path, "--stage", "1", "--per-group", "1", "--out", figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the default layer: the last block but one (the last block's patch tokens never reach the class token)
    assert "(layer embed.blocks.0; 0-erm " in result.output and "1-dfr " in result.output
    assert "/4 correct" in result.output


def test_fairdropout_after_a_block_drops_feature_channels_of_every_token(manager, tmp_path):
    stages = [{"method": "fairdropout", "options": {"placement": ["blocks.0"], "p_gen": 0.5, "p_mem": 0.5}}]
    run_pipeline(pipeline_from_dict(pipeline(stages, ["fairdropout"])), tmp_path / "fd", manager, log=lambda m: None)
    model = open_run(tmp_path / "fd", manager).load_model()
    block, layer = model.embed.blocks[0]
    assert type(layer).__name__ == "FairDropout" and layer.tokens
    x = make_pictures(PictureOptions()).splits["test"].inputs[:4]
    seen = {}
    model.embed.blocks[0].register_forward_hook(lambda m, i, out: seen.__setitem__("out", out))
    model.eval()
    with torch.no_grad():
        model(x)
    tokens = seen["out"]  # (4, 1 + 16, 32): the 16 memorizing channels of the last dimension dropped
    assert tokens.shape == (4, 17, 32)
    assert torch.all(tokens[..., 16:] == 0) and torch.all(tokens[..., :16].abs().sum((0, 1)) > 0)
    model.train()
    with torch.no_grad():
        model(x, index=torch.tensor([0, 1, 2, 3]))
    kept = seen["out"][..., 16:] != 0  # in training each example keeps its own memorizing channels...
    assert torch.all(kept == kept[:, :1, :])  # ...the same for all of its tokens
    assert 0 < kept[:, 0].float().mean() < 1
    with pytest.raises(Exception, match=r"placement 'block9'.*its blocks: blocks.0, blocks.1"):
        run_pipeline(pipeline_from_dict(pipeline([{"method": "fairdropout", "options": {"placement": ["block9"]}}],
                                                 ["fairdropout"])), tmp_path / "bad", manager, log=lambda m: None)
