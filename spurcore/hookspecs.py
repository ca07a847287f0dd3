"""The contract between spurcore and its plugins: every hook, when it is called, and why.

Three kinds of hook, each with one calling style:

* **Registration hooks** (`spurcore_register_*`) return a list of frozen specs from
  `spurcore.specs`. They are called once, when the plugin manager gathers the registry.
  A name registered by two plugins is an error naming both, when a pipeline asks for it; a
  plugin whose registration hook raises is skipped and listed with the plugins that failed.
* **Lifecycle hooks** are notifications in check / start / end / error form. Every loaded
  plugin receives them; their return values are ignored. Observers (`ObserverSpec`: progress,
  activation logging, experiment tracking) are objects built for one run from its
  `[settings.<name>]` table and registered for that run only; they use these hooks and never
  change what the run computes. `spurcore_run_check` may refuse a run before it writes anything.
* **Stage hooks** (`STAGE_HOOKS`: prepare_model, train_sampler, train_loss, posthoc_head,
  inference_variants)
  shape a stage, and only a stage's method object implements them: the runner registers the
  object (built by its `MitigationSpec.factory`) as a plugin when the stage starts and
  unregisters it when the stage ends, so a method acts only in its own stage. A module-level
  plugin or an observer that implements one is refused at registration, naming the plugin and
  the hook: what a run computes comes from its stages alone. Where no stage hook answers, the
  kernel's default applies (a plain shuffle; the mean cross-entropy of the batch). A method
  object that keeps training state across batches (Group DRO's group weights) defines
  `state_dict()` (tensors and plain data) and `load_state_dict(state)`: the state goes into
  every epoch's checkpoint and comes back on `--resume`, where a stage that continues from a
  checkpoint sees `spurcore_stage_start`, then `spurcore_prepare_model`, then
  `load_state_dict(state)` (and its auxiliary networks' weights put back), then the hooks of
  its first epoch not yet trained (`stage.first_epoch`). A method that trains a network of its
  own beside the model (LfF's biased network) hands it to `stage.add_auxiliary(name, module)`
  in `spurcore_prepare_model`: optimized, checkpointed and resumed with the stage, and never
  part of the model later stages, `[init]` runs and tracers see. A method object may implement
  lifecycle hooks too (pruned-twin draws its mask in `spurcore_epoch_start`); like its stage
  hooks, they reach it only while its stage runs.

Observers (`ObserverSpec`) are registered for a run before its first hook and unregistered
after its last. The calling sequence of `spur run`::

    for each train stage: spurcore_prepare_model(run, stage, model)   # on a copy: fails before anything is written
    spurcore_run_check(run, models)                # data and models built and tried, nothing written
    (the run directory is locked and config.toml written)
    spurcore_run_start(run)
    for each stage:
        spurcore_stage_start(run, stage)           # stage.model is the previous stage's choice
        spurcore_prepare_model(run, stage, model)  # train stages: insert layers, wrap modules
        spurcore_inference_variants(run, stage, model)  # train stages, firstresult: ways to evaluate
        fine-tuning stage (`fine_tunes`): the model it starts from is evaluated as epoch 0
        train stage, for each epoch:
            spurcore_epoch_start(run, stage, epoch)
            spurcore_train_sampler(run, stage, epoch, generator)   # firstresult: example order
            for each batch:
                spurcore_train_loss(run, stage, model, batch)      # firstresult: the loss
                spurcore_batch_end(run, stage, epoch, step, batch, loss)
            for each inference variant (once when the stage has none; `stage.variant` names it):
              for each evaluation split (train per `train_eval`, then val, test, ...):
                spurcore_evaluation_start(run, stage, epoch, split)
                spurcore_evaluation_batch(run, stage, epoch, split, batch, logits)  # per batch
                spurcore_evaluation_end(run, stage, epoch, split, metrics)
            spurcore_epoch_end(run, stage, epoch, metrics)
        posthoc stage:
            spurcore_posthoc_head(run, stage, model, embeddings)   # firstresult: a new head
            evaluation hooks as above, with epoch = 0
        spurcore_stage_end(run, stage, result)
    spurcore_run_end(run, summary)
    on an exception after spurcore_run_start: spurcore_run_error(run, stage, error), then it
    propagates.

`run` is a `spurcore.context.RunContext` (its plan and config, data, device, run directory,
the registry as `run.plugins`, read only: `get(kind, name)`, `names(kind)`, `specs(kind)`, and
`initial_model()`, a fresh copy of the model the pipeline started from);
`stage` is a `spurcore.context.StageContext` (its index, name, method spec and options, the
effective training settings, the model, optimizer and scheduler). An implementation may take
fewer arguments than its spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click
    import torch

    from spurcore.context import RunContext, StageContext
    from spurcore.data import Batch
    from spurcore.embeddings import Embeddings
    from spurcore.model import SpurModel
    from spurcore.specs import (BackboneSpec, DatasetSpec, KindSpec, MetricSpec, MitigationSpec, ObserverSpec,
                                SelectorSpec)

PROJECT = "spurcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration ---------------------------------------------------------------------------


@hookspec
def spurcore_register_datasets() -> list[DatasetSpec]:
    """Return the datasets this plugin provides.

    Called once when the registry is gathered. Each `DatasetSpec.build(options)` returns a
    `spurcore.data.SpuriousData` with train, val and test splits. `build` runs before a run
    writes anything, so it is where a dataset checks its files and raises `DataError` naming
    the file and row; splits may hold tensors or lazily read `Dataset`s (see `SplitData`).

    Example::

        @hookimpl
        def spurcore_register_datasets():
            return [DatasetSpec(name="my-data", build=load_my_data, options=MyOptions)]
    """


@hookspec
def spurcore_register_backbones() -> list[BackboneSpec]:
    """Return the backbones this plugin provides.

    Called once when the registry is gathered. `BackboneSpec.build(options, data)` returns a
    `spurcore.model.Backbone` (a module mapping inputs to `feature_dim` features); the kernel
    adds the linear head.

    Example::

        @hookimpl
        def spurcore_register_backbones():
            return [BackboneSpec(name="mlp", build=lambda opts, data: Backbone(make_mlp(), 64))]
    """


@hookspec
def spurcore_register_mitigations() -> list[MitigationSpec]:
    """Return the mitigations (stage methods) this plugin provides.

    Called once when the registry is gathered. A pipeline stage names one by `method`; its
    `factory(options)` builds the stage object, which implements any of the stage hooks
    below and is registered only while its stage runs.

    Example::

        class UpWeight:
            def __init__(self, options): self.options = options
            @hookimpl
            def spurcore_train_loss(self, model, batch):
                ...

        @hookimpl
        def spurcore_register_mitigations():
            return [MitigationSpec(name="upweight", factory=UpWeight, options=UpWeightOptions)]
    """


@hookspec
def spurcore_register_selectors() -> list[SelectorSpec]:
    """Return the model selectors this plugin provides.

    Called once when the registry is gathered. A selector scores each candidate
    (`spurcore.context.Candidate`: an epoch of a stage with its metrics per split) and the
    highest score wins. It declares whether it reads attribute labels, and the splits whose
    metrics it reads (`splits`, default ("val",)): a candidate carries only those, so a
    selector reads training metrics only if it declares "train".

    Example::

        @hookimpl
        def spurcore_register_selectors():
            return [SelectorSpec(name="val-loss", score=lambda c: -c.metrics["val"]["loss"])]
    """


@hookspec
def spurcore_register_metrics() -> list[MetricSpec]:
    """Return the metrics this plugin provides.

    Called once when the registry is gathered. `MetricSpec.compute(predictions)` returns a
    mapping merged into the split's metrics; `predictions` holds `y`, `pred`, `a`, groups
    and names (`spurcore.evaluation.Predictions`).

    Example::

        @hookimpl
        def spurcore_register_metrics():
            return [MetricSpec(name="error", compute=lambda p: {"error": float((p.pred != p.y).mean())})]
    """


@hookspec
def spurcore_register_observers() -> list[ObserverSpec]:
    """Return the observers this plugin provides.

    Called once when the registry is gathered. An observer is configured by the pipeline's
    `[settings.<name>]` table, validated against `ObserverSpec.settings` when the pipeline is
    planned; `factory(settings)` builds one object per run (None: nothing to do in this run),
    which is registered for that run and unregistered after it, and receives its lifecycle hooks.

    Example::

        @attrs.frozen
        class CSVSettings:
            path: str = "epochs.csv"

        class CSVLog:
            def __init__(self, settings): self.settings = settings
            @hookimpl
            def spurcore_epoch_end(self, run, epoch, metrics):
                with open(run.out.path / self.settings.path, "a") as f:
                    print(epoch, metrics["val"]["avg_acc"], sep=",", file=f)

        @hookimpl
        def spurcore_register_observers():
            return [ObserverSpec(name="csv", settings=CSVSettings,
                                 factory=lambda s: CSVLog(s) if s is not None else None)]
    """


@hookspec
def spurcore_register_kinds() -> list[KindSpec]:
    """Return the kinds of registration this plugin owns, with their hook specifications.

    Called when the plugin is registered, before any registry is gathered (as pytest's
    `pytest_addhooks`): each `KindSpec(name, record, hookspecs)` adds the hook
    `spurcore_register_<name>`, returning a list of `record`s, which other plugins then
    implement. A kind belongs to the plugin that uses it: `spurcore-tracer` owns "tracers"
    (`spurcore_tracer.TracerSpec`, read by `spur trace`), `spurcore-sweep` owns "launchers"
    (`spurcore_sweep.LauncherSpec`, read by `spur sweep`). A plugin implementing a hook that no
    loaded plugin declares is listed among the plugins that failed, once every plugin has loaded.

    Example::

        class ReporterHooks:
            @hookspec
            def spurcore_register_reporters() -> list[ReporterSpec]:
                ...  # its docstring says when it is called and what the records mean

        @hookimpl
        def spurcore_register_kinds():
            return [KindSpec(name="reporters", record=ReporterSpec, hookspecs=ReporterHooks)]
    """


@hookspec
def spurcore_register_commands(cli: click.Group) -> None:
    """Add subcommands to the `spur` command line.

    Called once when `spur` starts, after the registry is gathered, with the root click
    group, new for every `spur` invocation (a blocked plugin's commands never show). Tracers
    and dataset plugins use it for `spur trace`, `spur data`, ... One form: the command is a
    module-level click command, and the hook adds it (importing its module here keeps
    `spur --help` from importing what the command needs).

    Example::

        @click.command("hello")
        def hello_cmd():
            click.echo("hello")

        @hookimpl
        def spurcore_register_commands(cli):
            cli.add_command(hello_cmd)
    """


# --- lifecycle notifications ------------------------------------------------------------------


@hookspec
def spurcore_run_check(run: RunContext, models: dict[str, SpurModel]) -> None:
    """The last chance to refuse a run before it writes anything.

    Called once per run (also on `--resume`), after the pipeline is planned, the data built,
    the model the pipeline starts from built and run on one batch, and each train stage's
    `spurcore_prepare_model` replayed on a copy of it; before the run directory is locked or
    written. `models` maps each stage's key to the model as that stage starts training it
    (inserted layers included). Raise a `spurcore.errors.SpurcoreError` whose message names the
    key to stop the run cleanly: checks that need the data or the model (a split or a module
    name in an observer's settings) belong here.

    Example::

        @hookimpl
        def spurcore_run_check(self, run, models):
            if self.settings.split not in run.data.splits:
                raise ConfigError(f"settings.mine.split: no split {self.settings.split!r}")
    """


@hookspec
def spurcore_run_start(run: RunContext) -> None:
    """A run begins: the configuration is validated, data and device are ready.

    Called once, before the first stage (also on `--resume`). `run.resumed` tells which.
    Observer plugins read and validate their `[settings.<name>]` table from
    `run.config.settings` here, so a bad setting stops the run before any training.

    Example::

        @hookimpl
        def spurcore_run_start(run):
            print("writing to", run.out.path)
    """


@hookspec
def spurcore_run_end(run: RunContext, summary: dict[str, Any]) -> None:
    """A run finished; `summary` is what was written to `summary.json`.

    Called once, after the last stage and after every file of the run is written.

    Example::

        @hookimpl
        def spurcore_run_end(run, summary):
            print(summary["metrics"]["test"]["worst_group_acc"])
    """


@hookspec
def spurcore_run_error(run: RunContext, stage: StageContext | None, error: BaseException) -> None:
    """A run failed (including KeyboardInterrupt). `stage` is None outside any stage.

    Called once, before the exception propagates; checkpoints of finished epochs are kept,
    so `spur run --resume` continues from the last one.

    Example::

        @hookimpl
        def spurcore_run_error(run, stage, error):
            close_my_files()
    """


@hookspec
def spurcore_stage_start(run: RunContext, stage: StageContext) -> None:
    """A stage begins; `stage.model` holds the model the previous stage selected.

    Called once per stage, after the stage object is registered and before
    `spurcore_prepare_model`; again when a resumed run continues an unfinished stage, not for
    one it finds finished. The stage's method may read that model here (JTT collects its
    training errors with `spurcore.evaluation.predict`) and may replace `stage.model` (with
    `run.initial_model()` to retrain from scratch); the stage trains and keeps whatever
    `stage.model` then holds. Files written to `run.out.stage_dir(stage.key)` are kept.

    Example::

        @hookimpl
        def spurcore_stage_start(run, stage):
            print("stage", stage.index, stage.name)
    """


@hookspec
def spurcore_stage_end(run: RunContext, stage: StageContext, result: dict[str, Any]) -> None:
    """A stage finished; `result` is its entry of `summary.json` (name, selected epoch, metrics).

    Called once per stage, after the selected epoch's weights are loaded into `stage.model`.

    Example::

        @hookimpl
        def spurcore_stage_end(run, stage, result):
            print(stage.name, result["metrics"]["val"]["worst_group_acc"])
    """


@hookspec
def spurcore_epoch_start(run: RunContext, stage: StageContext, epoch: int) -> None:
    """A training epoch begins (epochs count from 1), the model in train mode.

    Called once per epoch of a train stage. Pruned-twin fine-tuning rebuilds its neuron mask
    here.

    Example::

        @hookimpl
        def spurcore_epoch_start(self, stage, epoch):
            self.mask = top_neurons(stage.model, self.options.q)
    """


@hookspec
def spurcore_epoch_end(run: RunContext, stage: StageContext, epoch: int, metrics: dict[str, Any]) -> None:
    """An epoch finished, was evaluated and checkpointed.

    Called once per epoch of a train stage, after its checkpoint is written. `metrics` maps
    split -> metrics (see `spurcore_evaluation_end`; "train" first unless `train_eval` is
    "none") plus "train_loss".

    Example::

        @hookimpl
        def spurcore_epoch_end(stage, epoch, metrics):
            print(epoch, metrics["val"]["worst_group_acc"])
    """


@hookspec
def spurcore_batch_end(run: RunContext, stage: StageContext, epoch: int, step: int, batch: Batch, loss: torch.Tensor) -> None:
    """A training step finished (optimizer stepped). `step` counts batches within the epoch.

    Called once per training batch: keep implementations cheap (no `.item()` on CUDA unless
    needed).

    Example::

        @hookimpl
        def spurcore_batch_end(step, loss):
            if step % 100 == 0:
                print(float(loss))
    """


@hookspec
def spurcore_evaluation_start(run: RunContext, stage: StageContext, epoch: int, split: str) -> None:
    """Evaluation of one split begins, the model in eval mode, gradients off.

    Called per split and epoch: "train" first (the examples `[train] train_eval` names, from
    the deterministic inputs, never the augmented ones), then val, test and any extra split.
    Activation loggers attach their forward hooks here.

    Example::

        @hookimpl
        def spurcore_evaluation_start(self, stage, split):
            self.handle = stage.model.embed.register_forward_hook(self.record)
    """


@hookspec
def spurcore_evaluation_batch(run: RunContext, stage: StageContext, epoch: int, split: str, batch: Batch, logits: torch.Tensor) -> None:
    """One evaluation batch was forwarded; `logits` are the model's outputs for `batch`.

    Called per evaluation batch, after the forward pass (so forward hooks have fired).
    `batch.index` holds the examples' positions in the split: on a training subset
    (`train_eval = "subset:N"`) they are the subset's, not 0..len-1.

    Example::

        @hookimpl
        def spurcore_evaluation_batch(self, batch, logits):
            self.rows.append((batch.index, logits.argmax(1)))
    """


@hookspec
def spurcore_evaluation_end(run: RunContext, stage: StageContext, epoch: int, split: str, metrics: dict[str, Any]) -> None:
    """Evaluation of one split finished; `metrics` is its metrics mapping.

    Called per split after every epoch (`epoch` = 0 in post-hoc stages), after the last
    `spurcore_evaluation_batch`. On a training subset, metrics (and `group_count`) are the
    subset's.
    Keys follow the pipeline's metrics (`avg_acc`, `worst_group_acc`, `worst_class_acc`,
    `group_acc`, `group_count`, ...), accuracies as fractions in [0, 1].

    Example::

        @hookimpl
        def spurcore_evaluation_end(split, metrics):
            print(split, metrics["avg_acc"])
    """


# --- stage hooks ----------------------------------------------------------------------------------

STAGE_HOOKS = ("spurcore_prepare_model", "spurcore_train_sampler", "spurcore_train_loss", "spurcore_posthoc_head",
               "spurcore_inference_variants")


@hookspec
def spurcore_prepare_model(run: RunContext, stage: StageContext, model: SpurModel) -> None:
    """Change the model's structure before a train stage trains it (in place).

    Called once per train stage, after `spurcore_stage_start`, and again with the same
    options whenever the stage's checkpoints are loaded into a freshly built model, so it must
    be deterministic. Inserted layers read the batch's example indices from
    `model.context.index` during the forward pass.

    Example::

        @hookimpl
        def spurcore_prepare_model(self, model):
            model.embed.block2 = nn.Sequential(model.embed.block2, MyLayer(model.context))
    """


@hookspec(firstresult=True)
def spurcore_train_sampler(run: RunContext, stage: StageContext, epoch: int, generator: torch.Generator) -> Any:
    """Return the order of training examples for one epoch, or None for a plain shuffle.

    Called once per epoch of a train stage; the first non-None result is used: a sequence
    of example indices (repeats allowed, e.g. up-weighting). Draw randomness only from
    `generator`, which is seeded by (seed, stage, epoch), so a resumed run sees the same
    order.

    Example::

        @hookimpl
        def spurcore_train_sampler(self, epoch, generator):
            weights = torch.as_tensor(self.weights)
            return torch.multinomial(weights, len(weights), replacement=True, generator=generator)
    """


@hookspec(firstresult=True)
def spurcore_train_loss(run: RunContext, stage: StageContext, model: SpurModel, batch: Batch) -> torch.Tensor:
    """Return the scalar loss of one training batch; this is where a method shapes the loss
    and the forward pass.

    Called once per training batch, inside autocast when AMP is on, with `batch` on the
    device and the model in train mode. The first non-None result is used; when no stage
    returns one, the kernel's default is the loss (ERM's: the mean cross-entropy of
    `model(batch.x, index=batch.index)`). Pass `index=batch.index` to the model so
    example-tied layers see it.

    Example::

        @hookimpl
        def spurcore_train_loss(self, model, batch):
            losses = F.cross_entropy(model(batch.x, index=batch.index), batch.y, reduction="none")
            weights = self.weights.to(losses.device)  # kept on the CPU; the batch may be on a GPU
            return (losses * weights[batch.index]).mean()
    """


@hookspec(firstresult=True)
def spurcore_posthoc_head(run: RunContext, stage: StageContext, model: SpurModel, embeddings: Embeddings) -> torch.nn.Module:
    """Return a new head for a post-hoc stage, fitted on frozen embeddings.

    Called once per post-hoc stage with `embeddings` (penultimate features, labels and
    attributes of every split, from the model in eval mode without augmentation). The first
    non-None result is used: an `nn.Linear(model.feature_dim, n_classes)` (fold any feature
    standardization into its weights) that replaces `model.head`.

    Example::

        @hookimpl
        def spurcore_posthoc_head(self, embeddings):
            train = embeddings["val"]
            return fit_linear_head(train.features, train.y)
    """


@hookspec(firstresult=True)
def spurcore_inference_variants(run: RunContext, stage: StageContext, model: SpurModel) -> dict[str, Any]:
    """Return the ways this train stage's model can run at inference without retraining, as
    {name: apply}, where `apply(model)` switches a model of this stage to that way in place;
    or None (the default) for one way.

    Called once per train stage after `spurcore_prepare_model`, and again whenever a finished
    stage's model is rebuilt (`[init]`, tracers, the next stage). After every epoch the kernel
    evaluates every split once per variant, in the order given (`stage.variant` names the one
    being evaluated; the evaluation hooks are called for each), records each variant's metrics
    in the epoch's history entry (`"variants"`; `"metrics"` holds the first one's), and the
    selector chooses among (epoch, variant) pairs, ties to the earlier epoch, then the earlier
    variant. The selected variant is in the stage's result (`selected.variant`) and is applied
    whenever that epoch's model is loaded. FairDropout's inference modes (drop the memorizing
    units, or scale them) are variants: the choice costs evaluations, not training runs.

    Example::

        @hookimpl
        def spurcore_inference_variants(self, model):
            return {mode: functools.partial(set_mode, mode=mode) for mode in ("drop", "scale")}
    """
