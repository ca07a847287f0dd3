"""`memorization_scores`: the whole procedure, from a pipeline to the scores of every seed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spurcore.api import PluginManager, atomic
from spurcore_memorization.estimate import memorization
from spurcore_memorization.outputs import across_seeds, figure, labels, seed_summary, table, write_scores
from spurcore_memorization.procedure import Settings, collect, full_data, prepare
from spurcore_sweep import execute, start_launcher, write_manifest


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
    records: dict[str, dict[str, Any]] = {}
    total = len(sweep.trials)

    def heard(trial, record) -> None:
        records[trial.path] = record
        write_manifest(sweep, records)
        state = "finished earlier" if record.get("skipped") else record["status"]
        extra = f": {record['error']}" if "error" in record else ""
        echo(f"[{len(records)}/{total}] {trial.path}: {state}{extra}")

    execute(sweep, start_launcher(plugins, launcher, jobs=jobs, threads=threads, address=address,
                                  options=launcher_option, out=out), heard)
    failed = [path for path, record in records.items() if record["status"] != "done"]
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
        folder = out / f"seed{seed}"
        write_scores(folder / "scores.h5", data, estimate, collected,
                     {"seed": seed, "models": settings.models, "subset": settings.subset,
                      "epochs": collected["epochs"]})
        per_seed[seed] = seed_summary(data, estimate, collected["correct_test"])
        per_seed[seed]["selected_epochs"] = collected["epochs"].tolist()
        atomic.write_json(folder / "scores.json", per_seed[seed])
        scores[seed] = {"memorization": estimate.memorization, "group": labels(data, "train")[0]}
        echo(f"seed {seed}: {folder / 'scores.h5'}")
    if not per_seed:
        return {"failed": failed, "summary": None}
    summary = across_seeds(per_seed)
    atomic.write_json(out / "summary.json", {"seeds": sorted(per_seed), "models": settings.models,
                                             "subset": settings.subset, "groups": summary})
    text = table(summary)
    atomic.write_text(out / "summary.md", text)
    names = list(labels(data, "train")[1])
    figure(out / "scores.png", scores, names, summary,
           f"{pipeline.name}: {settings.models} models on {settings.subset:.0%} subsets, "
           f"seed{'s' if len(per_seed) > 1 else ''} {', '.join(map(str, sorted(per_seed)))}")
    echo(text)
    return {"failed": failed, "summary": summary}
