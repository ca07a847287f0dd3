"""Typed data: validation of splits and datasets, groups, and the batches the runner feeds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from spurcore.data import MISSING_ATTRIBUTE, Batch, SplitData, SpuriousData, group_ids, iterate_batches
from spurcore.errors import ConfigError, DataError


def split(name: str, n: int = 6, *, y=None, a="default", n_classes=2, n_attrs=2, width=3) -> SplitData:
    y = np.arange(n) % n_classes if y is None else y
    if isinstance(a, str):
        a = (np.arange(n) // n_classes) % n_attrs
    inputs = torch.arange(n * width, dtype=torch.float32).reshape(n, width)
    return SplitData(name=name, inputs=inputs, y=y, a=a)


def dataset(**splits) -> SpuriousData:
    base = {"train": split("train"), "val": split("val"), "test": split("test")}
    base.update(splits)
    base = {k: v for k, v in base.items() if v is not None}
    return SpuriousData(name="toy", splits=base, class_names=("cat", "dog"), attr_names=("indoor", "outdoor"),
                        input_shape=(3,))


# --- SplitData ----------------------------------------------------------------------------------------


def test_split_length_mismatch_names_the_split():
    with pytest.raises(DataError, match=r"^split 'train': 6 inputs but 5 class labels$"):
        SplitData(name="train", inputs=torch.zeros(6, 2), y=np.zeros(5, dtype=int))
    with pytest.raises(DataError, match=r"^split 'val': 6 inputs but 7 attribute labels$"):
        SplitData(name="val", inputs=torch.zeros(6, 2), y=np.zeros(6, dtype=int), a=np.zeros(7, dtype=int))


@pytest.mark.parametrize("labels", [np.zeros(4), np.zeros((2, 2), dtype=int), ["a", "b", "c", "d"]],
                         ids=["float", "2-d", "strings"])
def test_labels_must_be_a_1d_integer_array(labels):
    with pytest.raises(DataError, match="labels must be a 1-d integer array"):
        SplitData(name="train", inputs=torch.zeros(4, 2), y=labels)


def test_labels_are_copied_and_read_only():
    y = np.array([0, 1, 1, 0], dtype=np.int32)
    s = SplitData(name="train", inputs=torch.zeros(4, 2), y=y, a=[1, 0, 0, 1])
    assert s.y.dtype == np.int64 and s.a.dtype == np.int64
    y[0] = 1
    assert s.y[0] == 0  # a copy, not a view of the caller's array
    with pytest.raises(ValueError):
        s.y[1] = 0
    with pytest.raises(ValueError):
        s.a[1] = 0


def test_split_properties():
    s = split("train", 5)
    assert len(s) == 5 and s.in_memory and s.has_attributes
    s = SplitData(name="val", inputs=torch.utils.data.TensorDataset(torch.zeros(3, 2)), y=[0, 1, 0])
    assert len(s) == 3 and not s.in_memory and not s.has_attributes and s.a is None


# --- SpuriousData -----------------------------------------------------------------------------------


def test_class_label_out_of_range_names_split_and_row():
    bad = split("val", y=np.array([0, 1, 1, 2, 0, 1]))
    with pytest.raises(DataError) as info:
        dataset(val=bad)
    assert str(info.value) == "dataset 'toy', split 'val', row 3: class label 2 outside 0..1"


def test_negative_class_label_names_the_first_bad_row():
    bad = split("test", y=np.array([0, 1, -1, 0, -3, 1]))
    with pytest.raises(DataError, match=r"split 'test', row 2: class label -1 outside 0\.\.1"):
        dataset(test=bad)


def test_attribute_out_of_range_names_split_and_row():
    bad = split("train", a=np.array([0, 1, 0, 1, 0, 5]))
    with pytest.raises(DataError) as info:
        dataset(train=bad)
    assert str(info.value) == "dataset 'toy', split 'train', row 5: attribute 5 outside 0..1"


def test_missing_splits_are_named():
    with pytest.raises(DataError, match=r"^dataset 'toy' has no test split$"):
        dataset(test=None)
    with pytest.raises(DataError, match=r"^dataset 'toy' has no val, test split$"):
        dataset(val=None, test=None)


def test_empty_split_is_an_error():
    empty = SplitData(name="val", inputs=torch.zeros(0, 3), y=np.array([], dtype=np.int64))
    with pytest.raises(DataError, match=r"^dataset 'toy': split 'val' is empty$"):
        dataset(val=empty)


def test_extra_evaluation_splits_are_allowed():
    data = dataset(ood=split("ood", 4))
    assert list(data.splits) == ["train", "val", "test", "ood"]


def test_groups_names_and_counts():
    y = np.array([0, 0, 1, 1, 1, 0, 1])
    a = np.array([0, 1, 0, 1, 1, 1, 1])
    data = dataset(val=split("val", 7, y=y, a=a))
    assert (data.n_classes, data.n_attrs, data.n_groups) == (2, 2, 4)
    assert data.group_names == ("cat/indoor", "cat/outdoor", "dog/indoor", "dog/outdoor")
    # group = y * n_attrs + a
    np.testing.assert_array_equal(data.groups("val"), [0, 1, 2, 3, 3, 1, 3])
    assert data.group_counts("val") == {"cat/indoor": 1, "cat/outdoor": 2, "dog/indoor": 1, "dog/outdoor": 3}


def test_no_attributes_means_no_groups():
    data = dataset(test=split("test", a=None))
    assert data.groups("test") is None
    assert data.group_counts("test") is None


def test_group_counts_include_empty_groups():
    data = dataset(train=split("train", 4, y=np.array([0, 0, 0, 0]), a=np.array([1, 1, 1, 1])))
    assert data.group_counts("train") == {"cat/indoor": 0, "cat/outdoor": 4, "dog/indoor": 0, "dog/outdoor": 0}


@settings(max_examples=60, deadline=None, database=None)
@given(st.data())
def test_group_ids_decode_to_their_class_and_attribute(draw):
    n_classes = draw.draw(st.integers(1, 5))
    n_attrs = draw.draw(st.integers(1, 4))
    n = draw.draw(st.integers(1, 40))
    y = np.array(draw.draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    a = np.array(draw.draw(st.lists(st.integers(0, n_attrs - 1), min_size=n, max_size=n)))
    classes = tuple(f"c{i}" for i in range(n_classes))
    attrs_ = tuple(f"a{i}" for i in range(n_attrs))
    splits = {s: SplitData(name=s, inputs=torch.zeros(n, 1), y=y, a=a) for s in ("train", "val", "test")}
    data = SpuriousData(name="p", splits=splits, class_names=classes, attr_names=attrs_)
    groups = data.groups("val")
    np.testing.assert_array_equal(groups, group_ids(y, a, n_attrs))
    assert groups.min() >= 0 and groups.max() < data.n_groups
    for g, yi, ai in zip(groups, y, a):
        assert data.group_names[g] == f"c{yi}/a{ai}"
    expected = Counter(f"c{yi}/a{ai}" for yi, ai in zip(y, a))
    assert data.group_counts("val") == {name: expected.get(name, 0) for name in data.group_names}


# --- batches ----------------------------------------------------------------------------------------


class RowDataset(torch.utils.data.Dataset):
    """A map-style dataset whose item i is row i of a tensor (what a lazily loaded split is)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        self.seen.append(int(i))
        return self.rows[i]


def both_backends(n=10, with_attributes=True):
    rows = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4)
    y = np.arange(n) % 3
    a = (np.arange(n) * 7) % 2 if with_attributes else None
    memory = SplitData(name="train", inputs=rows, y=y, a=a)
    backed = SplitData(name="train", inputs=RowDataset(rows), y=y, a=a)
    return memory, backed


def test_in_memory_batches_follow_the_order_exactly():
    memory, _ = both_backends()
    order = [9, 2, 2, 5, 0, 7, 3]
    batches = list(iterate_batches(memory, order, batch_size=3))
    assert [b.index.tolist() for b in batches] == [[9, 2, 2], [5, 0, 7], [3]]
    for b in batches:
        assert isinstance(b, Batch) and len(b) == len(b.index)
        assert torch.equal(b.x, memory.inputs[b.index])
        assert b.y.tolist() == memory.y[b.index.numpy()].tolist()
        assert b.a.tolist() == memory.a[b.index.numpy()].tolist()
        assert b.index.dtype == b.y.dtype == b.a.dtype == torch.long


def test_dataset_backed_batches_are_identical_to_in_memory_ones():
    memory, backed = both_backends()
    order = torch.tensor([4, 8, 1, 1, 6, 0, 9, 3, 2])
    expected = list(iterate_batches(memory, order, batch_size=4))
    got = list(iterate_batches(backed, order, batch_size=4))
    assert len(got) == len(expected) == 3
    for e, g in zip(expected, got):
        assert torch.equal(e.index, g.index)
        assert torch.equal(e.x, g.x)
        assert torch.equal(e.y, g.y)
        assert torch.equal(e.a, g.a)
    # the dataset was read exactly in the requested order
    assert backed.inputs.seen == order.tolist()


def test_missing_attributes_are_minus_one():
    memory, backed = both_backends(n=5, with_attributes=False)
    for s in (memory, backed):
        batches = list(iterate_batches(s, [4, 3, 2, 1, 0], batch_size=2))
        assert [b.a.tolist() for b in batches] == [[MISSING_ATTRIBUTE] * 2, [MISSING_ATTRIBUTE] * 2, [MISSING_ATTRIBUTE]]
        assert MISSING_ATTRIBUTE == -1
        assert [b.y.tolist() for b in batches] == [[1, 0], [2, 1], [0]]


@settings(max_examples=50, deadline=None, database=None)
@given(
    order=st.lists(st.integers(0, 9), min_size=1, max_size=40),
    batch_size=st.integers(1, 12),
)
def test_batches_partition_the_order_property(order, batch_size):
    memory, backed = both_backends()
    for s in (memory, backed):
        batches = list(iterate_batches(s, order, batch_size))
        assert torch.cat([b.index for b in batches]).tolist() == order
        assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
        assert 1 <= len(batches[-1]) <= batch_size
        for b in batches:
            assert torch.equal(b.x, memory.inputs[b.index])


def test_training_reads_the_augmented_view_and_evaluation_the_plain_one():
    rows = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    split = SplitData(name="train", inputs=rows, y=np.zeros(6, dtype=int), train_inputs=RowDataset(-rows))
    order = [5, 0, 3]
    plain = list(iterate_batches(split, order, batch_size=2))
    augmented = list(iterate_batches(split, order, batch_size=2, augment=True))
    assert [b.index.tolist() for b in augmented] == [b.index.tolist() for b in plain] == [[5, 0], [3]]
    for p, a in zip(plain, augmented):
        assert torch.equal(a.x, -p.x) and torch.equal(p.x, rows[p.index])
    no_view = SplitData(name="val", inputs=rows, y=np.zeros(6, dtype=int))
    assert torch.equal(next(iterate_batches(no_view, order, 3, augment=True)).x, rows[[5, 0, 3]])
    with pytest.raises(DataError, match=r"split 'train': 6 inputs but 5 training inputs"):
        SplitData(name="train", inputs=rows, y=np.zeros(6, dtype=int), train_inputs=rows[:5])


class FailingDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            raise DataError("/data/img-2.jpg: unreadable image")
        return torch.zeros(3)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_data_error_in_a_worker_keeps_its_one_line_message(workers):
    split = SplitData(name="train", inputs=FailingDataset(), y=np.zeros(4, dtype=int))
    with pytest.raises(DataError) as error:
        list(iterate_batches(split, [0, 1, 2, 3], 2, num_workers=workers))
    assert str(error.value) == "/data/img-2.jpg: unreadable image"


def test_holdout_moves_a_seeded_share_of_every_training_group_to_a_split_of_its_own(spur_tiny_config, spur_plugins, tmp_path):
    from spurcore.data import hold_out
    from spurcore.building import build_data
    from spurcore.planning import plan
    from spurcore.runner import run_pipeline

    data = build_data(plan(spur_tiny_config(), spur_plugins), spur_plugins)
    held = hold_out(data, 0.25, seed=3)
    train, holdout = held.splits["train"], held.splits["holdout"]
    counts = np.bincount(data.groups("train"), minlength=data.n_groups)
    assert np.bincount(held.groups("holdout"), minlength=data.n_groups).tolist() == [
        min(max(round(0.25 * n), 1 if n > 1 else 0), n - 1) if n else 0 for n in counts]
    assert len(train) + len(holdout) == len(data.splits["train"])
    rows = {tuple(r) for r in data.splits["train"].inputs.numpy().round(6)}
    assert {tuple(r) for r in holdout.inputs.numpy().round(6)} <= rows
    assert not {tuple(r) for r in holdout.inputs.numpy()} & {tuple(r) for r in train.inputs.numpy()}
    again = hold_out(data, 0.25, seed=3).splits["holdout"]
    assert torch.equal(again.inputs, holdout.inputs)
    assert not torch.equal(hold_out(data, 0.25, seed=4).splits["holdout"].inputs, holdout.inputs)
    assert hold_out(data, 0.0, seed=3) is data

    summary = run_pipeline(spur_tiny_config(dataset={"name": "tiny", "holdout": 0.25}), tmp_path / "run", spur_plugins,
                           log=lambda m: None)
    assert summary["stages"][0]["metrics"]["holdout"]["group_count"] == dict(zip(
        data.group_names, np.bincount(held.groups("holdout"), minlength=data.n_groups).tolist()))
    assert summary["stages"][0]["train_eval"]["of"] == len(train)


def test_holdout_must_leave_a_training_split(spur_tiny_config):
    with pytest.raises(ConfigError, match=r"dataset\.holdout: must be in \[0, 1\), got 1\.0"):
        spur_tiny_config(dataset={"name": "tiny", "holdout": 1.0})


def test_train_subset_keeps_a_seeded_uniform_share_of_the_training_split_and_nothing_else(spur_tiny_config, spur_plugins,
                                                                                          tmp_path):
    from spurcore.api import open_run, train_subset_positions
    from spurcore.building import build_data
    from spurcore.planning import plan
    from spurcore.runner import run_pipeline

    full = build_data(plan(spur_tiny_config(), spur_plugins), spur_plugins)
    kept = train_subset_positions(200, 0.7, 5)
    assert len(kept) == 140 and kept.tolist() == sorted(set(kept.tolist())) and kept.max() < 200
    assert train_subset_positions(200, 0.7, 5).tolist() == kept.tolist()
    assert train_subset_positions(200, 0.7, 6).tolist() != kept.tolist()
    assert train_subset_positions(200, 1.0, 5).tolist() == list(range(200))
    assert len(train_subset_positions(3, 0.01, 0)) == 1  # never an empty training split

    config = spur_tiny_config(seed=5, dataset={"name": "tiny", "train_subset": 0.7, "holdout": 0.25})
    data = build_data(plan(config, spur_plugins), spur_plugins)
    train, holdout = data.splits["train"], data.splits["holdout"]
    assert len(train) + len(holdout) == 140  # holdout takes its share of the kept examples
    rows = {tuple(r) for r in full.splits["train"].inputs[torch.from_numpy(kept)].numpy()}
    assert {tuple(r) for r in train.inputs.numpy()} | {tuple(r) for r in holdout.inputs.numpy()} == rows
    assert data.splits["val"] is full.splits["val"] or torch.equal(data.splits["val"].inputs, full.splits["val"].inputs)

    summary = run_pipeline(spur_tiny_config(seed=5, dataset={"name": "tiny", "train_subset": 0.7}), tmp_path / "run",
                           spur_plugins, log=lambda m: None)
    assert summary["stages"][0]["train_eval"]["of"] == 140
    reopened = open_run(tmp_path / "run", spur_plugins).data.splits["train"]
    assert np.array_equal(reopened.y, full.splits["train"].y[kept])


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1])
def test_train_subset_must_keep_some_and_at_most_every_example(spur_tiny_config, value):
    with pytest.raises(ConfigError, match=rf"dataset\.train_subset: must be in \(0, 1\], got {value}"):
        spur_tiny_config(dataset={"name": "tiny", "train_subset": value})
