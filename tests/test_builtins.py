"""The built-in dataset and backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurcore.builtins import waterdigits
from spurcore.builtins.backbones import ResNetOptions, SmallCNNOptions
from spurcore.builtins.networks import BackboneError, SmallCNN, build_small_cnn
from spurcore.builtins.waterdigits_gen import GROUP_COUNTS, generate


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(waterdigits.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_waterdigits_has_waterbirds_group_counts_scaled():
    arrays = generate(seed=0, scale=0.05, size=16)
    for split, (x, y, a) in arrays.items():
        assert x.shape == (len(y), 3, 16, 16) and x.dtype == np.uint8
        counts = np.bincount(y * 2 + a, minlength=4)
        assert counts.tolist() == [max(1, round(c * 0.05)) for c in GROUP_COUNTS[split]]


def test_waterdigits_is_deterministic_and_seeded():
    first, again, other = generate(0, 0.05, 16), generate(0, 0.05, 16), generate(1, 0.05, 16)
    for split in first:
        for left, right in zip(first[split], again[split]):
            assert np.array_equal(left, right)
    assert not np.array_equal(first["train"][0], other["train"][0])


def test_waterdigits_dataset_is_cached_and_normalised(cache):
    options = waterdigits.WaterdigitsOptions(scale=0.05, size=16)
    data = waterdigits.build(options)
    files = list(cache.glob("waterdigits-*.npz"))
    assert len(files) == 1
    assert data.group_names == ("curved digit/land", "curved digit/water", "straight digit/land", "straight digit/water")
    x = data.splits["train"].inputs
    assert x.dtype == torch.float32 and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    files[0].write_bytes(b"damaged")  # a damaged cache is rebuilt, not trusted
    rebuilt = waterdigits.build(options)
    assert torch.equal(rebuilt.splits["test"].inputs, data.splits["test"].inputs)


def test_waterdigits_augment_crops_and_flips_training_batches_only(cache):
    from spurcore.data import iterate_batches

    plain = waterdigits.build(waterdigits.WaterdigitsOptions(scale=0.05, size=28))
    data = waterdigits.build(waterdigits.WaterdigitsOptions(scale=0.05, size=28, augment=True))
    train = data.splits["train"]
    assert plain.splits["train"].train_inputs is None
    assert all(data.splits[s].train_inputs is None for s in ("val", "test"))
    assert torch.equal(train.inputs, plain.splits["train"].inputs)  # evaluation sees the images as they are
    order = torch.arange(len(train))

    def one_pass(seed):
        torch.manual_seed(seed)
        return torch.cat([b.x for b in iterate_batches(train, order, 64, augment=True)])

    first, again, other = one_pass(0), one_pass(0), one_pass(1)
    assert first.shape == train.inputs.shape and torch.equal(first, again) and not torch.equal(first, other)
    # every augmented image is its source shifted by at most 2 pixels, mirrored or not
    pad = torch.nn.functional.pad(train.inputs, (2, 2, 2, 2), mode="replicate")
    for i in range(0, len(train), 7):
        candidates = [pad[i, :, t:t + 28, l:l + 28] for t in range(5) for l in range(5)]
        assert any(torch.equal(first[i], c) or torch.equal(first[i], c.flip(-1)) for c in candidates)
    flipped = sum(not torch.equal(first[i], pad[i, :, 2:30, 2:30]) for i in range(len(train)))
    assert flipped > len(train) // 2  # most images move (25 crops x 2 flips, one of them the identity)


def test_small_cnn_features_have_the_declared_width():
    class Data:
        input_shape = (3, 16, 16)

    backbone = build_small_cnn(SmallCNNOptions(width=8), Data())
    assert isinstance(backbone.module, SmallCNN)
    assert backbone.module(torch.zeros(2, 3, 16, 16)).shape == (2, backbone.feature_dim) == (2, 32)


def test_resnet_never_downloads_and_says_how_to_proceed(tmp_path, monkeypatch, spur_plugins):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = spur_plugins.get("backbones", "resnet18")

    class Data:
        name, input_shape = "toy", (3, 32, 32)

    with pytest.raises(BackboneError, match=r"no pretrained weights for resnet18 at .*never downloads.*weights.*pretrained = false"):
        spec.build(ResNetOptions(pretrained=True), Data())
    random_init = spec.build(ResNetOptions(), Data())
    assert random_init.feature_dim == 512
    path = tmp_path / "r18.pth"
    torch.save(random_init.module.state_dict() | {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    loaded = spec.build(ResNetOptions(weights=str(path)), Data())
    assert torch.equal(loaded.module.conv1.weight, random_init.module.conv1.weight)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="not a readable state dict"):
        spec.build(ResNetOptions(weights=str(path)), Data())


def test_vit_takes_the_data_image_size_and_pretrained_weights_need_224(tmp_path, monkeypatch, spur_plugins):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = spur_plugins.get("backbones", "vit-b-16")

    class Data:
        name, input_shape = "toy", (3, 32, 32)

    backbone = spec.build(ResNetOptions(), Data())
    assert backbone.feature_dim == 768
    with torch.no_grad():
        assert backbone.module(torch.zeros(2, 3, 32, 32)).shape == (2, 768)
    with pytest.raises(BackboneError, match=r"no pretrained weights for vit_b_16 at .*vit_b_16-.*\.pth"):
        spec.build(ResNetOptions(pretrained=True), Data())
    weights = backbone.module.state_dict() | {"heads.head.weight": torch.zeros(1000, 768),
                                              "heads.head.bias": torch.zeros(1000)}
    monkeypatch.setattr("spurcore.builtins.networks._load_weights", lambda arch, options: weights)

    class Larger:
        name, input_shape = "toy", (3, 48, 48)

    with pytest.raises(BackboneError, match=r"vit_b_16: the pretrained weights do not fit .*image_size = 224"):
        spec.build(ResNetOptions(pretrained=True), Larger())

    class Gray:
        name, input_shape = "gray", (1, 32, 32)

    with pytest.raises(BackboneError, match=r"vit_b_16 takes 3-channel images; dataset 'gray' has shape \(1, 32, 32\)"):
        spec.build(ResNetOptions(), Gray())


def test_small_cnn_blocks_and_pooling_set_depth_and_feature_width():
    class Data:
        name, input_shape = "toy", (3, 32, 32)

    default = build_small_cnn(SmallCNNOptions(width=8), Data()).module
    assert [name for name, _ in default.named_children()] == ["block1", "block2", "block3", "pool"]
    deep = build_small_cnn(SmallCNNOptions(width=8, blocks=4, pool_last=True), Data())
    assert deep.feature_dim == 64
    assert [m for m in deep.module.block4 if isinstance(m, torch.nn.MaxPool2d)]
    captured = []
    deep.module.block4.register_forward_hook(lambda module, args, out: captured.append(out.shape))
    assert deep.module(torch.zeros(2, 3, 32, 32)).shape == (2, 64)
    assert captured == [(2, 64, 2, 2)]  # four 2x2 poolings of 32 pixels
    with pytest.raises(BackboneError, match=r"6 blocks pool 6 times, which needs images of at least 64 pixels; "
                                            r"dataset 'toy' has 32"):
        build_small_cnn(SmallCNNOptions(width=4, blocks=6, pool_last=True), Data())


def test_small_cnn_expand_widens_the_features_with_a_last_1x1_block():
    class Data:
        name, input_shape = "toy", (3, 32, 32)

    wide = build_small_cnn(SmallCNNOptions(width=8, blocks=3, expand=96), Data())
    assert wide.feature_dim == 96 and wide.layout.blocks == ("block1", "block2", "block3", "expand")
    conv = wide.module.expand[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (32, 96, (1, 1))
    captured = []
    wide.module.expand.register_forward_hook(lambda module, args, out: captured.append(out.shape))
    assert wide.module(torch.zeros(2, 3, 32, 32)).shape == (2, 96)
    assert captured == [(2, 96, 8, 8)]  # widened where the last block ends, before the pooling
    with pytest.raises(Exception, match="expand"):
        SmallCNNOptions(expand=-1)


def test_small_cnn_default_architecture_is_unchanged():
    """The parameters (names, shapes and seeded initial values) of the original three-block
    network, so earlier runs' checkpoints and numbers stay valid."""
    torch.manual_seed(0)
    net = SmallCNN(3, 8)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.endswith("weight")}
    assert shapes == {"block1.0.weight": (8, 3, 3, 3), "block1.1.weight": (8,), "block2.0.weight": (16, 8, 3, 3),
                      "block2.1.weight": (16,), "block3.0.weight": (32, 16, 3, 3), "block3.1.weight": (32,)}
    assert not [m for m in net.block3 if isinstance(m, torch.nn.MaxPool2d)]
