"""Portable CPU kernels: fewer ways for the same run to give other numbers on another x86-64 CPU.

On a CPU, torch picks its kernels by the instruction set the processor offers (AVX-512, AVX2,
...) and so does each library under it (oneDNN for convolutions, MKL for matrix products);
each sums in a different order, so two machines with different processors drift apart after
a few steps, and a whole table of results with them (a JTT row moved from 67 to 33 points
between two of our machines). Pinned to AVX2, which every x86-64 server of the last decade
has, with MKL in its conditional-reproducibility mode and convolutions through torch's own
kernels instead of oneDNN, the instruction set no longer decides the sums, at some cost in
speed on processors with wider vectors (measured in docs/sweeps.md). It is not a guarantee:
two of our machines, both AVX-512 Xeons, gave different numbers for the same pinned run
(docs/sweeps.md says what we know).

`spur` pins them for every command (and the processes a sweep starts inherit them) before
torch is imported; `SPURCORE_CPU_KERNELS=native` keeps torch's own choice. Nothing here
imports torch: the environment must be set before it is.
"""

from __future__ import annotations

import os

MODE_ENV = "SPURCORE_CPU_KERNELS"
PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's vectorised kernels
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # in case a oneDNN kernel still runs
}


def pinned() -> bool:
    """Whether this process computes with the portable kernels (the default)."""
    return os.environ.get(MODE_ENV, "portable") != "native"


def pin_environment() -> None:
    """Set the kernels' environment (values the user set are kept). Call before torch is imported."""
    if pinned():
        for key, value in PINNED.items():
            os.environ.setdefault(key, value)


def apply_to_torch() -> None:
    """The part that lives in torch itself, per process: convolutions through torch's own
    kernels rather than oneDNN's, which choose their blocking by the processor."""
    if pinned():
        import torch

        torch.backends.mkldnn.enabled = False
