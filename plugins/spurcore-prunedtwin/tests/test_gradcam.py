"""Grad-CAM (`spurcore_prunedtwin.gradcam`) and `spur gradcam`."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import spurcore_prunedtwin as pt
from spurcore import hookimpl
from spurcore.api import (DatasetSpec, Layout, SplitData, SpurcoreError, SpuriousData, SpurModel, TokenGrid,
                          pipeline_from_dict, run_pipeline)
from spurcore.testing import tiny_pipeline
from spurcore_prunedtwin.gradcam import GradCAMError, default_layer, gradcam


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Sequential()
        self.embed.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
        self.embed.add_module("relu1", nn.ReLU(inplace=True))
        self.embed.add_module("conv2", nn.Conv2d(4, 6, 3, padding=1, stride=2))
        self.embed.add_module("bn", nn.BatchNorm2d(6))
        self.embed.add_module("relu2", nn.ReLU(inplace=True))
        self.head = nn.Linear(6, 3)

    def forward(self, x, index=None):
        return self.head(self.embed(x).mean((2, 3)))


def direct_gradcam(model, x, target):
    """Grad-CAM written out: run the layers by hand, take the activation's gradient by autograd."""
    model.eval()
    a = model.embed.conv2(model.embed.relu1(model.embed.conv1(x)))
    a = a.detach().requires_grad_(True)
    logits = model.head(F.relu(model.embed.bn(a)).mean((2, 3)))
    logits[torch.arange(len(x)), target].sum().backward()
    weights = a.grad.mean((2, 3))
    cam = torch.relu(torch.einsum("nc,nchw->nhw", weights, a.detach()))
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).view_as(cam)


def test_gradcam_equals_direct_computation_and_is_in_unit_range():
    model = TinyConvNet()
    model.train()
    x = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 1, 0])
    cam = gradcam(model, x, target, "embed.conv2")
    assert cam.shape == (5, 12, 12)
    assert not cam.requires_grad
    assert cam.min() >= 0 and cam.max() <= 1
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients left behind
    expected = direct_gradcam(model, x, target)
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-4)
    # an int target means the same class for every image
    torch.testing.assert_close(gradcam(model, x, 2, "embed.conv2"), direct_gradcam(TinyConvNet(), x, torch.full((5,), 2)),
                               atol=1e-5, rtol=1e-4)


def test_hooks_removed_even_on_error():
    model = TinyConvNet()
    conv = model.embed.conv2
    gradcam(model, torch.randn(2, 3, 8, 8), 0, "embed.conv2")
    assert not conv._forward_hooks
    with pytest.raises(GradCAMError, match="conv layers: .*embed.conv1"):
        gradcam(model, torch.randn(2, 3, 8, 8), 0, "embed.conv9")
    with pytest.raises(GradCAMError, match="not \\(N, C, h, w\\)"):
        gradcam(model, torch.randn(2, 3, 8, 8), 0, "head")
    assert not model.head._forward_hooks
    with pytest.raises(GradCAMError, match="0..2"):  # bad target class: the forward ran, the hook must still go
        gradcam(model, torch.randn(2, 3, 8, 8), 7, "embed.conv2")
    assert not conv._forward_hooks
    with pytest.raises(GradCAMError, match="images"):
        gradcam(model, torch.randn(2, 8), 0, "embed.conv2")
    assert all(not m._forward_hooks for m in model.modules())


class TinyTokens(nn.Module):
    """A vision transformer in miniature: 4x4 patches of an 8x8 image as a 2x2 grid of tokens
    after a class token, two blocks that mix tokens, the class token as the features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 6, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.block1 = nn.Linear(6, 6)
        self.block2 = nn.Linear(6, 6)
        self.mix = nn.Parameter(torch.randn(5, 5) / 3)

    def tokens(self, x):
        patches = self.patch(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), patches], 1)

    def forward(self, x):
        t = self.block1(self.mix @ torch.tanh(self.tokens(x)))
        return self.block2(self.mix @ torch.tanh(t))[:, 0]


def token_model() -> SpurModel:
    return SpurModel(TinyTokens(), nn.Linear(6, 3), 6,
                     Layout(blocks=["block1", "block2"], tokens=TokenGrid(prefix=1, rows=2, cols=2)))


def test_on_a_transformer_the_map_is_the_patch_tokens_of_the_layer():
    model = token_model()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 0])
    assert default_layer(model) == "embed.block1"  # the last block but one
    cam = gradcam(model, x, target, "embed.block1")
    net = model.embed
    t = net.block1(net.mix @ torch.tanh(net.tokens(x))).detach().requires_grad_(True)
    logits = model.head(net.block2(net.mix @ torch.tanh(t))[:, 0])
    logits[torch.arange(4), target].sum().backward()
    maps = lambda tokens: tokens[:, 1:].transpose(1, 2).reshape(4, 6, 2, 2)  # noqa: E731
    weights = maps(t.grad).mean((2, 3))
    expected = torch.relu(torch.einsum("nc,nchw->nhw", weights, maps(t.detach())))
    expected = F.interpolate(expected[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    flat = expected.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    flat = torch.where(high > low, (flat - low) / (high - low).clamp_min(1e-12), 0.0)  # an all-zero map stays zero
    assert (high > low).sum() >= 2
    torch.testing.assert_close(cam, flat.view_as(expected), atol=1e-5, rtol=1e-4)
    with pytest.raises(GradCAMError, match=r"not \(N, C, h, w\) or tokens"):
        gradcam(model, x, target, "head")
    with pytest.raises(GradCAMError, match="declares no blocks; name a layer with --layer"):
        default_layer(TinyConvNet())


@attrs.frozen(kw_only=True)
class ImageOptions:
    seed: int = 0


def make_images(options: ImageOptions) -> SpuriousData:
    """3x16x16 images: the class brightens the left half, the attribute the top rows."""
    rng = np.random.default_rng(options.seed)
    splits = {}
    for name, n in (("train", 64), ("val", 32), ("test", 32)):
        y = rng.integers(0, 2, n)
        a = np.where(rng.random(n) < 0.8, y, 1 - y)
        x = rng.normal(0, 0.3, (n, 3, 16, 16)).astype(np.float32)
        x[:, :, :, :8] += (2 * y - 1)[:, None, None, None]
        x[:, :, :4, :] += (2 * a - 1)[:, None, None, None]
        splits[name] = SplitData(name=name, inputs=torch.from_numpy(x), y=y, a=a)
    return SpuriousData(name="images", splits=splits, class_names=("left", "right"), attr_names=("dark", "light"),
                        input_shape=(3, 16, 16))


class ImagePlugin:
    @hookimpl
    def spurcore_register_datasets(self):
        return [DatasetSpec(name="images", build=make_images, options=ImageOptions, description="tiny images")]


def image_run(plugins, path, stages):
    config = pipeline_from_dict(tiny_pipeline(
        dataset={"name": "images"}, backbone={"name": "small-cnn", "options": {"width": 4}},
        train={"epochs": 1, "batch_size": 32, "lr": 0.01}, stages=stages))
    run_pipeline(config, path, plugins)
    return path


def invoke(plugins, args):
    from spurcore.api import cli

    plugins.hook.spurcore_register_commands(cli=cli)
    return CliRunner().invoke(cli, args, obj={"manager": plugins, "plugin_args": []})


@pytest.fixture
def image_plugins(spur_plugins):
    spur_plugins.register(ImagePlugin(), "images")
    spur_plugins.register(pt, "prunedtwin")
    return spur_plugins


def test_command_writes_one_figure(image_plugins, tmp_path):
    run = image_run(image_plugins, tmp_path / "run", [{"method": "erm"}, {"method": "erm", "name": "tuned"}])
    result = invoke(image_plugins, ["gradcam", str(run), "--per-group", "2"])
    assert result.exit_code == 0, result.output
    assert "(layer embed.block3; " in result.output  # small-cnn's last block
    figure = run / "gradcam.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0-erm " in result.output and "1-tuned " in result.output and "/8 correct" in result.output

    out = tmp_path / "elsewhere" / "cam.png"
    result = invoke(image_plugins, ["gradcam", str(run), "--layer", "embed.nope", "--out", str(out)])
    assert result.exit_code != 0 and "embed.block3" in result.output and "embed.block1.0" in result.output
    assert not out.exists()

    # a single-stage run needs --baseline-run; with it, the other run's final model is the baseline
    single = image_run(image_plugins, tmp_path / "single", [{"method": "erm", "name": "tuned"}])
    result = invoke(image_plugins, ["gradcam", str(single)])
    assert result.exit_code != 0 and "--baseline-run" in result.output
    result = invoke(image_plugins, ["gradcam", str(single), "--baseline-run", str(run), "--out", str(out),
                                    "--per-group", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_command_rejects_non_image_inputs(spur_plugins, spur_tiny_config, tmp_path):
    spur_plugins.register(pt, "prunedtwin")
    config = spur_tiny_config(train={"epochs": 1, "batch_size": 32, "lr": 0.01},
                         stages=[{"method": "erm"}, {"method": "erm", "name": "tuned"}])
    run_pipeline(config, tmp_path / "run", spur_plugins)
    result = invoke(spur_plugins, ["gradcam", str(tmp_path / "run"), "--layer", "embed.0"])
    assert result.exit_code != 0
    assert "image" in result.output
    assert issubclass(GradCAMError, SpurcoreError)
