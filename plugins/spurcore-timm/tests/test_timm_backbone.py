"""The `timm` backbone: any timm model without its head, sized to the data, its weights read
from a file or the local Hugging Face cache and never from the network, the dataset's
normalisation converted to the model's, and its layout declared."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from spurcore.api import ConfigError, Normalization, SplitData, SpuriousData, build_model, structure
from spurcore_timm import TimmBackboneError, TimmOptions, cached_weights
from spurcore_timm.backbone import build

TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def options(**values) -> TimmOptions:
    return structure(TimmOptions, {"model": "vit_tiny_patch16_224", "kwargs": TINY_VIT, **values}, "backbone.options")


def images(size: int = 32, n: int = 4, normalization: Normalization | None = IMAGENET) -> SpuriousData:
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    y, a = np.arange(n) % 2, np.arange(n) // 2 % 2
    splits = {s: SplitData(name=s, inputs=x, y=y, a=a) for s in ("train", "val", "test")}
    return SpuriousData(name="pictures", splits=splits, class_names=("c0", "c1"), attr_names=("a0", "a1"),
                        input_shape=(3, size, size), normalization=normalization)


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails, and is recorded."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_a_tiny_vit_without_head_declares_its_blocks_neurons_and_token_grid():
    backbone = build(options(), images(32))
    net = backbone.module
    assert backbone.feature_dim == 32 and isinstance(net.head, torch.nn.Identity)
    assert backbone.layout.blocks == ("blocks.0", "blocks.1")
    assert backbone.layout.neurons == ("blocks.0.mlp.fc1", "blocks.1.mlp.fc1")
    grid = backbone.layout.tokens
    assert (grid.prefix, grid.rows, grid.cols) == (1, 4, 4)  # the class token, then 32/8 x 32/8 patches
    model = build_model(backbone, 2).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 2)
    assert model.neuron_paths() == ["embed.blocks.0.mlp.fc1", "embed.blocks.1.mlp.fc1"]
    assert net.blocks[0].mlp.fc1.out_features == 128  # mlp_ratio 4: 128 hidden units (neurons) per block


def test_the_image_size_comes_from_the_data_and_a_cnn_declares_blocks_but_no_tokens():
    vit = build(options(), images(48)).module
    assert vit.patch_embed.grid_size == (6, 6) and vit.pos_embed.shape == (1, 37, 32)
    resnet = build(structure(TimmOptions, {"model": "resnet18"}, "b"), images(32))
    assert resnet.feature_dim == 512
    assert resnet.layout.blocks == ("act1", "layer1", "layer2", "layer3", "layer4")
    assert resnet.layout.tokens is None and resnet.layout.neurons == ()
    with torch.no_grad():
        assert resnet.module.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_an_unknown_model_name_is_an_error_with_close_names():
    with pytest.raises(ConfigError, match=r"backbone.options.model: 'vit_smal_patch16_224' is not a timm model "
                                          r"\(close names: vit_small_patch16_224"):
        options(model="vit_smal_patch16_224")
    with pytest.raises(ConfigError, match=r"no weights tagged 'nope' for vit_small_patch16_224 \(its tags: .*augreg"):
        options(model="vit_small_patch16_224.nope")
    assert options(model="vit_small_patch16_224.augreg_in21k_ft_in1k").model.endswith("augreg_in21k_ft_in1k")
    with pytest.raises(TimmBackboneError, match="kwargs.num_classes: the backbone has no head"):
        build(options(kwargs={**TINY_VIT, "num_classes": 5}), images())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_weights_file_loads_every_tensor(tmp_path, suffix, no_network):
    source = build(options(), images(32)).module
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / f"vit{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    torch.manual_seed(1)  # another random initialisation, which the file must overwrite
    loaded = build(options(weights=str(path)), images(32)).module
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert no_network == []


def test_weights_made_for_another_size_are_resampled_and_wrong_weights_are_refused(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(build(options(), images(32)).module.state_dict(), str(path))
    larger = build(options(weights=str(path)), images(48)).module
    assert larger.pos_embed.shape == (1, 37, 32)  # 1 + 6 x 6 tokens, from 1 + 4 x 4
    with pytest.raises(TimmBackboneError, match=r"vit.safetensors: the weights do not fit timm model "
                                                r"'vit_tiny_patch16_224'.*tensors missing \(blocks.2"):
        build(options(weights=str(path), kwargs={**TINY_VIT, "depth": 3}), images(32))
    with pytest.raises(TimmBackboneError, match=r"the weights do not fit .*size mismatch"):
        build(options(weights=str(path), kwargs={**TINY_VIT, "embed_dim": 16}), images(32))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TimmBackboneError, match=r"junk.pth: not a readable state dict"):
        build(options(weights=str(tmp_path / "junk.pth")), images(32))
    with pytest.raises(TimmBackboneError, match=r"absent.pth: no such weights file"):
        build(options(weights=str(tmp_path / "absent.pth")), images(32))


def fake_hub_cache(root, repo: str, state: dict) -> None:
    """`root` laid out as the Hugging Face cache holding `model.safetensors` of `repo`."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / commit / "model.safetensors"))


def test_pretrained_reads_the_local_hugging_face_cache_and_never_the_network(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(TimmBackboneError) as missing:
        build(options(pretrained=True), images(32))
    message = str(missing.value)
    repo = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert "spurcore never downloads" in message
    assert f"model.safetensors or pytorch_model.bin of {repo} in the Hugging Face cache " \
           f"({cache / 'models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k'})" in message
    assert f"hf download {repo} model.safetensors" in message
    assert 'backbone.options.weights = "/path/vit_tiny_patch16_224.safetensors"' in message
    assert "backbone.options.pretrained = false" in message

    # the pretrained file as timm publishes it: with its 1000-class head, which is left out
    state = build(options(), images(32)).module.state_dict()
    published = {**state, "head.weight": torch.zeros(1000, 32), "head.bias": torch.zeros(1000)}
    fake_hub_cache(cache, repo, published)
    assert cached_weights(timm.get_pretrained_cfg("vit_tiny_patch16_224").to_dict()).name == "model.safetensors"
    loaded = build(options(pretrained=True), images(32)).module
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert no_network == []


def test_inputs_are_converted_to_the_normalisation_of_the_models_pretrained_config():
    torch.manual_seed(0)
    converted = build(options(), images(32, normalization=IMAGENET)).module.eval()
    plain = build(options(), images(32, normalization=None)).module.eval()
    plain.load_state_dict(converted.state_dict())  # the conversion adds no tensor to the state dict
    assert "input_norm.scale" not in converted.state_dict() and not hasattr(plain, "input_norm")
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1), torch.tensor(IMAGENET.std).view(1, 3, 1, 1)
    with torch.no_grad():
        # the dataset gives ImageNet-normalised pixels; the ViT's weights expect (pixel - 0.5) / 0.5
        torch.testing.assert_close(converted((pixels - mean) / std), plain((pixels - 0.5) / 0.5), atol=1e-5, rtol=1e-4)
    same = build(options(), images(32, normalization=Normalization((0.5,) * 3, (0.5,) * 3))).module
    assert not hasattr(same, "input_norm")  # data already normalised as the model expects


def test_data_that_are_not_images_are_refused():
    x = torch.zeros(4, 8)
    splits = {s: SplitData(name=s, inputs=x, y=np.array([0, 1, 0, 1]), a=None) for s in ("train", "val", "test")}
    data = SpuriousData(name="vectors", splits=splits, class_names=("a", "b"), attr_names=("x",), input_shape=(8,))
    with pytest.raises(TimmBackboneError, match=r"timm models take images \(C, H, W\); dataset 'vectors' has input shape \(8,\)"):
        build(options(), data)


def test_weights_timm_names_by_url_are_looked_for_in_the_torch_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = timm.get_pretrained_cfg("resnet18").to_dict()  # on the hub, and by URL
    assert cached_weights(cfg) is None
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / cfg["url"].rsplit("/", 1)[1]
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"")
    assert cached_weights(cfg) == hub_file
    fake_hub_cache(tmp_path / "hub", cfg["hf_hub_id"], {"w": torch.zeros(1)})  # the Hugging Face cache comes first
    assert cached_weights(cfg).name == "model.safetensors"
