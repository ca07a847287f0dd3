"""Sweeps: one pipeline over settings x seeds (and, optionally, against other methods), one run
directory per trial, recorded in `sweep.json` so a report can read them all back.

Settings come from `--grid KEY=V1,V2` (every combination) or `--random N` (N draws from the
`search_space` each stage's mitigation declares, widened by the grid's values). With
`methods`, the pipeline is the baseline and every named method becomes a pipeline of its own:
a post-hoc method, or a training method that fine-tunes (`MitigationSpec.fine_tunes`), starts
from the baseline run of the same settings and seed (`[init] run = ...`), so all of them share
one trained model and its cached embeddings; any other training method trains from scratch
with the baseline's settings. Grid keys that start with a method's name (`dfr.options.retrains`)
apply to that method's stage only; all others are pipeline overrides of the baseline.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from spurcore import atomic
from spurcore.config import ConfigError, load_pipeline, parse_override
from spurcore.errors import SpurcoreError
from spurcore.plugins import PluginManager

MANIFEST = "sweep.json"


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`KEY=V1,V2` -> {KEY: [V1, V2]}; each value is read as a TOML literal (commas inside
    brackets or quotes do not split), so `placement=["block3"],["block2"]` has two values."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        key, raw = item.split("=", 1)
        values = [parse_override(f"v={part}")[1] for part in _split_values(raw)]
        if not key or not values:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice")
        grid[key] = values
    return grid


def _split_values(raw: str) -> list[str]:
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    parts.append(raw[start:])
    return [p.strip() for p in parts if p.strip()]


def toml_value(value: Any) -> str:
    """A value written as a TOML literal, for an override."""
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def expand(space: Mapping[str, Sequence[Any]], random_draws: int | None, rng: random.Random) -> list[dict[str, Any]]:
    """Every combination of `space`, or `random_draws` distinct random draws from it."""
    keys = sorted(space)
    if random_draws is None:
        return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    total = 1
    for key in keys:
        total *= len(space[key])
    drawn: list[dict[str, Any]] = []
    while len(drawn) < min(random_draws, total):
        pick = {k: rng.choice(list(space[k])) for k in keys}
        if pick not in drawn:
            drawn.append(pick)
    return drawn


@attrs.frozen(kw_only=True)
class Trial:
    """One run of a sweep. `method` labels its row in reports; `settings` are what varies
    (override key -> value); `after` is the trial whose run this one starts from."""

    method: str
    settings: dict[str, Any]
    seed: int
    path: str
    overrides: tuple[str, ...]
    after: str | None = None

    def spec(self, sweep: Sweep) -> dict[str, Any]:
        """What a launcher hands to `run_trial`: plain data, so it pickles to any worker."""
        return {"pipeline": str(sweep.pipeline), "overrides": list(self.overrides),
                "out": str(sweep.out / self.path), "plugin_args": list(sweep.plugin_args),
                "threads": sweep.threads}


@attrs.frozen(kw_only=True)
class Sweep:
    pipeline: Path
    out: Path
    trials: tuple[Trial, ...]
    plugin_args: tuple[str, ...] = ()
    threads: int = 0


def _slug(settings: Mapping[str, Any]) -> str:
    if not settings:
        return "default"
    short = {re.sub(r"(^|\.)(stages\.\d+\.)?options\.", r"\1", k): v for k, v in settings.items()}
    text = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(short.items()))
    slug = re.sub(r"[^A-Za-z0-9._=,+-]+", "", text)
    digest = hashlib.sha1(json.dumps(sorted(settings.items())).encode()).hexdigest()[:8]
    return f"{slug[:64]}-{digest}"


def plan_sweep(pipeline: Path, out: Path, plugins: PluginManager, *, grid: Mapping[str, Sequence[Any]],
               seeds: Sequence[int], methods: Sequence[str] = (), random_draws: int | None = None,
               draw_seed: int = 0, plugin_args: Sequence[str] = (), threads: int = 0) -> Sweep:
    """Every trial of a sweep, each pipeline checked against the installed plugins (names,
    options) before any run starts."""
    from spurcore.runner import plan

    if not seeds:
        raise ConfigError("--seeds: name at least one seed")
    base_config = load_pipeline(pipeline)
    label = "+".join(stage.label for stage in base_config.stages)
    for method in methods:
        plugins.get("mitigations", method)
        if method == label:
            raise ConfigError(f"--methods {method}: that is the pipeline itself (its runs are the baseline)")
    own = {k: v for k, v in grid.items() if k.split(".")[0] not in methods}
    space = dict(own)
    if random_draws is not None:
        for i, stage in enumerate(base_config.stages):
            for option, values in plugins.get("mitigations", stage.method).search_space.items():
                space.setdefault(f"stages.{i}.options.{option}", values)
    rng = random.Random(draw_seed)
    base_settings = expand(space, random_draws, rng)
    trials = []
    for settings in base_settings:
        overrides = [f"{k}={toml_value(v)}" for k, v in settings.items()]
        for seed in seeds:
            trials.append(Trial(method=label, settings=settings, seed=seed,
                                path=f"{label}/{_slug(settings)}/seed{seed}",
                                overrides=(*overrides, f"seed={seed}")))
        plan(load_pipeline(pipeline, overrides), plugins)
    baselines = {(json.dumps(t.settings, sort_keys=True), t.seed): t for t in trials}
    for method in methods:
        spec = plugins.get("mitigations", method)
        mine = {k[len(method) + 1:]: v for k, v in grid.items() if k.split(".")[0] == method}
        if random_draws is not None:
            for option, values in spec.search_space.items():
                mine.setdefault(f"options.{option}", values)
        follows = spec.kind == "posthoc" or spec.fine_tunes
        for method_settings in expand(mine, random_draws, rng):
            stage = [f'stages=[{{method="{method}"}}]',
                     *(f"stages.0.{k}={toml_value(v)}" for k, v in method_settings.items())]
            for base in base_settings:
                settings = {**base, **{f"{method}.{k}": v for k, v in method_settings.items()}}
                for seed in seeds:
                    start = baselines[(json.dumps(base, sort_keys=True), seed)] if follows else None
                    if start is not None:
                        head = (*start.overrides, f"init.run={toml_value(str(out.resolve() / start.path))}")
                    else:
                        head = (*(f"{k}={toml_value(v)}" for k, v in base.items()), f"seed={seed}")
                    trial = Trial(method=method, settings=settings, seed=seed,
                                  path=f"{method}/{_slug(settings)}/seed{seed}", overrides=(*head, *stage),
                                  after=start.path if start else None)
                    trials.append(trial)
                plan(load_pipeline(pipeline, trial.overrides), plugins)
    return Sweep(pipeline=pipeline.resolve(), out=out.resolve(), trials=tuple(trials), plugin_args=tuple(plugin_args),
                 threads=threads)


def all_methods(pipeline: Path, plugins: PluginManager, grid: Mapping[str, Sequence[Any]]
                ) -> tuple[list[str], dict[str, Sequence[Any]], dict[str, str]]:
    """`--methods all`: every installed mitigation not in the pipeline that plans with its
    defaults (and its grid keys) here; the grid without the keys of those left out; and why
    each was left out."""
    base = {stage.method for stage in load_pipeline(pipeline).stages}
    installed = [name for name in sorted(plugins.registry("mitigations")) if name not in base]
    kept, left_out = [], {}
    for name in installed:
        mine = {k: v for k, v in grid.items() if k.split(".")[0] not in installed or k.split(".")[0] == name}
        try:
            plan_sweep(pipeline, Path("."), plugins, grid=mine, seeds=[0], methods=[name])
        except SpurcoreError as error:
            left_out[name] = str(error)
        else:
            kept.append(name)
    return kept, {k: v for k, v in grid.items() if k.split(".")[0] not in left_out}, left_out


def run_trial(spec: Mapping[str, Any], manager: PluginManager | None = None) -> dict[str, Any]:
    """Run (or continue) one trial in this process, with `manager` or one built from the
    sweep's `-p` arguments; a failure comes back as a record, so the sweep goes on.
    Module-level, so process pools and Ray can ship it to workers."""
    import traceback

    import torch

    from spurcore.cli import _manager
    from spurcore.runner import run_pipeline

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    try:
        manager = manager or _manager([*spec["plugin_args"], "no:progress"])
        config = load_pipeline(spec["pipeline"], spec["overrides"])
        summary = run_pipeline(config, spec["out"], manager, resume=True, log=lambda message: None)
    except Exception as error:  # noqa: BLE001 - recorded, and the sweep goes on
        return {"status": "failed", "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()}
    test = summary["metrics"]["test"]
    return {"status": "done", "test_wga": test.get("worst_group_acc"), "test_avg": test.get("avg_acc")}


def finished(sweep: Sweep, trial: Trial) -> bool:
    return (sweep.out / trial.path / "summary.json").exists()


def read_manifest(out: Path) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{out}: no {MANIFEST}; is this a `spur sweep --out` directory?") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def write_manifest(sweep: Sweep, records: Mapping[str, dict[str, Any]]) -> None:
    """`sweep.json`: every trial of this and earlier launches into the same directory, with
    its status (done, failed with its error, skipped) and what it compared."""
    path = sweep.out / MANIFEST
    earlier = json.loads(path.read_text())["trials"] if path.exists() else []
    trials = {t["path"]: t for t in earlier}
    for trial in sweep.trials:
        record = records.get(trial.path) or trials.get(trial.path, {}).get("record")
        trials[trial.path] = {**attrs.asdict(trial), "overrides": list(trial.overrides), "record": record}
    atomic.write_json(path, {"pipeline": str(sweep.pipeline), "trials": list(trials.values())})
