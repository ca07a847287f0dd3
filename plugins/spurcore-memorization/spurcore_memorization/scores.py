"""`memorization_scores`: the whole Feldman-Zhang procedure, from a pipeline to the scores of every seed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spurcore.api import PluginManager
from spurcore_memorization.estimate import memorization
from spurcore_memorization.outputs import SeedScores, write_seed, write_summary
from spurcore_memorization.procedure import Settings, collect, full_data, launch, prepare


def memorization_scores(pipeline: Path, out: Path, plugins: PluginManager, settings: Settings, *,
                        launcher: str = "local", jobs: int = 1, threads: int = 1, address: str | None = None,
                        launcher_option: tuple[str, ...] = (),
                        plugin_args: tuple[str, ...] = (), echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or, on a relaunch, finish) the K models of every seed through `launcher`, then
    write every seed's scores and the summary over seeds. Returns {"failed": [model paths],
    "summary": per group over seeds (None when no seed has all its models)}."""
    import torch
    from tqdm import tqdm

    sweep = prepare(out, pipeline, plugins, settings, plugin_args=plugin_args, threads=threads)
    launched = launch(sweep, plugins, launcher=launcher, jobs=jobs, threads=threads, address=address,
                      launcher_option=launcher_option, out=out, echo=echo)
    failed = launched["failed"]
    torch.set_num_threads(threads)  # predictions with the models' own thread count
    data = full_data(out, plugins)
    per_seed, scores = {}, {}
    for seed in settings.seeds:
        missing = [path for path in failed if path.startswith(f"seed{seed}/")]
        if missing:
            echo(f"seed {seed}: no scores, {len(missing)} of its models did not finish ({', '.join(missing)})")
            continue
        collected = collect(out, seed, settings.models, data, plugins,
                            progress=lambda it: tqdm(it, desc=f"seed {seed}: predictions", leave=False), note=echo)
        estimate = memorization(collected["correct_train"], collected["trained"])
        found = SeedScores(memorization=estimate.memorization, accuracies=estimate.accuracies,
                           test_accuracy=collected["correct_test"].mean(0),
                           train={"models_in": estimate.models_in, "models_out": estimate.models_out,
                                  "correct": collected["correct_train"], "trained": collected["trained"]},
                           test={"correct": collected["correct_test"]},
                           attributes={"estimator": "feldman-zhang", "seed": seed, "models": settings.models,
                                       "subset": settings.subset, "epochs": collected["epochs"]})
        per_seed[seed] = write_seed(out / f"seed{seed}", data, found,
                                    {"selected_epochs": collected["epochs"].tolist()})
        scores[seed] = estimate.memorization
        echo(f"seed {seed}: {out / f'seed{seed}' / 'scores.h5'}")
    if not per_seed:
        return {"failed": failed, "summary": None}
    summary, text = write_summary(out, data, per_seed, scores,
                         {"estimator": "feldman-zhang", "models": settings.models, "subset": settings.subset,
                          "launch": launched["cost"]},
                         f"{pipeline.name}: {settings.models} models on {settings.subset:.0%} subsets, "
                         f"seed{'s' if len(per_seed) > 1 else ''} {', '.join(map(str, sorted(per_seed)))}")
    echo(text)
    return {"failed": failed, "summary": summary}
