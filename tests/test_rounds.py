"""benchmarks/rounds.py: how contenders are interleaved."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("rounds", Path(__file__).resolve().parents[1] / "benchmarks" / "rounds.py")
rounds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rounds)
interleave = rounds.interleave


def test_interleave_rotates_the_order_of_its_contenders():
    calls = []

    def contender(name: str, seconds: float):
        def step(k: int) -> float:
            calls.append(name)
            return seconds
        return step

    a, b, c = interleave(2, 2, contender("a", 1.0), contender("b", 2.0), contender("c", 3.0))
    assert (a, b, c) == ([2.0, 2.0], [4.0, 4.0], [6.0, 6.0])
    assert "".join(calls) == "abc" "bca" "bca" "cab"  # rotated by one per step and per round
    calls.clear()
    interleave(2, 2, contender("a", 1.0), contender("b", 2.0))
    assert "".join(calls) == "ab" "ba" "ba" "ab"  # two: the one going first swapped
    with pytest.raises(ValueError):
        interleave(1, 1, contender("a", 1.0))
