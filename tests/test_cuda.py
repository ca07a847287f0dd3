"""What only a CUDA GPU can show: runs train on the device with the model and every batch there,
mixed precision on, batches from pinned memory, `channels_last` and `compile` as configured;
the decoded-image cache normalizes on the GPU as on the CPU; FairDropout's masks are the same
bits on both. Every test here is marked `cuda` and skipped without CUDA;
`benchmarks/gpu_check.sh` runs them on a GPU machine (`pytest -m cuda tests/test_cuda.py
tests/test_distributed.py`; the latter holds data-parallel training with NCCL on two GPUs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spurcore import hookimpl
from spurcore.api import (Batch, Device, ForwardContext, PluginManager, RunDir, SplitData, iterate_batches,
                          pipeline_from_dict, run_pipeline)
from spurcore.device import CUDA_PREFETCH

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh "
                                                                       "runs these on one)")]


@pytest.fixture
def gpu() -> Device:
    return Device.from_config("auto", amp=True)


def test_auto_picks_the_gpu_with_mixed_precision_and_pinned_memory(gpu):
    assert gpu.is_cuda and gpu.amp and gpu.pin_memory
    assert gpu.loader_options(2) == {"num_workers": 2, "pin_memory": True, "prefetch_factor": CUDA_PREFETCH,
                                     "device": gpu.device}
    assert gpu.grad_scaler().is_enabled()
    a = torch.randn(8, 8, device=gpu.device)
    with gpu.autocast():
        assert torch.is_autocast_enabled("cuda")
        assert (a @ a).dtype == torch.float16
    with Device.from_config("cuda", amp=False).autocast():  # AMP off: no autocast at all
        assert not torch.is_autocast_enabled("cuda") and (a @ a).dtype == torch.float32


def test_move_puts_every_tensor_of_a_batch_on_the_gpu_and_images_in_channels_last(gpu):
    batch = Batch(torch.tensor([3, 0, 7]), torch.randn(3, 3, 8, 8).pin_memory(), torch.tensor([1, 0, 1]),
                  torch.tensor([0, 1, 0]))
    moved = gpu.move(batch, channels_last=True)
    for name in ("index", "x", "y", "a"):
        assert getattr(moved, name).device.type == "cuda", name
        assert torch.equal(getattr(moved, name).cpu(), getattr(batch, name)), name
    assert moved.x.is_contiguous(memory_format=torch.channels_last)
    assert not gpu.move(batch).x.is_contiguous(memory_format=torch.channels_last)


def test_loader_settings_give_pinned_batches(gpu):
    class Images(torch.utils.data.Dataset):  # dataset-backed, as images on disk are
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.full((3, 4, 4), float(i))

    split = SplitData(name="train", inputs=Images(), y=[0] * 10)
    batches = list(iterate_batches(split, torch.arange(10), 4, **gpu.loader_options(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert all(b.x.is_pinned() for b in batches)


class Probe:
    """What a run's training steps look like from inside: where the batch and the weights are,
    their memory layout, the dtype of the logits (float16 under AMP) and of the loss, whether
    the model is compiled, and whether each batch reached `Device.move` from pinned memory.
    `logits`: hook the head to see its output's dtype (left out where the model is compiled, so
    that what is tested is the runner's compile alone)."""

    def __init__(self, logits: bool = True) -> None:
        self.watch_logits = logits
        self.training = False
        self.steps: list[dict] = []
        self.logits: list[torch.dtype] = []
        self.pinned: list[bool] = []

    @hookimpl
    def spurcore_stage_start(self, stage):
        if self.watch_logits:
            stage.model.head.register_forward_hook(lambda module, args, out: self.logits.append(out.dtype)
                                                   if self.training else None)

    @hookimpl
    def spurcore_epoch_start(self):
        self.training = True

    @hookimpl
    def spurcore_evaluation_start(self):
        self.training = False

    @hookimpl
    def spurcore_batch_end(self, stage, batch, loss):
        convs = [m.weight for m in stage.model.modules() if isinstance(m, nn.Conv2d)]
        self.steps.append({
            "batch": {getattr(batch, n).device.type for n in ("index", "x", "y", "a")},
            "weights": {p.device.type for p in stage.model.parameters()},
            "x_channels_last": batch.x.is_contiguous(memory_format=torch.channels_last),
            "conv_channels_last": bool(convs) and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs),
            "compiled": getattr(stage.model, "_compiled_call_impl", None) is not None,
            "loss": (loss.dtype, bool(torch.isfinite(loss))),
        })


def run_on_gpu(tmp_path, monkeypatch, **train) -> tuple[Probe, dict]:
    """One epoch of a small CNN on a miniature Waterbirds (JPEGs, so batches come through the
    DataLoader), on the GPU with AMP, one worker."""
    miniature = pytest.importorskip("spurcore_datasets.miniature")
    miniature.waterbirds(tmp_path / "data")
    probe = Probe(logits=not train.get("compile"))
    move = Device.move

    def watched(self, batch, channels_last=False):
        if probe.training:
            probe.pinned.append(batch.x.is_pinned())
        return move(self, batch, channels_last)

    monkeypatch.setattr(Device, "move", watched)
    plugins = PluginManager(block=["progress"])
    plugins.register(probe, "probe")
    config = pipeline_from_dict({
        "seed": 0, "device": "auto", "amp": True, "deterministic": False,
        "dataset": {"name": "waterbirds", "options": {"root": str(tmp_path / "data"), "image_size": 32}},
        "backbone": {"name": "small-cnn"},
        "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 8, "num_workers": 1, **train},
        "stages": [{"method": "erm"}],
    })
    summary = run_pipeline(config, tmp_path / "run", plugins, log=lambda m: None)
    assert probe.steps
    return probe, summary


def test_a_run_trains_on_the_gpu_with_amp_from_pinned_batches_in_channels_last(tmp_path, monkeypatch):
    probe, summary = run_on_gpu(tmp_path, monkeypatch, channels_last=True)
    for step in probe.steps:
        assert step["batch"] == {"cuda"} and step["weights"] == {"cuda"}
        assert step["x_channels_last"] and step["conv_channels_last"]
        assert step["loss"] == (torch.float32, True)  # cross-entropy autocasts to float32
    assert set(probe.logits) == {torch.float16}  # the head ran under autocast
    assert probe.pinned and all(probe.pinned)
    assert 0 <= summary["metrics"]["test"]["avg_acc"] <= 1


def test_a_compiled_run_trains_and_saves_the_uncompiled_keys(tmp_path, monkeypatch):
    probe, summary = run_on_gpu(tmp_path, monkeypatch, compile=True)
    assert all(step["compiled"] and step["loss"][1] for step in probe.steps)
    saved = RunDir(tmp_path / "run").load_checkpoint("0-erm", 1)["model"]
    assert saved and not any("_orig_mod" in key for key in saved)
    assert 0 <= summary["metrics"]["test"]["avg_acc"] <= 1


def test_compiled_and_eager_models_agree(gpu):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    model = model.to(gpu.device).eval()
    x = torch.randn(4, 3, 16, 16, device=gpu.device)
    with torch.no_grad():
        eager = model(x)
        model.compile()
        compiled = model(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_the_image_cache_normalizes_on_the_gpu_as_on_the_cpu(tmp_path, gpu):
    miniature = pytest.importorskip("spurcore_datasets.miniature")
    from spurcore_datasets import FORMATS

    miniature.waterbirds(tmp_path / "data")
    options = FORMATS["waterbirds"].options(root=str(tmp_path / "data"), image_size=32, cache="decoded",
                                            cache_dir=str(tmp_path / "cache"))
    data = PluginManager().get("datasets", "waterbirds").build(options)
    for name, split in data.splits.items():
        for augment in (False, True):  # the same crops either way: their seeds come from torch's RNG
            torch.manual_seed(0)
            on_cpu = list(iterate_batches(split, torch.arange(len(split)), 8, augment=augment))
            torch.manual_seed(0)
            on_gpu = list(iterate_batches(split, torch.arange(len(split)), 8, augment=augment,
                                          **gpu.loader_options(0)))
            assert len(on_gpu) == len(on_cpu)
            for a, b in zip(on_cpu, on_gpu):
                assert b.x.device.type == "cuda" and b.x.dtype == a.x.dtype == torch.float32
                torch.testing.assert_close(b.x.cpu(), a.x, rtol=0, atol=1e-6, msg=f"{name}, augment={augment}")


def test_fairdropout_masks_are_the_same_bits_on_the_gpu(gpu):
    fairdropout = pytest.importorskip("spurcore_fairdropout")
    index = torch.cat([torch.randint(0, 2**40, (500,), generator=torch.Generator().manual_seed(0)),
                       torch.tensor([0, 1, 2**32 - 1, 2**32, 2**63 - 1])])
    units = torch.arange(3000)
    for p, seed in [(0.1, 0), (0.5, 12345), (0.9, 2**31 + 7), (0.3, 2**40)]:
        on_cpu = fairdropout.keep_mask(index, units, p, seed)
        on_gpu = fairdropout.keep_mask(index.to(gpu.device), units.to(gpu.device), p, seed)
        assert on_gpu.device.type == "cuda"
        assert torch.equal(on_gpu.cpu(), on_cpu), (p, seed)
    # the layer in training: the CPU looks its multipliers up in a table, the GPU hashes per batch
    for shape in [(64, 32, 4, 4), (64, 48)]:
        outputs = []
        for device in (torch.device("cpu"), gpu.device):
            context = ForwardContext()
            layer = fairdropout.FairDropout(context, p_gen=0.5, p_mem=0.3, seed=11).train()
            context.index = torch.randperm(4000, generator=torch.Generator().manual_seed(1))[:shape[0]].to(device)
            outputs.append(layer(torch.ones(shape, device=device)))
        assert torch.equal(outputs[1].cpu(), outputs[0]), shape
        assert 0 < (outputs[0] == 0).float().mean() < 1
