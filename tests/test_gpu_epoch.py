"""benchmarks/gpu_epoch.py runs end to end at a tiny scale on the CPU, so that it is ready
the day a GPU is at hand (the GPU numbers themselves are measured there, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_epoch.py"


def test_gpu_epoch_times_every_variant_and_writes_its_json(tmp_path):
    variants = "plain,runner,cached,cached-channels-last"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "resnet18", "--images", "64", "--size", "32", "--batch", "64",
         "--workers", "0", "--device", "cpu", "--variants", variants, "--root", str(tmp_path / "data"),
         "--out", str(tmp_path / "epoch.json")],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "epoch.json").read_text())
    assert json.loads(done.stdout) == result
    assert list(result["variants"]) == variants.split(",")
    assert result["device"] == "cpu" and result["amp"] is False and result["cache_images"] == 64 + 16 + 78
    for name, measured in result["variants"].items():
        assert measured["images"] == 64, name  # the scaled real training counts: 47 + 2 + 1 + 14
        assert measured["epoch_s"] > 0 and measured["gpu_memory_mib"] is None
        assert abs(measured["images_per_s"] * measured["epoch_s"] - 64) < 1
    assert result["variants"]["plain"]["ratio_to_plain"] == 1.0
    assert (tmp_path / "data" / "waterbird_complete95_forest2water2" / "metadata.csv").is_file()


def test_an_unknown_variant_is_refused_before_anything_runs(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--variants", "plain,fast", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown variant(s) fast" in done.stderr
    assert not any(tmp_path.iterdir())
