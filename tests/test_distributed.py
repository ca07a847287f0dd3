"""Data-parallel training: torchrun with 2 processes equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from spurcore.testing import TinyPlugin, tiny_pipeline

from spurcore import atomic, distributed
from spurcore.config import pipeline_from_dict
from spurcore.plugins import PluginManager
from spurcore.runner import run_pipeline
from spurcore.tomlwriter import dumps as toml_dumps


@pytest.mark.parametrize("n, batch, world", [(200, 32, 2), (65, 32, 2), (10, 4, 3), (7, 7, 4)])
def test_local_batches_split_every_global_batch(monkeypatch, n, batch, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shares = []
    for me in range(world):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda me=me: me)
        local, sizes, weights = distributed.local_batches(order, batch)
        assert sum(sizes) == len(local) and all(s >= 1 for s in sizes)
        shares.append((torch.split(local, sizes), weights))
    for step, chunk in enumerate(torch.split(order, batch)):
        parts = [s[0][step] for s in shares if s[1][step] > 0]
        assert torch.equal(torch.cat(parts), chunk)  # every example of the step once, in order
        assert sum(s[1][step] for s in shares) == pytest.approx(world)  # weights average to the global mean
        for part, weights in shares:
            if weights[step] == 0:
                assert torch.equal(part[step], chunk[:1])  # a rank left empty repeats one example, unweighted


def test_only_rank_zero_writes_files(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    atomic.write_text(tmp_path / "a.txt", "rank 1")
    with atomic.atomic_open(tmp_path / "sub" / "b.bin", "wb") as handle:
        handle.write(b"x")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("RANK", "0")
    atomic.write_text(tmp_path / "a.txt", "rank 0")
    assert (tmp_path / "a.txt").read_text() == "rank 0"


GPUS = torch.cuda.device_count()
TWO_GPUS = [pytest.mark.cuda, pytest.mark.skipif(GPUS < 2, reason=f"needs two GPUs for NCCL across processes; this "
                                                                 f"machine has {GPUS}")]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=TWO_GPUS)])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, device):
    # FairDropout on an MLP (no batch norm): its masks follow the example indices, whichever
    # process sees the example; 201 examples in batches of 32 end with a batch of 9 (5 + 4).
    # On the CPU the processes talk through gloo; on GPUs (one each) through NCCL, in float32
    # (AMP off), where a GEMM may sum in another order for another batch size: a wider tolerance.
    data = tiny_pipeline(dataset={"name": "tiny", "options": {"n_train": 201}}, train={"epochs": 1, "batch_size": 32, "lr": 0.01, "optimizer": "adam"},
                         stages=[{"method": "fairdropout", "options": {"placement": ["features"]}}], device=device, amp=False)
    tolerance = 1e-5 if device == "cpu" else 1e-4
    pipeline = tmp_path / "ddp.toml"
    pipeline.write_text(toml_dumps(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPURCORE_PLUGINS": "fairdropout"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "spurcore", "-p", "spurcore.testing.tinyplug", "run", str(pipeline), "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("selected:") == 1  # rank 0 speaks for both

    plugins = PluginManager(block=["progress"])
    plugins.register(TinyPlugin(), "tiny")
    run_pipeline(pipeline_from_dict(data), tmp_path / "one", plugins, log=lambda m: None)

    key = "checkpoints/0-fairdropout/epoch_001.pt"
    one = torch.load(tmp_path / "one" / key, weights_only=True)
    both = torch.load(tmp_path / "two" / key, weights_only=True)
    assert one["model"].keys() == both["model"].keys()
    for name, value in one["model"].items():
        torch.testing.assert_close(both["model"][name], value, rtol=0, atol=tolerance, msg=name)
    assert both["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], abs=tolerance)
    lines = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in lines] == [(1, "train"), (1, "val"), (1, "test")]
