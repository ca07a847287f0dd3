"""`make demo` keeps its 10-minute budget by blocking this plugin: its command, as make would
run it, loads every installed mitigation but the baselines, and `make demo DEMO_PLUGINS=` loads
them all (README, "Two commands")."""

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


def test_the_demo_sweeps_every_installed_method_but_the_baselines(installed):
    assert BASELINES <= installed, "spurcore-baselines is installed with the others (make install)"
    plugin_args, words = demo_sweep()
    assert plugin_args == ["no:baselines"]
    assert words[words.index("--methods") + 1] == "all"
    shown = set(PluginManager.from_args(plugin_args).registry("mitigations"))
    assert shown == installed - BASELINES
    assert {"erm", "dfr", "groupdro", "jtt", "lff"} <= shown


def test_the_demo_with_no_plugin_blocked_sweeps_them_all(installed):
    plugin_args, _ = demo_sweep("DEMO_PLUGINS=")
    assert plugin_args == []
    assert set(PluginManager.from_args(plugin_args).registry("mitigations")) >= installed
