"""How batches are loaded: workers and prefetching from the machine, batch transforms on the
run's device, and the `[train]` speed options checked before a run starts."""

from __future__ import annotations

import os

import pytest
import torch

from spurcore.config import ConfigError, TrainConfig, structure
from spurcore.data import SplitData, iterate_batches
from spurcore.device import MAX_AUTO_WORKERS, Device, available_cores
from spurcore.planning import RunError
from spurcore.runner import run_pipeline


@pytest.mark.parametrize("value", [0, 3, "auto"])
def test_num_workers_takes_a_count_or_auto(value):
    assert structure(TrainConfig, {"num_workers": value}).num_workers == value


@pytest.mark.parametrize("value", [-1, "many", True, 1.5])
def test_num_workers_refuses_anything_else(value):
    with pytest.raises(ConfigError, match="num_workers"):
        structure(TrainConfig, {"num_workers": value}, "train")


def test_loader_options_on_the_cpu():
    device = Device.from_config("cpu", amp=True)
    auto = device.loader_options("auto")
    assert auto == {"num_workers": min(available_cores(), MAX_AUTO_WORKERS), "pin_memory": False,
                    "prefetch_factor": 2, "device": torch.device("cpu")}
    assert device.loader_options(0) == {"num_workers": 0, "pin_memory": False, "prefetch_factor": None,
                                        "device": torch.device("cpu")}


class Raw(torch.utils.data.Dataset):
    """uint8 items finished per batch, as the decoded-image cache yields them."""

    def __init__(self, n: int) -> None:
        self.items = torch.arange(n * 4, dtype=torch.uint8).reshape(n, 4)
        self.calls: list[tuple[int, ...]] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i]

    def batch_transform(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return x.float() / 2


@pytest.mark.parametrize("through_subset", [False, True])
def test_a_batch_transform_finishes_each_whole_batch_on_the_given_device(through_subset):
    raw = Raw(10)
    inputs = torch.utils.data.Subset(raw, list(range(10))) if through_subset else raw
    split = SplitData(name="train", inputs=inputs, y=[0, 1] * 5)
    order = torch.tensor([9, 0, 4, 2, 7, 1, 3, 5, 6, 8])
    batches = list(iterate_batches(split, order, 4, device=torch.device("cpu")))
    assert raw.calls == [(4, 4), (4, 4), (2, 4)]
    assert torch.equal(torch.cat([b.x for b in batches]), raw.items[order].float() / 2)


def test_channels_last_on_inputs_that_are_not_images_stops_the_run_before_it_writes(spur_tiny_config, spur_plugins,
                                                                                    tmp_path):
    config = spur_tiny_config(train={"epochs": 1, "batch_size": 32, "lr": 0.01, "channels_last": True})
    with pytest.raises(RunError, match=r"stages\[0\]\.train\.channels_last: a memory layout for images"):
        run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda m: None)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


class RandomItems(torch.utils.data.Dataset):
    """Item i: (i, a draw from the torch RNG, the id of the process that drew it)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), float(torch.rand(())), float(os.getpid())], dtype=torch.float64)


def augmented_pass(split: SplitData, workers: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of one augmented pass from global seed `seed`, and the global RNG's next draw."""
    torch.manual_seed(seed)
    order = torch.tensor([3, 7, 0, 11, 5, 1, 9, 2, 10, 4, 8, 6])
    x = torch.cat([b.x for b in iterate_batches(split, order, 4, augment=True, num_workers=workers)])
    assert x[:, 0].tolist() == order.tolist()
    return x, torch.rand(())


@pytest.mark.parametrize("workers", [1, 2])
def test_augmentation_draws_are_the_same_with_any_number_of_workers_and_the_workers_are_kept(workers):
    split = SplitData(name="train", inputs=torch.zeros(12, 1), y=[0, 1] * 6, train_inputs=RandomItems())
    here, after_here = augmented_pass(split, 0)
    there, after_there = augmented_pass(split, workers)
    assert torch.equal(here[:, 1], there[:, 1]) and torch.equal(after_here, after_there)
    assert set(here[:, 2].tolist()) == {os.getpid()} and os.getpid() not in there[:, 2].tolist()
    again, _ = augmented_pass(split, workers)
    assert torch.equal(again[:, 1], there[:, 1])  # the same global seed, the same draws
    assert set(again[:, 2].tolist()) == set(there[:, 2].tolist())  # by the same worker processes
    other, _ = augmented_pass(split, workers, seed=6)
    assert not torch.equal(other[:, 1], there[:, 1])


def test_two_passes_over_one_dataset_at_once_each_get_their_own_batches():
    split = SplitData(name="train", inputs=RandomItems(), y=[0, 1] * 6)
    first = iterate_batches(split, torch.arange(12), 4, num_workers=1)
    second = iterate_batches(split, torch.arange(11, -1, -1), 4, num_workers=1)
    got = {"first": [next(first)], "second": [next(second)]}
    got["first"] += list(first)
    got["second"] += list(second)
    assert torch.cat([b.x[:, 0] for b in got["first"]]).tolist() == list(range(12))
    assert torch.cat([b.x[:, 0] for b in got["second"]]).tolist() == list(range(11, -1, -1))
    for name, batches in got.items():
        assert all(torch.equal(b.x[:, 0].long(), b.index) for b in batches), name
