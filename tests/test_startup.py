"""`spur --help`, `spur plugins` and `spur list KIND` start without torch, torchvision,
matplotlib, scikit-learn, tensorboard or mlflow, with every installed plugin loaded: entry modules (the built-ins'
and every plugin's) import their implementations only when they are used. Timings are
benchmarks/cli_startup.py's; this checks what is imported."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from spurcore.specs import KINDS

HEAVY = ("torch", "torchvision", "matplotlib", "sklearn", "tensorboard", "mlflow")
WRAPPER = f"""
import sys
from spurcore.cli import main
try:
    main(sys.argv[1:])
finally:
    print("HEAVY", sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}), file=sys.stderr)
"""


def spur(*args: str) -> tuple[int, str, list[str]]:
    """Exit code, output and the heavy modules imported of `spur ARGS` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "SPURCORE_PLUGINS"}
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=env, timeout=300)
    marker = [line for line in done.stderr.splitlines() if line.startswith("HEAVY ")]
    assert marker, done.stderr[-2000:]
    return done.returncode, done.stdout, ast.literal_eval(marker[-1][len("HEAVY "):])


@pytest.mark.parametrize("args", [("--help",), ("plugins",), *(("list", kind) for kind in KINDS)],
                         ids=" ".join)
def test_listing_imports_no_heavy_module(args):
    code, output, heavy = spur(*args)
    assert (code, heavy) == (0, []), output[-2000:]
    assert output.strip()


def test_the_fast_listings_still_say_what_is_installed():
    _, helped, _ = spur("--help")
    assert {"run", "plugins", "list", "trace", "sweep", "activations", "new-plugin", "data"} <= {
        line.split()[0] for line in helped.split("Commands:", 1)[1].splitlines() if line.strip()}
    _, listed, _ = spur("list", "mitigations")
    assert {"erm", "dfr", "groupdro", "jtt", "neurontune", "prunedtwin", "fairdropout"} <= {
        line.split()[0] for line in listed.splitlines()}
    _, plugins, _ = spur("plugins")
    assert "dfr 0.1.0\n    hooks: spurcore_register_mitigations\n    mitigations: dfr, dfr-class\n" in plugins
    assert "stage hooks" not in plugins


def test_stage_hooks_are_listed_on_request_which_imports_the_methods():
    code, output, heavy = spur("plugins", "--hooks")
    assert code == 0 and "torch" in heavy
    assert "    mitigation groupdro, stage hooks: spurcore_stage_start, spurcore_train_loss, spurcore_train_sampler\n" in output
    assert "    mitigations: " not in output
