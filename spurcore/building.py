"""What a run is built from: its data, the model it starts from, each stage's context, and
any stage's model at any epoch rebuilt from the run folder.

A stage's model is the model the run started from, changed by each stage's
`spurcore_prepare_model` in turn (FairDropout inserts its layers), with the stage's checkpoint
loaded into it. Rebuilding replays those hooks of the stage objects alone (never an observer's,
nor a running stage's) on a fresh model, so a finished run's models come back without the
machinery that trained them.
"""

from __future__ import annotations

import copy

import inspect
from typing import TYPE_CHECKING, Any

from spurcore.context import RunContext, StageContext
from spurcore.data import SpuriousData, hold_out, keep_train_subset
from spurcore.model import SpurModel, build_model
from spurcore.planning import Plan, PlannedStage, RunError
from spurcore.rng import kept_rng_state, seed_everything

if TYPE_CHECKING:  # pragma: no cover
    from spurcore.plugins import Registry


def build_data(plan: Plan, plugins: Registry) -> SpuriousData:
    """The dataset, its training split cut to `[dataset] train_subset`, then `holdout` of what
    is left moved to a split of its own."""
    spec = plugins.get("datasets", plan.config.dataset.name)
    data = spec.build(plan.dataset_options)
    if not isinstance(data, SpuriousData):
        raise RunError(f"dataset {spec.name!r} built {type(data).__name__}, not spurcore.data.SpuriousData")
    kept = keep_train_subset(data, plan.config.dataset.train_subset, plan.config.seed)
    return hold_out(kept, plan.config.dataset.holdout, plan.config.seed)


def build_base_model(plan: Plan, data: SpuriousData, plugins: Registry) -> SpurModel:
    """A fresh backbone and head, or the model `[init]` names, seeded by the pipeline's seed."""
    init = plan.config.init
    if init is None:
        seed_everything(plan.config.seed)
        spec = plugins.get("backbones", plan.config.backbone.name)
        return build_model(spec.build(plan.backbone_options, data), data.n_classes)
    from spurcore.finished import open_run  # a run read back builds its models here too

    model = open_run(init.run, plugins).load_model(init.stage, "selected" if init.epoch < 0 else init.epoch)
    if model.head.out_features != data.n_classes:
        raise RunError(f"init.run: {init.run} predicts {model.head.out_features} classes; "
                       f"dataset {data.name!r} has {data.n_classes}")
    seed_everything(plan.config.seed)
    return model.cpu()


def stage_context(planned: PlannedStage, model: SpurModel) -> StageContext:
    """A stage about to run on `model`, with a new object of its method."""
    return StageContext(index=planned.index, config=planned.config, spec=planned.spec, options=planned.options,
                        train=planned.train, method=planned.spec.factory(planned.options), model=model)


def call_implementation(plugin: object, hook_name: str, **kwargs: Any) -> Any:
    """Call one plugin's implementation of a hook directly, with the arguments it takes (as
    pluggy does: an implementation may take fewer than its hook's); None if it has none."""
    function = getattr(plugin, hook_name, None)
    if function is None:
        return None
    taken = inspect.signature(function).parameters
    return function(**{k: v for k, v in kwargs.items() if k in taken})


def replay_prepare(run: RunContext, stage: StageContext) -> None:
    """`spurcore_prepare_model` of this stage's object alone, on a model being rebuilt or checked,
    and its inference variants (`stage.variants`)."""
    if stage.spec.kind == "train":
        call_implementation(stage.method, "spurcore_prepare_model", run=run, stage=stage, model=stage.model)
        stage.model.to(run.device.device)
        stage.variants = call_implementation(stage.method, "spurcore_inference_variants", run=run, stage=stage,
                                             model=stage.model)


class ModelBuilder:
    """The models of one run: the one it starts from, and any stage's at any epoch, rebuilt
    from the plan and the checkpoints in the run folder."""

    def __init__(self, plan: Plan, plugins: Registry) -> None:
        self.plan, self.plugins = plan, plugins

    def initial_model(self, run: RunContext) -> SpurModel:
        """The model the run starts from, on its device, leaving every random state as it was."""
        with kept_rng_state():  # building seeds every RNG; the run's own streams go on untouched
            return build_base_model(self.plan, run.data, self.plugins).to(run.device.device)

    def stage_models(self, run: RunContext, model: SpurModel) -> dict[str, SpurModel]:
        """Each stage's model as it starts, by stage key, from copies of `model` (which stays
        untouched): a layer that cannot be inserted, or a module name that will not exist, is
        found before the run writes anything."""
        models = {}
        for planned in self.plan.stages:
            ctx = stage_context(planned, copy.deepcopy(model))
            replay_prepare(run, ctx)
            models[planned.key] = model = ctx.model
        return models

    def load_model(self, run: RunContext, stage_index: int = -1, epoch: int | None = None,
                   variant: str | None = None) -> SpurModel:
        """The model of one stage (default: the last) at one epoch (default: the one its selector
        chose), on the run's device, in eval mode; in inference variant `variant`, or, at the
        selected epoch, in the variant selected with it (each earlier stage in its selected one)."""
        planned_stages = self.plan.stages[: stage_index % len(self.plan.stages) + 1]
        target = planned_stages[-1]
        result = run.out.stage_result(target.key)
        if epoch is None:
            if result is None:
                raise RunError(f"{run.out.path}: stage {target.key!r} has not finished; name an epoch")
            epoch = result["selected"]["epoch"]
        if variant is None and result is not None and result["selected"]["epoch"] == epoch:
            variant = result["selected"].get("variant")
        model = self.initial_model(run)
        contexts = []
        for planned in planned_stages:
            contexts.append(stage_context(planned, model))
            replay_prepare(run, contexts[-1])
        model.load_state_dict(run.out.load_checkpoint(target.key, epoch)["model"])
        for ctx in contexts[:-1]:
            earlier = run.out.stage_result(ctx.key)
            ctx.use_variant(None if earlier is None else earlier["selected"].get("variant"))
        contexts[-1].use_variant(variant)
        return model.to(run.device.device).eval()
