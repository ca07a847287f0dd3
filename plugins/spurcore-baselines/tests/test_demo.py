"""`make demo` keeps its 10-minute budget: its command, as make would run it, sweeps ERM, the
seeds' three methods and DFR; `make demo DEMO_METHODS=all` every installed mitigation but the
baselines (this plugin is blocked), and with `DEMO_PLUGINS=` as well, all of them (README, "Two
commands")."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from spurcore.api import PluginManager
from spurcore_baselines import specs

ROOT = Path(__file__).resolve().parents[3]
BASELINES = {spec.name for spec in specs()}


def demo_sweep(*assignments: str) -> tuple[list[str], list[str]]:
    """The `-p` arguments and the whole command of the demo's sweep, from `make -n demo`."""
    printed = subprocess.run(["make", "--no-print-directory", "-n", "demo", *assignments], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    words = shlex.split(next(line for line in printed.splitlines() if " sweep " in line))
    ahead = words[1:words.index("sweep")]
    return [value for flag, value in zip(ahead[::2], ahead[1::2]) if flag == "-p"], words


@pytest.fixture(scope="module")
def installed() -> set[str]:
    return set(PluginManager(block=["progress"]).registry("mitigations"))


def test_the_demo_sweeps_the_seeds_methods_and_dfr(installed):
    plugin_args, words = demo_sweep()
    assert plugin_args == ["no:baselines"]
    methods = words[words.index("--methods") + 1].split(",")
    assert sorted(methods) == ["dfr", "dfr-class", "fairdropout", "neurontune", "prunedtwin"]
    assert set(methods) <= installed


def test_the_demo_with_every_method_blocks_only_the_baselines(installed):
    assert BASELINES <= installed, "spurcore-baselines is installed with the others (make install)"
    plugin_args, words = demo_sweep("DEMO_METHODS=all")
    assert plugin_args == ["no:baselines"]
    assert words[words.index("--methods") + 1] == "all"
    shown = set(PluginManager.from_args(plugin_args).registry("mitigations"))
    assert shown == installed - BASELINES
    assert {"erm", "dfr", "groupdro", "jtt", "lff"} <= shown


def test_the_demo_with_no_plugin_blocked_sweeps_them_all(installed):
    plugin_args, words = demo_sweep("DEMO_METHODS=all", "DEMO_PLUGINS=")
    assert plugin_args == [] and words[words.index("--methods") + 1] == "all"
    assert set(PluginManager.from_args(plugin_args).registry("mitigations")) >= installed
