"""Sweeps: one pipeline over settings x seeds (and, optionally, against other methods), one run
directory per trial, recorded in `sweep.json` so a report can read them all back.

Settings come from `--grid KEY=V1,V2` (every combination), crossed, with `--random N`, with N
draws from the `search_space` each stage's mitigation declares (the keys the grid does not
set). With `methods`, the pipeline is the baseline and every named method becomes a pipeline
of its own: a post-hoc method, or a training method that fine-tunes
(`MitigationSpec.fine_tunes`), starts from the baseline run of the same settings and seed
(`[init] run = ...`), so all of them share one trained model and its cached embeddings; any
other training method trains from scratch with the baseline's settings. A chain `a+b` is a
pipeline of those stages; when the sweep runs its prefix (`a`), it starts from that run
instead and runs the rest. Grid keys that start with a method's name (`dfr.options.retrains`,
`a+b.stages.1.options.retrains`) apply to that method's stages only; all others are pipeline
overrides of the baseline.
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

from spurcore.api import (ConfigError, PluginError, PluginManager, RunDir, SpurcoreError, atomic, load_pipeline,
                          parse_override, toml_literal)

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


toml_value = toml_literal  # a value written as a TOML literal, for an override (public: in __all__)


def expand(grid: Mapping[str, Sequence[Any]], space: Mapping[str, Sequence[Any]], random_draws: int | None,
           rng: random.Random) -> list[dict[str, Any]]:
    """Every combination of the grid's values; with `random_draws`, each combination crossed
    with the same `random_draws` distinct draws from the `space` keys the grid does not set, so
    a grid key compares its values on equal draws."""
    combos = _combinations(grid)
    if random_draws is None:
        return combos
    draws = _draw({k: v for k, v in space.items() if k not in grid}, random_draws, rng)
    return [{**combo, **draw} for combo in combos for draw in draws]


def _combinations(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _draw(space: Mapping[str, Sequence[Any]], n: int, rng: random.Random) -> list[dict[str, Any]]:
    """`n` distinct draws from `space` (all of its combinations when it has no more)."""
    keys = sorted(space)
    total = 1
    for key in keys:
        total *= len(space[key])
    drawn: list[dict[str, Any]] = []
    while len(drawn) < min(n, total):
        pick = {k: rng.choice(list(space[k])) for k in keys}
        if pick not in drawn:
            drawn.append(pick)
    return drawn


@attrs.frozen(kw_only=True)
class Method:
    """A `--methods` entry: one mitigation (`dfr`) or a chain of them (`fairdropout+dfr`, a
    pipeline of those stages), labelled as named there."""

    label: str
    stages: tuple[str, ...]

    @classmethod
    def parse(cls, entry: str, plugins: PluginManager) -> Method:
        """A `--methods` entry, every stage a registered mitigation."""
        stages = tuple(entry.split("+"))
        for name in stages:
            try:
                plugins.get("mitigations", name)
            except PluginError as error:
                raise ConfigError(f"--methods {entry}: {error}") from None
        return cls(label=entry, stages=stages)

    def key(self, index: int, rest: str) -> str:
        """The grid key of `rest` (`options.retrains`) in stage `index`: `dfr.options.retrains`
        for one mitigation, `a+b.stages.1.options.retrains` in a chain."""
        return f"{self.label}.{rest}" if len(self.stages) == 1 else f"{self.label}.stages.{index}.{rest}"

    def locate(self, key: str) -> tuple[int, str]:
        """The stage index and the stage's own key of one of this method's grid keys."""
        rest = key[len(self.label) + 1:]
        if len(self.stages) == 1:
            return 0, rest
        found = re.fullmatch(r"stages\.(\d+)\.(.+)", rest)
        if not found or int(found[1]) >= len(self.stages):
            raise ConfigError(f"--grid {key}: a chain's keys are {self.label}.stages.N.KEY, "
                              f"N from 0 to {len(self.stages) - 1}")
        return int(found[1]), found[2]


def owner(key: str, labels: Sequence[str]) -> str | None:
    """The method a grid key belongs to (the longest label it starts with), or None for a key
    of the baseline pipeline."""
    return max((label for label in labels if key.startswith(f"{label}.")), key=len, default=None)


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

    def describe(self) -> str:
        """The trial as an error names it: its path, method, settings and seed (a bad value of a
        grid or a draw says which combination it came from)."""
        settings = ", ".join(f"{k}={toml_value(v)}" for k, v in self.settings.items()) or "default"
        return f"trial {self.path} (method {self.method}, settings {settings}, seed {self.seed})"

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
    threads: int = 1  # torch threads of every trial


def short_key(key: str) -> str:
    """A settings key without its `options.` part (and a chain's `stages.N.`), for names."""
    return re.sub(r"(^|\.)(stages\.\d+\.)?options\.", r"\1", key)


def _slug(settings: Mapping[str, Any]) -> str:
    if not settings:
        return "default"
    short = {short_key(k): v for k, v in settings.items()}
    text = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(short.items()))
    slug = re.sub(r"[^A-Za-z0-9._=,+-]+", "", text)
    digest = hashlib.sha1(json.dumps(sorted(settings.items())).encode()).hexdigest()[:8]
    return f"{slug[:64]}-{digest}"


def plan_sweep(pipeline: Path, out: Path, plugins: PluginManager, *, grid: Mapping[str, Sequence[Any]],
               seeds: Sequence[int], methods: Sequence[str] = (), random_draws: int | None = None,
               draw_seed: int = 0, plugin_args: Sequence[str] = (), threads: int = 1) -> Sweep:
    """Every trial of a sweep, each pipeline checked against the installed plugins (names,
    options) before any run starts."""
    from spurcore.api import plan

    if not seeds:
        raise ConfigError("--seeds: name at least one seed")
    stages = load_pipeline(pipeline).stages
    base = "+".join(stage.label for stage in stages)
    chosen = [Method.parse(entry, plugins) for entry in dict.fromkeys(methods)]
    labels = [method.label for method in chosen]
    if base in labels:
        raise ConfigError(f"--methods {base}: that is the pipeline itself (its runs are the baseline)")
    space = {f"stages.{i}.options.{option}": values for i, stage in enumerate(stages)
             for option, values in plugins.get("mitigations", stage.method).search_space.items()}
    own = {k: v for k, v in grid.items() if owner(k, labels) is None}
    trials = {base: [
        Trial(method=base, settings=settings, seed=seed, path=f"{base}/{_slug(settings)}/seed{seed}",
              overrides=(*(f"{k}={toml_value(v)}" for k, v in settings.items()), f"seed={seed}"))
        for settings in expand(own, space, random_draws, _rng(draw_seed, base)) for seed in seeds]}
    for method in sorted(chosen, key=lambda m: len(m.stages)):  # a chain after the methods it starts from
        start, done = _start(method, base, labels, plugins)
        mine = {k: v for k, v in grid.items() if owner(k, labels) == method.label}
        trials[method.label] = _method_trials(
            method, trials[start or base], out, plugins, start=start, done=done, grid=mine,
            random_draws=random_draws, rng=_rng(draw_seed, method.label))
    planned = [trial for group in trials.values() for trial in group]
    for trial in planned:
        try:
            plan(load_pipeline(pipeline, trial.overrides), plugins)
        except SpurcoreError as error:
            raise type(error)(f"{trial.describe()}: {error}") from None
    return Sweep(pipeline=pipeline.resolve(), out=out.resolve(), trials=tuple(planned), plugin_args=tuple(plugin_args),
                 threads=threads)


def _rng(draw_seed: int, label: str) -> random.Random:
    """Each method's own draws, so adding a method to a sweep leaves the others' draws alone."""
    return random.Random(f"{draw_seed}:{label}")


def _start(method: Method, base: str, labels: Sequence[str], plugins: PluginManager) -> tuple[str | None, int]:
    """Which trials `method`'s trials start from, and how many of its stages those ran: the
    longest prefix of its chain that the sweep runs (the pipeline `base` or one of `labels`);
    else, when its first stage is post-hoc or fine-tunes, the baseline's, with none of its
    stages; else none (it trains from scratch)."""
    for done in range(len(method.stages) - 1, 0, -1):
        prefix = "+".join(method.stages[:done])
        if prefix == base or prefix in labels:
            return prefix, done
    first = plugins.get("mitigations", method.stages[0])
    return (base, 0) if first.kind == "posthoc" or first.fine_tunes else (None, 0)


def _method_trials(method: Method, starts: Sequence[Trial], out: Path, plugins: PluginManager, *,
                   start: str | None, done: int, grid: Mapping[str, Sequence[Any]],
                   random_draws: int | None, rng: random.Random) -> list[Trial]:
    """A method's trials: its own settings (its grid keys, its stages' search spaces) crossed
    with `starts`, the trials whose settings and seed it takes, and whose runs it continues
    from (`[init] run`) when it has a `start`, running only the stages after the first `done`."""
    for key in grid:
        index, _ = method.locate(key)
        if index < done:
            raise ConfigError(f"--grid {key}: stage {index} ({method.stages[index]}) of {method.label} is not "
                              f"run again; it comes from the {start} trials, so set it on {start}'s keys")
    space = {method.key(i, f"options.{option}"): values for i in range(done, len(method.stages))
             for option, values in plugins.get("mitigations", method.stages[i]).search_space.items()}
    stages = "stages=[" + ", ".join(f"{{method={json.dumps(name)}}}" for name in method.stages[done:]) + "]"
    trials = []
    for mine in expand(grid, space, random_draws, rng):
        own = [stages]
        for key, value in mine.items():
            index, rest = method.locate(key)
            own.append(f"stages.{index - done}.{rest}={toml_value(value)}")
        for begin in starts:
            settings = {**begin.settings, **mine}
            head = begin.overrides
            if start:
                head = (*head, f"init.run={toml_value(str(out.resolve() / begin.path))}")
            trials.append(Trial(method=method.label, settings=settings, seed=begin.seed,
                                path=f"{method.label}/{_slug(settings)}/seed{begin.seed}", overrides=(*head, *own),
                                after=begin.path if start else None))
    return trials


def all_methods(pipeline: Path, plugins: PluginManager, grid: Mapping[str, Sequence[Any]], others: Sequence[str] = ()
                ) -> tuple[list[str], dict[str, Sequence[Any]], dict[str, str]]:
    """`--methods all`: every installed mitigation not in the pipeline that plans with its
    defaults (and its grid keys) here; the grid without the keys of those left out; and why
    each was left out. `others` are the sweep's other methods (chains), whose keys are theirs."""
    base = {stage.method for stage in load_pipeline(pipeline).stages}
    installed = [name for name in sorted(plugins.registry("mitigations")) if name not in base]
    kept, left_out = [], {}
    for name in installed:
        mine = {k: v for k, v in grid.items() if owner(k, [*installed, *others]) in (None, name)}
        try:
            plan_sweep(pipeline, Path("."), plugins, grid=mine, seeds=[0], methods=[name])
        except SpurcoreError as error:
            left_out[name] = str(error)
        else:
            kept.append(name)
    return kept, {k: v for k, v in grid.items() if owner(k, list(left_out)) is None}, left_out


def run_trial(spec: Mapping[str, Any], manager: PluginManager | None = None) -> dict[str, Any]:
    """Run (or continue) one trial in this process, with `manager` or one built from the
    sweep's `-p` arguments; a failure comes back as a record, so the sweep goes on.
    Module-level, so process pools and Ray can ship it to workers."""
    import traceback

    import torch

    from spurcore.api import run_pipeline

    torch.set_num_threads(int(spec["threads"]))  # fixed per trial: CPU results depend on it
    try:
        manager = manager or PluginManager.from_args(spec["plugin_args"])
        config = load_pipeline(spec["pipeline"], spec["overrides"])
        summary = run_pipeline(config, spec["out"], manager, resume="auto", quiet=True, log=lambda message: None)
    except Exception as error:  # noqa: BLE001 - recorded, and the sweep goes on
        return {"status": "failed", "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()}
    return _done(summary)


def _done(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The record of a finished run: its test numbers, so `sweep.json` alone gives a first look."""
    test = summary["metrics"]["test"]
    return {"status": "done", "test_wga": test.get("worst_group_acc"), "test_avg": test.get("avg_acc")}


def finished(sweep: Sweep, trial: Trial) -> dict[str, Any] | None:
    """The record of a trial whose run finished in an earlier launch (it has a `summary.json`),
    marked skipped and with the test numbers read back; None when it has not finished; a
    failed record naming the file when its `summary.json` cannot be read."""
    run = RunDir(sweep.out / trial.path)
    if not run.summary.exists():
        return None
    try:
        return {**_done(run.read_summary()), "skipped": True}
    except SpurcoreError as error:
        return {"status": "failed", "error": str(error)}


def write_origin(sweep: Sweep, trial: Trial) -> None:
    """The trial's `origin.json` (`RunDir.origin`), before it starts: what identifies it (its
    sweep, path, method, settings and seed), for experiment trackers, which need not install
    the sweep to read it."""
    folder = RunDir(sweep.out / trial.path)
    folder.path.mkdir(parents=True, exist_ok=True)
    atomic.write_json(folder.origin, {"launched_by": "spurcore-sweep", "sweep": str(sweep.out.resolve()),
                                      "trial": trial.path, "method": trial.method, "settings": trial.settings,
                                      "seed": trial.seed})


def read_manifest(out: Path) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{out}: no {MANIFEST}; is this a `spur sweep --out` directory?") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def write_manifest(sweep: Sweep, records: Mapping[str, dict[str, Any]]) -> None:
    """`sweep.json`: every trial of this and earlier launches into the same directory, in the
    order they were planned (not the order they finished, so two launches write the same file),
    with its record (done with its test numbers, also when skipped; failed with its error) and
    what it compared."""
    path = sweep.out / MANIFEST
    earlier = read_manifest(sweep.out)["trials"] if path.exists() else []
    trials = {t["path"]: t for t in earlier}
    for trial in sweep.trials:
        record = records.get(trial.path) or trials.get(trial.path, {}).get("record")
        trials[trial.path] = {**attrs.asdict(trial), "overrides": list(trial.overrides), "record": record}
    atomic.write_json(path, {"pipeline": str(sweep.pipeline), "trials": list(trials.values())})
