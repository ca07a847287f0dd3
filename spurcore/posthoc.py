"""A post-hoc stage: the penultimate features of every split (extracted once per model and
cached, `spurcore.embeddings`), the head the stage's method fits on them, one evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from spurcore import config as cfg
from spurcore.context import RunContext, StageContext
from spurcore.embeddings import cached
from spurcore.evaluation import Evaluator
from spurcore.outputs import RunOutputs
from spurcore.planning import RunError
from spurcore.rng import get_rng_state


def fit_head(run: RunContext, stage: StageContext, hook: Any, evaluator: Evaluator, outputs: RunOutputs,
             content: str) -> list[dict[str, Any]]:
    """Replace the model's head by the one the stage's `spurcore_posthoc_head` fits, evaluate,
    checkpoint it as epoch 0; `content` is the data's content digest (the cache's key)."""
    model = stage.model
    trained_here = any(s.spec.kind == "train" for s in run.plan.stages[: stage.index])
    source = run.config.init
    own = run.out.path / "embeddings"
    origin = own if trained_here or source is None else Path(source.run) / "embeddings"
    found = cached(model, run.data, run.device, cfg.to_dict(run.config.dataset), write_to=origin,
                   look_in=(own,), batch_size=stage.train.eval_batch_size, content=content)
    for note in found.notes:
        run.log(f"stage {stage.key}: {note}")
    run.log(f"stage {stage.key}: embeddings {'reused from' if found.reused else 'extracted to'} {found.path} "
            f"({found.describe()})")
    head = hook.spurcore_posthoc_head(run=run, stage=stage, model=model, embeddings=found.embeddings)
    expected = (model.feature_dim, run.data.n_classes)
    if not isinstance(head, nn.Linear) or (head.in_features, head.out_features) != expected:
        raise RunError(
            f"stages[{stage.index}]: method {stage.spec.name!r} must return nn.Linear"
            f"{expected} from spurcore_posthoc_head, got {head!r}"
        )
    model.head = head.to(run.device.device)
    metrics = evaluator.every_split(stage, 0)
    run.out.save_checkpoint(stage.key, 0, {"model": model.state_dict(), "history": [], "rng": get_rng_state()})
    history = [{"epoch": 0, "train_loss": None, "metrics": metrics}]
    outputs.write_metrics(stage.key, history)
    return history
