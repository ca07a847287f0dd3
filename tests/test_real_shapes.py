"""benchmarks/real_shapes.py runs end to end at a tiny scale (ResNet-18 and a 4-block ViT at 32
px): it builds each variant through its plugin, times them interleaved and measures each one's
peak memory in a child process. The full-size numbers are measured by the script, not here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
VARIANTS = ["erm", "fairdropout-one", "fairdropout-two", "prunedtwin", "two-forwards", "gradient-scores", "extraction"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-shapes") / "tiny.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "real_shapes.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    return result


def neurons_of_resnet18(classes: int = 2) -> int:
    """Every conv layer's output channels, and the head's classes (the backbone's fc removed)."""
    net = torchvision.models.resnet18()
    return sum(m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)) + classes


def test_each_variant_is_built_by_its_plugin(tiny):
    assert tiny["scale"] == "tiny" and (tiny["size"], tiny["batch"], tiny["rounds"]) == (32, 8, 2)
    resnet, vit = tiny["backbones"]["resnet18"], tiny["backbones"]["vit_tiny"]
    # FairDropout after the block at 3/4 of the declared blocks, and at 1/2 and 3/4 together
    assert resnet["placements"] == {"fairdropout-one": ["layer3"], "fairdropout-two": ["layer2", "layer3"]}
    assert vit["placements"] == {"fairdropout-one": ["blocks.2"], "fairdropout-two": ["blocks.1", "blocks.2"]}
    for built in (resnet, vit):
        assert built["fairdropout_layers"] == {"fairdropout-one": 1, "fairdropout-two": 2}
        assert built["pruned_twin_masked_neurons"] == 1  # q = 0.01% of a few thousand: at least one
    assert resnet["scored_neurons"] == {"layers": 21, "units": neurons_of_resnet18()}
    assert vit["scored_neurons"] == {"layers": 4, "units": 4 * 4 * 32}  # the MLP hidden units of 4 blocks


def test_every_variant_is_timed_against_erm_round_by_round(tiny):
    for name, built in tiny["backbones"].items():
        variants = built["variants"]
        assert list(variants) == VARIANTS, name
        assert "ratio" not in variants["erm"]
        for variant, measured in variants.items():
            assert measured["seconds_per_step"] > 0 and measured["gflop_per_image"] > 0, (name, variant)
            assert 0 < measured["cpu_seconds_per_step"] and 0 <= measured["system_seconds_per_step"] <= measured["cpu_seconds_per_step"]
            assert measured["page_faults_per_step"] >= 0
            if variant != "erm":
                for spread in (measured, measured["cpu"]):  # wall time, and CPU time
                    assert len(spread["round_ratios"]) == 2
                    assert spread["q1"] <= spread["ratio"] <= spread["q3"]
                    assert spread["iqr"] == pytest.approx(spread["q3"] - spread["q1"], abs=2e-4)
        assert len(built["load_1m_during"]["samples"]) == 2  # one per ERM step
    flops = {v: m["gflop_per_image"] for v, m in tiny["backbones"]["resnet18"]["variants"].items()}
    # FairDropout adds no matrix work, the twin doubles it, extraction is the forward third
    assert flops["fairdropout-one"] == flops["fairdropout-two"] == flops["erm"] == flops["gradient-scores"]
    assert flops["two-forwards"] == pytest.approx(2 * flops["erm"], abs=0.002)
    assert 1.95 < flops["prunedtwin"] / flops["erm"] < 2.1  # and a projection head
    assert 0.3 < flops["extraction"] / flops["erm"] < 0.4


def test_peak_memory_is_measured_per_variant(tiny):
    for name, built in tiny["backbones"].items():
        memory = built["memory"]["variants"]
        assert list(memory) == VARIANTS, name
        for measured in memory.values():
            assert measured["peak_rss_mib"] == pytest.approx(measured["base_rss_mib"] + measured["above_base_mib"], abs=0.2)
            assert measured["above_base_mib"] >= measured["before_step_mib"] >= 0
        assert memory["erm"]["ratio"] == 1.0
    resnet = tiny["backbones"]["resnet18"]["memory"]["variants"]
    # no gradients, no optimizer state, no activations kept for backward: a fraction of a training step
    assert resnet["extraction"]["above_base_mib"] < 0.5 * resnet["erm"]["above_base_mib"]


def test_gradient_scoring_of_waterbirds_is_projected_from_the_measured_step(tiny):
    for built in tiny["backbones"].values():
        scoring, step = built["waterbirds_gradient_scoring"], built["variants"]["gradient-scores"]
        assert scoring["batches"] == math.ceil(4795 / 8)
        assert scoring["cpu_seconds"] == pytest.approx(scoring["batches"] * step["seconds_per_step"], abs=0.1)
        assert scoring["tflop"] == pytest.approx(4795 * step["gflop_per_image"] / 1000, abs=0.01)
        assert scoring["sustained_tflop_per_s_for_1_min"] == pytest.approx(10 * scoring["sustained_tflop_per_s_for_10_min"], abs=1e-3)


def test_an_unknown_variant_is_refused_before_anything_runs(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "real_shapes.py"), "--variants", "prunedtwin,fast",
                           "--out", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown variant(s) fast" in done.stderr
    assert not (tmp_path / "out.json").exists()
