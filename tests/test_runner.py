"""The runner on the tiny dataset: determinism, resume, events, the stage contract."""

from __future__ import annotations

import json

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spurcore import hookimpl
from spurcore.rundir import RunDir
from spurcore.planning import RunError
from spurcore.runner import run_pipeline
from spurcore.specs import MitigationSpec


def _weights(run_dir, stage="0-erm"):
    out = RunDir(run_dir)
    return out.load_checkpoint(stage, out.epochs(stage)[-1])["model"]


def test_same_seed_gives_identical_metrics_and_weights(tmp_path, spur_plugins, spur_tiny_config):
    a = run_pipeline(spur_tiny_config(), tmp_path / "a", spur_plugins)
    b = run_pipeline(spur_tiny_config(), tmp_path / "b", spur_plugins)
    assert a == b
    for key, value in _weights(tmp_path / "a").items():
        assert torch.equal(value, _weights(tmp_path / "b")[key]), key
    c = run_pipeline(spur_tiny_config(seed=1), tmp_path / "c", spur_plugins)
    assert c["stages"][0]["metrics"] != a["stages"][0]["metrics"] or any(
        not torch.equal(v, _weights(tmp_path / "c")[k]) for k, v in _weights(tmp_path / "a").items()
    )


class Interrupt:
    """Stops the run at the start of one epoch, as a Ctrl-C would."""

    def __init__(self, at_epoch):
        self.at_epoch = at_epoch
        self.errors = []

    @hookimpl
    def spurcore_epoch_start(self, epoch):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt

    @hookimpl
    def spurcore_run_error(self, stage, error):
        self.errors.append((stage.key if stage else None, type(error).__name__))


def test_resume_reaches_the_uninterrupted_result(tmp_path, spur_plugins, spur_tiny_config):
    config = spur_tiny_config(train={"epochs": 4, "batch_size": 32, "lr": 0.01})
    whole = run_pipeline(config, tmp_path / "whole", spur_plugins)

    stopper = Interrupt(at_epoch=3)
    spur_plugins.register(stopper, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, tmp_path / "cut", spur_plugins)
    spur_plugins.unregister(stopper)
    assert stopper.errors == [("0-erm", "KeyboardInterrupt")]
    assert RunDir(tmp_path / "cut").epochs("0-erm") == [1, 2]
    assert not (tmp_path / "cut" / "summary.json").exists()

    with pytest.raises(RunError, match="--resume"):
        run_pipeline(config, tmp_path / "cut", spur_plugins)
    resumed = run_pipeline(config, tmp_path / "cut", spur_plugins, resume=True)
    assert resumed == whole
    for key, value in _weights(tmp_path / "whole").items():
        assert torch.equal(value, _weights(tmp_path / "cut")[key]), key
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [(json.loads(l)["epoch"], json.loads(l)["split"]) for l in lines] == [
        (e, s) for e in range(1, 5) for s in ("train", "val", "test")
    ]


def test_resume_refuses_a_different_pipeline(tmp_path, spur_plugins, spur_tiny_config):
    run_pipeline(spur_tiny_config(), tmp_path / "r", spur_plugins)
    with pytest.raises(RunError, match=r"differs from this one at train\.epochs \(saved 3, now 5\)"):
        run_pipeline(spur_tiny_config(train={"epochs": 5, "batch_size": 32, "lr": 0.01}), tmp_path / "r", spur_plugins,
                     resume=True)


class Recorder:
    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        raise AttributeError(name)

    @hookimpl
    def spurcore_run_start(self):
        self.events.append("run_start")

    @hookimpl
    def spurcore_stage_start(self, stage):
        self.events.append(f"stage_start:{stage.key}")

    @hookimpl
    def spurcore_epoch_start(self, epoch):
        self.events.append(f"epoch_start:{epoch}")

    @hookimpl
    def spurcore_evaluation_end(self, epoch, split):
        self.events.append(f"eval:{epoch}:{split}")

    @hookimpl
    def spurcore_epoch_end(self, epoch):
        self.events.append(f"epoch_end:{epoch}")

    @hookimpl
    def spurcore_stage_end(self, stage):
        self.events.append(f"stage_end:{stage.key}")

    @hookimpl
    def spurcore_run_end(self):
        self.events.append("run_end")


def test_events_arrive_in_the_documented_order(tmp_path, spur_plugins, spur_tiny_config):
    recorder = Recorder()
    spur_plugins.register(recorder, "recorder")
    run_pipeline(spur_tiny_config(train={"epochs": 2}), tmp_path / "r", spur_plugins)
    per_epoch = lambda e: [f"epoch_start:{e}", f"eval:{e}:train", f"eval:{e}:val", f"eval:{e}:test", f"epoch_end:{e}"]
    assert recorder.events == ["run_start", "stage_start:0-erm", *per_epoch(1), *per_epoch(2),
                               "stage_end:0-erm", "run_end"]


class IndexedScale(nn.Module):
    """An inserted layer that reads the batch's example indices from the model's context."""

    def __init__(self, context, seen):
        super().__init__()
        self.context = context
        self.seen = seen

    def forward(self, x):
        if self.training:
            assert self.context.index is not None and len(self.context.index) == len(x)
            self.seen.update(self.context.index.tolist())
        return x


class Shaping:
    """A stage method using every train-stage hook: it changes the model, the order and the loss."""

    def __init__(self, options):
        self.seen: set[int] = set()
        self.losses = 0

    @hookimpl
    def spurcore_prepare_model(self, model):
        model.embed = nn.Sequential(model.embed, IndexedScale(model.context, self.seen))

    @hookimpl
    def spurcore_train_sampler(self, run, generator):
        n = len(run.data.splits["train"])
        return torch.arange(n // 2)  # only the first half, in order

    @hookimpl
    def spurcore_stage_end(self):
        self.seen_in_stage = set(self.seen)

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        self.losses += 1
        return F.cross_entropy(model(batch.x, index=batch.index), batch.y)


def test_stage_hooks_shape_model_order_and_loss_only_in_their_stage(tmp_path, spur_plugins, spur_tiny_config):
    made = []

    class Plugin:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="shaping", factory=lambda o: made.append(Shaping(o)) or made[-1])]

    spur_plugins.register(Plugin(), "shaping-plugin")
    config = spur_tiny_config(train={"epochs": 2, "batch_size": 25},
                         stages=[{"method": "shaping"}, {"method": "erm", "name": "after"}])
    summary = run_pipeline(config, tmp_path / "r", spur_plugins)
    method = next(m for m in made if m.losses)  # the run's object (the pre-run check builds one too)
    assert method.seen_in_stage == set(range(100))  # n_train 200, first half only
    assert method.losses == 2 * 4  # 2 epochs x 100 examples / 25, none in the second stage
    assert method.seen == set(range(200))  # the inserted layer stays in the model afterwards
    assert [s["name"] for s in summary["stages"]] == ["shaping", "after"]
    assert spur_plugins.pm.get_plugin("stage:0-shaping") is None  # unregistered after its stage


class HeadFitter:
    """A post-hoc method: least-squares head on the validation embeddings."""

    def __init__(self, options):
        pass

    @hookimpl
    def spurcore_posthoc_head(self, model, embeddings):
        val = embeddings["val"]
        feats = torch.from_numpy(val.features)
        assert feats.shape == (120, model.feature_dim)
        target = F.one_hot(torch.tensor(val.y), 2).float()
        design = torch.cat([feats, torch.ones(len(feats), 1)], 1)
        solution = torch.linalg.lstsq(design, target).solution
        head = nn.Linear(model.feature_dim, 2)
        with torch.no_grad():
            head.weight.copy_(solution[:-1].T)
            head.bias.copy_(solution[-1])
        return head


def test_posthoc_stage_replaces_the_head_and_is_reported(tmp_path, spur_plugins, spur_tiny_config):
    class Plugin:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="lstsq", kind="posthoc", factory=HeadFitter)]

    spur_plugins.register(Plugin(), "lstsq-plugin")
    config = spur_tiny_config(stages=[{"method": "erm"}, {"method": "lstsq"}])
    summary = run_pipeline(config, tmp_path / "r", spur_plugins)
    erm, post = summary["stages"]
    assert post["selected"] == {"selector": None, "epoch": 0}
    assert summary["metrics"] == post["metrics"]
    assert summary["selected"]["stage"] == "erm"
    assert post["metrics"]["test"] != erm["metrics"]["test"]
    assert RunDir(tmp_path / "r").epochs("1-lstsq") == [0]


def test_posthoc_stage_must_return_a_linear_head(tmp_path, spur_plugins, spur_tiny_config):
    class Bad:
        def __init__(self, options):
            pass

        @hookimpl
        def spurcore_posthoc_head(self):
            return nn.Identity()

    class Plugin:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="bad", kind="posthoc", factory=Bad)]

    spur_plugins.register(Plugin(), "bad-plugin")
    with pytest.raises(RunError, match="must return nn.Linear"):
        run_pipeline(spur_tiny_config(stages=[{"method": "erm"}, {"method": "bad"}]), tmp_path / "r", spur_plugins)


def test_attribute_labels_are_required_where_declared(tmp_path, spur_plugins, spur_tiny_config):
    no_attrs = {"name": "tiny", "options": {"attributes": False}}
    with pytest.raises(RunError, match="val-wga.*needs attribute labels"):
        run_pipeline(spur_tiny_config(dataset=no_attrs), tmp_path / "a", spur_plugins)
    assert not (tmp_path / "a").exists()  # refused before writing anything

    summary = run_pipeline(spur_tiny_config(dataset=no_attrs, selector="val-worst-class"), tmp_path / "b", spur_plugins)
    assert set(summary["metrics"]["test"]) == {"avg_acc", "worst_class_acc"}

    class Plugin:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="needs-val", factory=lambda o: object(), needs_attributes=["val"])]

    spur_plugins.register(Plugin(), "needs")
    with pytest.raises(RunError, match="'needs-val' needs attribute labels on 'val'"):
        run_pipeline(spur_tiny_config(dataset=no_attrs, selector="val-worst-class",
                                 stages=[{"method": "needs-val"}]), tmp_path / "c", spur_plugins)


def test_selected_epoch_is_the_selectors_best_and_its_weights_are_kept(tmp_path, spur_plugins, spur_tiny_config):
    summary = run_pipeline(spur_tiny_config(train={"epochs": 4, "lr": 0.05}), tmp_path / "r", spur_plugins)
    history = RunDir(tmp_path / "r").stage_result("0-erm")["history"]
    scores = [h["metrics"]["val"]["worst_group_acc"] for h in history]
    best = scores.index(max(scores)) + 1
    assert summary["selected"] == {"selector": "val-wga", "stage": "erm", "epoch": best}
    assert summary["metrics"]["test"] == history[best - 1]["metrics"]["test"]


def test_a_finished_run_can_be_reopened_and_its_models_rebuilt(tmp_path, spur_plugins, spur_tiny_config):
    from spurcore.evaluation import Predictions, compute_metrics
    from spurcore.finished import open_run

    spur_plugins.register(_ShapingPlugin(), "shaping-plugin")
    config = spur_tiny_config(train={"epochs": 3}, stages=[{"method": "shaping"}, {"method": "erm", "name": "after"}])
    summary = run_pipeline(config, tmp_path / "r", spur_plugins)
    reopened = open_run(tmp_path / "r", spur_plugins)
    model = reopened.load_model()  # the last stage at its selected epoch, layers re-inserted
    assert isinstance(model.embed[1], IndexedScale)
    test = reopened.data.splits["test"]
    with torch.no_grad():
        pred = model(test.inputs).argmax(1).numpy()
    metrics = compute_metrics(Predictions(y=test.y, pred=pred, a=test.a, class_names=("neg", "pos"),
                                          attr_names=("off", "on")),
                              [spur_plugins.get("metrics", m) for m in reopened.config.metrics])
    assert metrics == summary["metrics"]["test"]
    first = reopened.load_model(0, epoch=1)
    assert not torch.equal(first.head.weight, model.head.weight)
    with pytest.raises(RunError, match="not a run directory"):
        open_run(tmp_path, spur_plugins)


class _ShapingPlugin:
    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="shaping", factory=Shaping)]


def test_runs_saved_before_a_key_existed_still_resume(tmp_path, spur_plugins, spur_tiny_config):
    first = run_pipeline(spur_tiny_config(), tmp_path / "r", spur_plugins)
    config = tmp_path / "r" / "config.toml"
    text = config.read_text()
    assert "seed = 0" in text
    config.write_text("\n".join(line for line in text.splitlines() if line != "seed = 0") + "\n")  # a default
    assert run_pipeline(spur_tiny_config(), tmp_path / "r", spur_plugins, resume=True) == first


class Restart:
    """A train stage that swaps in the pipeline's initial model and records what it saw."""

    def __init__(self, options):
        self.seen = {}

    @hookimpl
    def spurcore_stage_start(self, run, stage):
        self.seen["before"] = {k: v.clone() for k, v in stage.model.state_dict().items()}
        self.seen["rng"] = torch.get_rng_state().clone()
        stage.model = run.initial_model()
        self.seen["rng_after"] = torch.get_rng_state().clone()
        self.seen["initial"] = {k: v.clone() for k, v in stage.model.state_dict().items()}

    @hookimpl
    def spurcore_epoch_start(self, stage, epoch):
        if epoch == 1:
            self.seen["first"] = {k: v.clone() for k, v in stage.model.state_dict().items()}


def test_a_stage_may_replace_its_model_with_the_initial_one(tmp_path, spur_plugins, spur_tiny_config):
    restart = Restart(None)

    class Registers:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="restart", factory=lambda o: restart)]

    spur_plugins.register(Registers(), "restart")
    summary = run_pipeline(spur_tiny_config(stages=[{"method": "erm"}, {"method": "restart"}]), tmp_path / "r", spur_plugins)
    seen = restart.seen
    assert torch.equal(seen["rng"], seen["rng_after"]), "initial_model() disturbed the run's random state"
    # the stage trained the fresh model (the seeded initial weights), not the ERM model it was handed
    assert all(torch.equal(seen["first"][k], seen["initial"][k]) for k in seen["first"])
    assert not torch.equal(seen["before"]["head.weight"], seen["initial"]["head.weight"])
    assert summary["stages"][1]["selected"]["epoch"] in (1, 2, 3)
    kept = RunDir(tmp_path / "r").load_checkpoint("1-restart", summary["stages"][1]["selected"]["epoch"])["model"]
    assert not torch.equal(kept["head.weight"], seen["initial"]["head.weight"])


def test_predict_returns_logits_in_index_order_and_restores_the_mode(spur_tiny_data, spur_tiny_backbone):
    from spurcore.device import Device
    from spurcore.evaluation import predict
    from spurcore.model import build_model

    model = build_model(spur_tiny_backbone, spur_tiny_data.n_classes).train()
    split = spur_tiny_data.splits["val"]
    logits = predict(model, split, Device.from_config("cpu", False), batch_size=7)
    assert logits.shape == (120, 2) and logits.dtype == np.float32
    with torch.no_grad():
        assert np.allclose(logits, model.eval()(split.inputs).numpy(), atol=1e-6)
    model.train()
    predict(model, split, Device.from_config("cpu", False))
    assert model.training


class Widen:
    """Inserts a layer in prepare_model: replaying it twice would change the state dict's keys."""

    def __init__(self, options):
        pass

    @hookimpl
    def spurcore_prepare_model(self, model):
        model.embed = nn.Sequential(model.embed, nn.Identity())


def test_a_selector_can_rebuild_candidates_of_a_stage_that_changes_the_model(tmp_path, spur_plugins, spur_tiny_config):
    rebuilt = []

    def score(candidate):
        model = candidate.load_model()
        rebuilt.append(sorted(model.state_dict()))
        return -candidate.epoch

    class Registers:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="widen", factory=Widen)]

        @hookimpl
        def spurcore_register_selectors(self):
            from spurcore.specs import SelectorSpec

            return [SelectorSpec(name="rebuilds", score=score)]

    spur_plugins.register(Registers(), "widen")
    summary = run_pipeline(spur_tiny_config(selector="rebuilds", stages=[{"method": "widen"}]), tmp_path / "r", spur_plugins)
    assert summary["selected"]["epoch"] == 1 and len(rebuilt) == 3
    assert rebuilt[0] == sorted(["embed.0.0.weight", "embed.0.0.bias", "head.weight", "head.bias"])
    assert spur_plugins.pm.get_plugin("stage:0-widen") is None  # the running stage's object left with its stage
