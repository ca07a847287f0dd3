"""Group DRO: the per-group losses, the weight update, group-balanced sampling, and the stage."""

from __future__ import annotations


import numpy as np
import torch

import spurcore_groupdro
from spurcore.api import RunDir, run_pipeline
from spurcore.testing import mitigation_conformance
from spurcore_groupdro import GroupDRO, GroupDROOptions, group_losses, update_weights

TestConformance = mitigation_conformance("groupdro", plugin=spurcore_groupdro)


def test_group_losses_are_means_over_each_groups_examples():
    losses = torch.tensor([1.0, 3.0, 2.0, 5.0])
    groups = torch.tensor([0, 0, 2, 2])
    per_group, present = group_losses(losses, groups, 4)
    assert per_group.tolist() == [2.0, 0.0, 3.5, 0.0]
    assert present.tolist() == [True, False, True, False]


def test_weights_move_towards_the_worst_group_and_absent_groups_keep_theirs():
    q = torch.full((4,), 0.25, dtype=torch.float64)
    new = update_weights(q, torch.tensor([2.0, 0.0, 3.5, 9.0], dtype=torch.float64),
                         torch.tensor([True, False, True, False]), eta=0.1)
    assert torch.isclose(new.sum(), torch.tensor(1.0, dtype=torch.float64))
    expected = torch.tensor([np.exp(0.2), 1.0, np.exp(0.35), 1.0], dtype=torch.float64)
    assert torch.allclose(new, expected / expected.sum())
    assert new[2] > new[0] > new[1] == new[3]


def test_sampler_draws_every_group_equally_often(spur_plugins, spur_tiny_config, tmp_path):
    method = GroupDRO(GroupDROOptions())
    data = spur_plugins.get("datasets", "tiny").build(spur_plugins.get("datasets", "tiny").options(n_train=2000))

    class Run:
        pass

    run = Run()
    run.data = data
    method.spurcore_stage_start(run)
    order = method.spurcore_train_sampler(run, torch.Generator().manual_seed(0))
    counts = np.bincount(data.groups("train")[order.numpy()], minlength=4)
    assert len(order) == 2000
    assert np.bincount(data.groups("train")).min() < 150  # the minority groups are rare ...
    assert counts.min() > 420 and counts.max() < 580  # ... and drawn as often as the others (500 each)
    assert method.spurcore_train_sampler(run, torch.Generator().manual_seed(0)).tolist() == order.tolist()


def test_without_balanced_sampling_the_weight_goes_to_the_minority_groups(spur_plugins, spur_register_plugin,
                                                                         spur_tiny_config, tmp_path):
    spur_register_plugin(spurcore_groupdro, "groupdro")
    config = spur_tiny_config(stages=[{"method": "groupdro", "options": {"eta": 0.5, "balanced_sampling": False}}],
                         train={"epochs": 3, "batch_size": 32, "lr": 0.01})
    run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda m: None)
    q = RunDir(tmp_path / "run").load_checkpoint("0-groupdro", 3)["method"]["q"]
    # tiny: the attribute agrees with the class on 90% of train, so groups neg/on and pos/off are the minority
    assert torch.isclose(q.sum(), torch.tensor(1.0, dtype=q.dtype))
    assert q[1] + q[2] > 0.5, q.tolist()
