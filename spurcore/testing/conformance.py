"""The mitigation contract as a test suite any mitigation plugin runs with one line:

    from spurcore.testing import mitigation_conformance
    TestConformance = mitigation_conformance("my-method", plugin=my_plugin_module)

The returned class holds one test per promise a mitigation makes (modelled on DomainBed's
`test_models.py`, which runs every algorithm on a debug dataset). Each pipeline is
`before + [the method]` on the kit's `tiny` dataset with the `mlp` backbone, selected by
`val-worst-class` (which reads no attribute labels):

* it is registered, and its options validate from `options`;
* it trains (or fits) and every reported number is finite;
* it is deterministic: a second run on identical inputs gives the same summary and weights
  (checked first wherever a difference would otherwise be blamed on something else);
* it reads attribute labels only on the splits its spec declares: the same pipeline on data
  whose other splits carry no attribute labels at all must run and give bit-identical
  weights (so neither `batch.a`, `run.data`, embeddings nor group counts were read there);
* without the attribute labels it declares, the kernel refuses to run it, naming it;
* interrupted in its own stage and resumed, it reaches the uninterrupted result exactly;
* a last-layer stage (`tiny-refit`) after it refits the head on its unchanged features.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from spurcore import hookimpl
from spurcore.config import pipeline_from_dict
from spurcore.data import REQUIRED_SPLITS
from spurcore.plugins import PluginManager
from spurcore.rundir import RunDir
from spurcore.planning import plan, RunError
from spurcore.runner import run_pipeline
from spurcore.testing.tiny import TinyPlugin

CONFORMANCE_TRAIN = {"epochs": 2, "batch_size": 32, "eval_batch_size": 256, "lr": 0.01}


def kit_manager(extra: Iterable[tuple[object, str]] = ()) -> PluginManager:
    """The kit's plugin manager: built-ins and `TinyPlugin` (no entry points, no progress bar),
    plus `extra` (plugin, name) pairs."""
    manager = PluginManager(entry_points=False, block=["progress"])
    manager.register(TinyPlugin(), "tiny")
    for plugin, name in extra:
        manager.register(plugin, name)
    return manager


class _StopInStage:
    """Interrupts the run, as a Ctrl-C would, inside one stage: at the start of its second
    epoch (train stages), or after it has evaluated its new head (post-hoc stages)."""

    def __init__(self, stage_index: int) -> None:
        self.stage_index = stage_index

    @hookimpl
    def spurcore_epoch_start(self, stage, epoch):
        if stage.index == self.stage_index and epoch == 2:
            raise KeyboardInterrupt

    @hookimpl
    def spurcore_evaluation_end(self, stage, epoch, split):
        if stage.index == self.stage_index and stage.spec.kind == "posthoc" and split == "test":
            raise KeyboardInterrupt


def _weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The kept weights of every stage of a finished run (its selected epoch's checkpoint)."""
    out = RunDir(run_dir)
    return {
        f"{i}-{stage['name']}": out.load_checkpoint(f"{i}-{stage['name']}", stage["selected"]["epoch"])["model"]
        for i, stage in enumerate(out.read_summary()["stages"])
    }


def _same_weights(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    """The (stage, tensor) names where two runs' kept weights differ."""
    differ = sorted(a.keys() ^ b.keys())
    for stage in a.keys() & b.keys():
        if a[stage].keys() != b[stage].keys():
            differ.append(f"{stage}: different tensors")
        differ += [f"{stage}: {k}" for k in a[stage].keys() & b[stage].keys() if not torch.equal(a[stage][k], b[stage][k])]
    return sorted(differ)


def _numbers(value: Any, where: str = "") -> Iterable[tuple[str, float]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield where, float(value)


def mitigation_conformance(
    method: str,
    *,
    plugin: object | None = None,
    plugin_name: str | None = None,
    options: Mapping[str, Any] | None = None,
    before: Sequence[Mapping[str, Any]] | None = None,
    train: Mapping[str, Any] | None = None,
) -> type:
    """A pytest test class checking mitigation `method` against the contract.

    `plugin` is the object or module that registers it (None for one already registered by
    the built-ins), registered as `plugin_name` (default `conformance-<method>`); `options` its
    stage options; `before` the stages run ahead of it (default: none for a train method, one
    ERM stage for a post-hoc one); `train` overrides the short training settings (2 epochs of
    batches of 32; a train method needs at least 2 epochs).
    """
    extra = [] if plugin is None else [(plugin, plugin_name or f"conformance-{method}")]
    train_settings = {**CONFORMANCE_TRAIN, **(train or {})}

    def manager() -> PluginManager:
        return kit_manager(extra)

    def spec():
        return manager().get("mitigations", method)

    def stages() -> list[dict[str, Any]]:
        ahead = before if before is not None else ([{"method": "erm"}] if spec().kind == "posthoc" else [])
        # short training even where the method's train_defaults ask for more; its lr etc. stay
        short = {k: train_settings[k] for k in ("epochs", "batch_size", "eval_batch_size")}
        return [dict(s) for s in ahead] + [{"method": method, "options": dict(options or {}), "train": short}]

    def pipeline(attributes: bool | list[str] = True, extra_stages: Sequence[dict] = ()) -> Any:
        return pipeline_from_dict({
            "selector": "val-worst-class", "seed": 0, "device": "cpu",
            "metrics": ["avg_acc", "worst_group_acc", "worst_class_acc", "group_acc"],
            "dataset": {"name": "tiny", "options": {"attributes": attributes}},
            "backbone": {"name": "mlp"},
            "train": train_settings,
            "stages": stages() + list(extra_stages),
        })

    def declared() -> tuple[str, ...]:
        planned = plan(pipeline(), manager())
        return tuple(dict.fromkeys(s for st in planned.stages for s in st.spec.attribute_splits(st.options)))

    def run(out: Path, config: Any, plugins: PluginManager | None = None, resume: bool = False) -> dict:
        return run_pipeline(config, out, plugins or manager(), resume=resume, log=lambda message: None)

    def check_deterministic(reference: tuple[Path, dict], again: tuple[Path, dict]) -> None:
        """Checked first wherever a method whose result changes from run to run would otherwise
        be blamed for reading attribute labels or for resuming wrongly."""
        differ = _same_weights(_weights(reference[0]), _weights(again[0]))
        differ += [] if reference[1] == again[1] else ["the summary"]
        assert not differ, (
            f"{method!r} is not deterministic: two runs on identical inputs differ ({differ[:3]}); draw "
            f"randomness only from the sampler's generator or from a seed in the options"
        )

    class MitigationConformance:
        @pytest.fixture(scope="class")
        @classmethod
        def reference(cls, tmp_path_factory) -> tuple[Path, dict]:
            """One uninterrupted run with every attribute label, shared by the checks."""
            out = tmp_path_factory.mktemp(f"conformance-{method}") / "reference"
            return out, run(out, pipeline())

        @pytest.fixture(scope="class")
        @classmethod
        def again(cls, tmp_path_factory) -> tuple[Path, dict]:
            """The reference run once more, on identical inputs."""
            out = tmp_path_factory.mktemp(f"conformance-{method}") / "again"
            return out, run(out, pipeline())

        def test_is_registered_with_valid_options(self):
            found = spec()
            assert found.name == method
            assert found.kind in ("train", "posthoc")
            assert found.description, f"mitigation {method!r} has no description (shown by `spur list`)"
            unknown = set(declared()) - set(REQUIRED_SPLITS)
            assert not unknown, f"{method!r} declares attribute labels on unknown splits {sorted(unknown)}"

        def test_trains_and_reports_finite_metrics(self, reference):
            out, summary = reference
            stage = summary["stages"][-1]
            assert stage["method"] == method and stage["kind"] == spec().kind
            assert list(stage["metrics"]) == ["train", "val", "test"], "train is evaluated first, then val and test"
            for split, metrics in stage["metrics"].items():
                for key in ("avg_acc", "worst_class_acc", "worst_group_acc"):
                    assert 0.0 <= metrics[key] <= 1.0, f"{split} {key} = {metrics[key]}"
                for where, value in _numbers(metrics, split):
                    assert math.isfinite(value), f"{method!r}: {where} is {value}"
            result = RunDir(out).stage_result(f"{len(summary['stages']) - 1}-{method}")
            for entry in result["history"]:
                if entry["train_loss"] is not None:
                    assert math.isfinite(entry["train_loss"]), f"{method!r}: train loss {entry['train_loss']} at epoch {entry['epoch']}"
            # a fine-tuning stage's history starts with the model it received, as epoch 0
            expected = list(range(0 if spec().fine_tunes else 1, train_settings["epochs"] + 1))
            assert [h["epoch"] for h in result["history"]] == (expected if spec().kind == "train" else [0])

        def test_is_deterministic(self, reference, again):
            check_deterministic(reference, again)

        def test_reads_attribute_labels_only_where_declared(self, reference, again, tmp_path):
            needs = declared()
            hidden = [s for s in REQUIRED_SPLITS if s not in needs]
            if not hidden:
                pytest.skip(f"{method!r} declares attribute labels on every split")
            check_deterministic(reference, again)
            out, summary = reference
            blind = run(tmp_path / "blind", pipeline(attributes=list(needs)))
            differ = _same_weights(_weights(out), _weights(tmp_path / "blind"))
            assert not differ, (
                f"{method!r} declares attribute labels only on {list(needs) or 'no split'}, but its "
                f"weights change when {hidden} carry none: it reads them ({differ[:3]})"
            )
            for split in ("train", "val", "test"):
                for key in ("avg_acc", "worst_class_acc"):
                    assert blind["metrics"][split][key] == summary["metrics"][split][key]

        def test_is_refused_without_the_attribute_labels_it_declares(self, tmp_path):
            needs = declared()
            if not needs:
                pytest.skip(f"{method!r} declares no attribute labels")
            for split in needs:
                others = [s for s in REQUIRED_SPLITS if s != split]
                with pytest.raises(RunError, match=rf"needs attribute labels on '{split}'"):
                    run(tmp_path / f"without-{split}", pipeline(attributes=others))
                assert not (tmp_path / f"without-{split}").exists(), "refused only after writing"

        def test_resumes_to_the_uninterrupted_result(self, reference, again, tmp_path):
            check_deterministic(reference, again)
            out, summary = reference
            plugins, stopper = manager(), _StopInStage(len(stages()) - 1)
            plugins.register(stopper, "stop")
            with pytest.raises(KeyboardInterrupt):
                run(tmp_path / "cut", pipeline(), plugins)
            plugins.unregister(stopper)
            assert not (tmp_path / "cut" / "summary.json").exists()
            resumed = run(tmp_path / "cut", pipeline(), plugins, resume=True)
            assert resumed == summary, f"{method!r}: the resumed run's summary differs from the uninterrupted one"
            differ = _same_weights(_weights(out), _weights(tmp_path / "cut"))
            assert not differ, f"{method!r}: resumed weights differ from the uninterrupted run's: {differ[:3]}"

        def test_composes_with_a_following_last_layer_stage(self, reference, tmp_path):
            out, _ = reference
            summary = run(tmp_path / "composed", pipeline(extra_stages=[{"method": "tiny-refit"}]))
            kept = _weights(tmp_path / "composed")
            index = len(stages()) - 1
            mine, refit = kept[f"{index}-{method}"], kept[f"{index + 1}-tiny-refit"]
            assert _same_weights({"m": mine}, {"m": _weights(out)[f"{index}-{method}"]}) == []
            embed = [k for k in mine if not k.startswith("head.")]
            assert embed and all(torch.equal(mine[k], refit[k]) for k in embed), "the last-layer stage changed the features"
            assert not torch.equal(mine["head.weight"], refit["head.weight"]), "the last-layer stage kept the old head"
            for where, value in _numbers(summary["metrics"]):
                assert math.isfinite(value), where

    MitigationConformance.__doc__ = f"The mitigation contract, checked for {method!r}."
    MitigationConformance.__name__ = MitigationConformance.__qualname__ = f"TestConformance_{method}"
    return MitigationConformance
