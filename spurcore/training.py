"""A train stage's epochs: the loop that steps the optimizer over the stage's batches, asks
the stage's hooks for the order and the loss (the kernel's cross-entropy when no stage hook
answers), evaluates every split (in each inference variant), steps the scheduler and
checkpoints after every epoch, and continues from the last checkpoint when a run is resumed.
A fine-tuning stage first evaluates and checkpoints the model it starts from, as epoch 0."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from spurcore import config as cfg, distributed
from spurcore.context import RunContext, StageContext
from spurcore.data import Batch, iterate_batches
from spurcore.evaluation import Evaluator
from spurcore.model import SpurModel
from spurcore.outputs import RunOutputs
from spurcore.planning import RunError
from spurcore.rng import epoch_seed, get_rng_state, set_rng_state

FINITE_CHECK_STEPS = 32  # how often training reads back whether its loss is still finite (a GPU sync)


def default_loss(model: SpurModel, batch: Batch) -> torch.Tensor:
    """The loss of a step no stage hook shapes: the mean cross-entropy of the batch (ERM)."""
    return F.cross_entropy(model(batch.x, index=batch.index), batch.y)


def train(run: RunContext, stage: StageContext, hook: Any, evaluator: Evaluator, outputs: RunOutputs,
          score: Callable[[dict[str, Any]], float]) -> list[dict[str, Any]]:
    """Train `stage` for its epochs (from `stage.first_epoch`); `score` is the selector's score
    of an epoch's entry (for the plateau scheduler). Returns the stage's history."""
    out, train_config = run.out, stage.train
    model = stage.model
    auxiliary = {name: aux.module.to(run.device.device) for name, aux in stage.auxiliary.items()}
    optimizers = {name: (aux.optimizer or (lambda params: make_optimizer(train_config, params)))(
        auxiliary[name].parameters()) for name, aux in stage.auxiliary.items()}
    stage.optimizer = make_optimizer(train_config, model.parameters())
    stage.scheduler = make_scheduler(train_config, stage.optimizer)
    scaler = run.device.grad_scaler()
    history: list[dict[str, Any]] = []

    def checkpoint(epoch: int) -> None:
        out.save_checkpoint(stage.key, epoch, {
            "model": model.state_dict(),
            "optimizer": stage.optimizer.state_dict(),
            "scheduler": stage.scheduler.state_dict() if stage.scheduler is not None else {},
            "scaler": scaler.state_dict(),
            "method": stage.method.state_dict() if hasattr(stage.method, "state_dict") else {},
            "auxiliary": {name: {"module": module.state_dict(), "optimizer": optimizers[name].state_dict()}
                          for name, module in auxiliary.items()},
            "rng": get_rng_state(),
            "history": history,
        })
        outputs.write_metrics(stage.key, history)

    if stage.first_epoch == 0:  # a fine-tuning stage: the model it starts from is candidate epoch 0
        model.eval()
        metrics, variants = evaluator.every_variant(stage, 0)
        history.append(epoch_entry(0, None, metrics, variants))
        checkpoint(0)
    elif stage.first_epoch - 1 in out.epochs(stage.key):
        state = out.load_checkpoint(stage.key, stage.first_epoch - 1)
        model.load_state_dict(state["model"])
        stage.optimizer.load_state_dict(state["optimizer"])
        load_auxiliary(stage, auxiliary, optimizers, state.get("auxiliary", {}))
        if stage.scheduler is not None:
            stage.scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if hasattr(stage.method, "load_state_dict"):
            stage.method.load_state_dict(state.get("method", {}))
        set_rng_state(state["rng"])
        history = list(state["history"])
    split = run.data.splits["train"]
    fast_layout(model, train_config)
    every_optimizer = [stage.optimizer, *optimizers.values()]
    for epoch in range(history[-1]["epoch"] + 1 if history else 1, train_config.epochs + 1):
        model.train()
        for module in auxiliary.values():
            module.train()
        hook.spurcore_epoch_start(run=run, stage=stage, epoch=epoch)
        generator = torch.Generator().manual_seed(epoch_seed(run.config.seed, stage.index, epoch))
        order = hook.spurcore_train_sampler(run=run, stage=stage, epoch=epoch, generator=generator)
        if order is None:
            order = torch.randperm(len(split), generator=generator)
        elif len(order) == 0:
            raise RunError(f"stages[{stage.index}]: method {stage.spec.name!r} returned an empty training order")
        total = torch.zeros((), device=run.device.device)
        seen = torch.zeros((), device=run.device.device)
        first_bad = torch.full((), -1, device=run.device.device)  # the first step whose loss is not finite
        order, sizes, weights = distributed.shard(torch.as_tensor(order), train_config.batch_size)
        batches = iterate_batches(split, order, sizes, augment=True, **run.device.loader_options(train_config.num_workers))
        for step, batch in enumerate(batches):
            batch = run.device.move(batch, channels_last=train_config.channels_last)
            weight = 1.0 if weights is None else weights[step]
            with run.device.autocast():
                loss = hook.spurcore_train_loss(run=run, stage=stage, model=model, batch=batch)
                if loss is None:
                    loss = default_loss(model, batch)
            if not isinstance(loss, torch.Tensor):
                raise RunError(f"stages[{stage.index}]: spurcore_train_loss of method {stage.spec.name!r} returned "
                               f"{type(loss).__name__} for stage {stage.key!r}; a loss hook returns a scalar tensor "
                               f"(or None for the default cross-entropy)")
            for optimizer in every_optimizer:
                optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * weight if weights else loss).backward()
            if weights:
                distributed.average_gradients([*model.parameters(),
                                               *(p for module in auxiliary.values() for p in module.parameters())])
            for optimizer in every_optimizer:
                scaler.step(optimizer)
            scaler.update()
            total += loss.detach() * len(batch) * (weight > 0)
            seen += len(batch) * (weight > 0)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
            if step % FINITE_CHECK_STEPS == FINITE_CHECK_STEPS - 1:
                check_finite(run, stage, epoch, first_bad)
            hook.spurcore_batch_end(run=run, stage=stage, epoch=epoch, step=step, batch=batch, loss=loss)
        check_finite(run, stage, epoch, first_bad)
        metrics, variants = evaluator.every_variant(stage, epoch)
        entry = epoch_entry(epoch, float(distributed.total(total)) / max(float(distributed.total(seen)), 1),
                            metrics, variants)
        history.append(entry)
        if isinstance(stage.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            stage.scheduler.step(score(entry))
        elif stage.scheduler is not None:
            stage.scheduler.step()
        checkpoint(epoch)
        hook.spurcore_epoch_end(run=run, stage=stage, epoch=epoch, metrics={**metrics, "train_loss": entry["train_loss"]})
    return history


def epoch_entry(epoch: int, train_loss: float | None, metrics: dict[str, Any],
                variants: dict[str, Any] | None) -> dict[str, Any]:
    """An epoch's history entry: its metrics per split, and per inference variant when the
    stage has several (`metrics` is then the first variant's)."""
    entry = {"epoch": epoch, "train_loss": train_loss, "metrics": metrics}
    if variants is not None:
        entry["variants"] = variants
    return entry


def load_auxiliary(stage: StageContext, modules: dict[str, torch.nn.Module],
                   optimizers: dict[str, torch.optim.Optimizer], saved: dict[str, Any]) -> None:
    """Put back the auxiliary networks' weights and optimizer states from a checkpoint; a
    network the checkpoint lacks, or one it holds that the stage no longer adds, is named."""
    if set(saved) != set(modules):
        raise RunError(f"stages[{stage.index}] ({stage.key}): the checkpoint holds the auxiliary networks "
                       f"{sorted(saved)} but the method adds {sorted(modules)}; resume with the same method and "
                       f"options")
    for name, module in modules.items():
        module.load_state_dict(saved[name]["module"])
        optimizers[name].load_state_dict(saved[name]["optimizer"])


def check_finite(run: RunContext, stage: StageContext, epoch: int, first_bad: torch.Tensor) -> None:
    """Stop the stage once its loss has stopped being a number (`first_bad`: the first such
    step of this epoch, -1 while none), before the epoch's checkpoint: the folder keeps the
    epochs before it. Every process of a data-parallel run stops together."""
    if float(distributed.total((first_bad >= 0).float())) == 0:
        return
    step = int(first_bad)
    where = f"step {step}" if step >= 0 else "a step of another process"
    kept = run.out.epochs(stage.key)
    resume = (f"the folder keeps the checkpoints of epochs {kept[0]} to {kept[-1]} (spur run --resume continues "
              f"from there)" if kept else "no checkpoint of this stage was written")
    raise RunError(f"stages[{stage.index}] ({stage.key}), epoch {epoch}, {where}: the training loss is not a "
                   f"finite number; the weights diverged (lower train.lr, check the data for extreme values); "
                   f"{resume}")


def fast_layout(model: SpurModel, train: cfg.TrainConfig) -> None:
    """`[train] channels_last`: the model's weights in NHWC layout (batches follow in
    `Device.move`); `[train] compile`: the model compiled in place by `torch.compile` (its
    state dict keeps its keys, so checkpoints load into an uncompiled model)."""
    if train.channels_last:
        model.to(memory_format=torch.channels_last)
    if train.compile:
        model.compile()


def make_optimizer(train: cfg.TrainConfig, params: Any) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)


def make_scheduler(train: cfg.TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    if train.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=1)
    return None
