"""How batches are loaded: workers and prefetching from the machine, batch transforms on the
run's device, and the `[train]` speed options checked before a run starts."""

from __future__ import annotations

import pytest
import torch

from spurcore.config import ConfigError, TrainConfig, structure
from spurcore.data import SplitData, iterate_batches
from spurcore.device import MAX_AUTO_WORKERS, Device, available_cores
from spurcore.runner import RunError, run_pipeline


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
