"""The test kit's fixtures, as a plugin author's tests see them (spurcore's pytest plugin), and
that a pytest session gets them only by opting in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_data_is_spurious_on_train_and_balanced_on_val(spur_tiny_data):
    train, val = spur_tiny_data.splits["train"], spur_tiny_data.splits["val"]
    assert (len(train), len(val), len(spur_tiny_data.splits["test"])) == (200, 120, 160)
    assert spur_tiny_data.input_shape == (8,) and spur_tiny_data.n_groups == 4
    assert 0.85 < (train.y == train.a).mean() < 0.95
    assert 0.35 < (val.y == val.a).mean() < 0.65


def test_tiny_backbone_maps_tiny_inputs_to_its_features(spur_tiny_data, spur_tiny_backbone):
    features = spur_tiny_backbone.module(spur_tiny_data.splits["val"].inputs)
    assert features.shape == (120, spur_tiny_backbone.feature_dim) == (120, 16)
    assert torch.all(features >= 0)  # ends in a ReLU


def test_tiny_attributes_can_be_kept_on_some_splits_only(spur_plugins):
    spec = spur_plugins.get("datasets", "tiny")
    data = spec.build(spec.options(attributes=["val"]))
    assert [s for s in ("train", "val", "test") if data.splits[s].has_attributes] == ["val"]
    full = spec.build(spec.options())
    assert np.array_equal(data.splits["train"].y, full.splits["train"].y)  # the same examples


def test_spur_cli_runs_the_command_line_with_the_tests_plugins(spur_cli):
    result = spur_cli("list", "mitigations")
    assert result.exit_code == 0
    assert any(line.startswith("tiny-refit ") for line in result.output.splitlines())
    missing = spur_cli("show", "/nonexistent/run")
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_spur_register_plugin_unregisters_after_the_test_even_when_it_fails(pytester):
    pytester.makeconftest('pytest_plugins = ["spurcore.testing"]')
    pytester.makepyfile(test_registration="""
        import pytest
        from spurcore import hookimpl
        from spurcore.testing import kit_manager

        SHARED = kit_manager()

        class Observer:
            @hookimpl
            def spurcore_run_start(self, run):
                pass

        @pytest.fixture
        def spur_plugins():
            return SHARED

        def test_registers_then_fails(spur_register_plugin):
            spur_register_plugin(Observer(), "observer")
            assert SHARED.pm.get_plugin("observer") is not None
            raise AssertionError("boom")

        def test_it_is_gone():
            assert SHARED.pm.get_plugin("observer") is None

        def test_misspelled_hooks_are_refused(spur_register_plugin):
            class Typo:
                def spurcore_run_strat(self, run):
                    pass
            with pytest.raises(Exception, match="unknown hook 'spurcore_run_strat'; did you mean 'spurcore_run_start'"):
                spur_register_plugin(Typo(), "typo")
    """)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_registers_then_fails*boom*"])


KIT_FIXTURES = {"spur_plugins", "spur_register_plugin", "spur_tiny_config", "spur_tiny_data", "spur_tiny_backbone",
                "spur_cli", "spur_read_only"}


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest in a fresh interpreter, in a folder with a pytest.ini of its own, so no conftest
    or setting of this repository applies."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=folder,
                          capture_output=True, text=True)


def test_a_session_that_does_not_opt_in_loads_neither_the_kit_nor_torch(tmp_path):
    (tmp_path / "test_plain.py").write_text(textwrap.dedent("""
        import sys

        import pytest

        def test_plain(request):
            assert "spurcore.testing" not in sys.modules and "torch" not in sys.modules
            for name in ("plugins", "spur_plugins"):
                with pytest.raises(pytest.FixtureLookupError):
                    request.getfixturevalue(name)
    """))
    result = _pytest(tmp_path)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout


def test_opting_in_gives_the_kit_fixtures_and_only_spur_names(tmp_path):
    listed = _pytest(tmp_path, "-p", "spurcore.testing", "--fixtures")
    assert listed.returncode == 0, listed.stdout
    section = listed.stdout.split("fixtures defined from spurcore.testing")[1]
    names = {line.split(" -- ")[0] for line in section.splitlines() if " -- " in line and not line.startswith(" ")}
    assert names == KIT_FIXTURES

    (tmp_path / "conftest.py").write_text('pytest_plugins = ["spurcore.testing"]\n')
    (tmp_path / "test_kit_user.py").write_text(textwrap.dedent("""
        def test_uses_the_kit(spur_plugins, spur_tiny_data):
            assert spur_plugins.get("datasets", "tiny").name == "tiny"
            assert len(spur_tiny_data.splits["train"]) == 200
    """))
    used = _pytest(tmp_path)
    assert used.returncode == 0 and "1 passed" in used.stdout, used.stdout


PLUGIN_PROJECTS = sorted(ROOT.glob("plugins/*/pyproject.toml")) + sorted(ROOT.glob("examples/third_party/*/pyproject.toml"))


@pytest.mark.parametrize("project", PLUGIN_PROJECTS, ids=lambda p: p.parent.name)
def test_every_plugin_opts_in_for_tests_run_from_its_own_folder(project):
    options = tomllib.loads(project.read_text()).get("tool", {}).get("pytest", {}).get("ini_options", {})
    assert "-p spurcore.testing" in options.get("addopts", ""), f"{project}: [tool.pytest.ini_options] addopts"
