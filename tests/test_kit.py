"""The test kit's fixtures, as a plugin author's tests see them (spurcore's pytest plugin)."""

from __future__ import annotations

import numpy as np
import torch

pytest_plugins = ["pytester"]


def test_tiny_data_is_spurious_on_train_and_balanced_on_val(tiny_data):
    train, val = tiny_data.splits["train"], tiny_data.splits["val"]
    assert (len(train), len(val), len(tiny_data.splits["test"])) == (200, 120, 160)
    assert tiny_data.input_shape == (8,) and tiny_data.n_groups == 4
    assert 0.85 < (train.y == train.a).mean() < 0.95
    assert 0.35 < (val.y == val.a).mean() < 0.65


def test_tiny_backbone_maps_tiny_inputs_to_its_features(tiny_data, tiny_backbone):
    features = tiny_backbone.module(tiny_data.splits["val"].inputs)
    assert features.shape == (120, tiny_backbone.feature_dim) == (120, 16)
    assert torch.all(features >= 0)  # ends in a ReLU


def test_tiny_attributes_can_be_kept_on_some_splits_only(plugins):
    spec = plugins.get("datasets", "tiny")
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


def test_register_plugin_unregisters_after_the_test_even_when_it_fails(pytester):
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
        def plugins():
            return SHARED

        def test_registers_then_fails(register_plugin):
            register_plugin(Observer(), "observer")
            assert SHARED.pm.get_plugin("observer") is not None
            raise AssertionError("boom")

        def test_it_is_gone():
            assert SHARED.pm.get_plugin("observer") is None

        def test_misspelled_hooks_are_refused(register_plugin):
            class Typo:
                def spurcore_run_strat(self, run):
                    pass
            with pytest.raises(Exception, match="unknown hook 'spurcore_run_strat'; did you mean 'spurcore_run_start'"):
                register_plugin(Typo(), "typo")
    """)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_registers_then_fails*boom*"])
