"""The K models of `spur memorization`: planned as trials of the sweep machinery (so a process
pool or Ray runs them, and a relaunch skips the finished ones), then read back as predictions.

Every model runs `pipeline.toml` in the output folder: the user's pipeline cut to its first
training stage, with `[dataset] train_subset` set, the chosen epochs, no per-epoch evaluation
of the training split (the scores read the whole split once, at the end) and only the selected
checkpoint kept. Model k of procedure seed s runs with pipeline seed `s * 1000 + k`, which
draws its subset (`train_subset_positions`), its initialization and its data order.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from spurcore.api import (ConfigError, PluginManager, SpuriousData, SpurcoreError, atomic, content_digest, load_pipeline,
                          open_run, pipeline_from_dict, plan, predict, to_dict, toml_dumps, train_subset_positions)
from spurcore_memorization.options import SETTINGS_KEY
from spurcore_sweep import Sweep, Trial, write_manifest

MAX_MODELS = 1000  # model seeds are seed * MAX_MODELS + k
PIPELINE = "pipeline.toml"
SETTINGS = "memorization.json"


class MemorizationError(SpurcoreError):
    pass


@attrs.frozen(kw_only=True)
class Settings:
    """What a launch asks for; `epochs` None keeps the pipeline's own; `final_epoch` scores
    every model's last epoch (selector `last-epoch`) instead of the one the pipeline selects."""

    models: int
    subset: float
    epochs: int | None
    seeds: tuple[int, ...]
    final_epoch: bool = False

    def __attrs_post_init__(self) -> None:
        if not 2 <= self.models <= MAX_MODELS:
            raise ConfigError(f"--models {self.models}: must be between 2 and {MAX_MODELS}")
        if not 0 < self.subset < 1:
            raise ConfigError(f"--subset {self.subset}: must be in (0, 1): every model leaves some examples out")
        if not self.seeds:
            raise ConfigError("--seeds: name at least one seed")


def model_seed(seed: int, k: int) -> int:
    return seed * MAX_MODELS + k


def model_path(seed: int, k: int) -> str:
    return f"seed{seed}/model{k:03d}"


def first_stage(pipeline: Path, plugins: PluginManager, epochs: int | None) -> tuple[dict[str, Any], Any]:
    """The pipeline cut to its first training stage, as plain data (`epochs` set unless None,
    only the selected checkpoint kept), and the user's pipeline planned."""
    config = load_pipeline(pipeline)
    planned = plan(config, plugins)
    first = next((stage for stage in planned.stages if stage.spec.kind == "train"), None)
    if first is None:
        raise MemorizationError(f"{pipeline}: no training stage; spur memorization trains the first one")
    if config.dataset.holdout or config.dataset.train_subset != 1:
        raise MemorizationError(f"{pipeline}: dataset.holdout and dataset.train_subset must be left at 0 and 1: "
                                f"spur memorization chooses which training examples each model sees")
    data = {k: v for k, v in to_dict(config).items() if v is not None}
    stage = to_dict(first.config)
    stage["train"] = {**stage["train"], "keep_checkpoints": "selected",
                      **({"epochs": epochs} if epochs is not None else {})}
    data["stages"] = [stage]
    return data, planned


def checked(data: dict[str, Any], plugins: PluginManager) -> dict[str, Any]:
    """`data` validated as a pipeline against the installed plugins, defaults filled in."""
    config = pipeline_from_dict(data)
    plan(config, plugins)
    return {k: v for k, v in to_dict(config).items() if v is not None}


def resolve_pipeline(pipeline: Path, plugins: PluginManager, settings: Settings) -> dict[str, Any]:
    """The pipeline every model runs, as plain data, checked against the installed plugins."""
    data, planned = first_stage(pipeline, plugins, settings.epochs)
    selector = plugins.get("selectors", "last-epoch") if settings.final_epoch else planned.selector
    if "train" not in selector.splits:  # the scores evaluate the whole training split once, at the end
        data["stages"][0]["train"]["train_eval"] = "none"
    if settings.final_epoch:
        data["selector"] = "last-epoch"
    data["dataset"]["train_subset"] = settings.subset
    data["settings"] = {k: v for k, v in (data.get("settings") or {}).items() if k != SETTINGS_KEY}  # one-run only
    return checked(data, plugins)


def first_difference(saved: Any, new: Any, key: str = "") -> str | None:
    """The first key (dotted) at which two plain-data trees differ, or None."""
    if isinstance(saved, dict) and isinstance(new, dict):
        for name in sorted(set(saved) | set(new)):
            found = first_difference(saved.get(name), new.get(name), f"{key}.{name}" if key else name)
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(new, list) and len(saved) == len(new):
        return next((d for i, (s, n) in enumerate(zip(saved, new)) if (d := first_difference(s, n, f"{key}.{i}"))), None)
    return None if saved == new else key or "(the whole pipeline)"


def prepare(out: Path, pipeline: Path, plugins: PluginManager, settings: Settings, *,
            plugin_args: Sequence[str] = (), threads: int = 1) -> Sweep:
    """The sweep of every model of every seed (`save_launch`)."""
    resolved = resolve_pipeline(pipeline, plugins, settings)
    epochs = resolved["stages"][0]["train"].get("epochs", resolved["train"]["epochs"])
    record = {"pipeline": str(pipeline), "models": settings.models, "subset": settings.subset, "epochs": epochs,
              "selector": resolved["selector"], "seeds": list(settings.seeds), "model_seed": f"seed * {MAX_MODELS} + k"}
    trials = tuple(Trial(method="memorization", settings={"model": k}, seed=model_seed(s, k), path=model_path(s, k),
                         overrides=(f"seed={model_seed(s, k)}",))
                   for s in settings.seeds for k in range(settings.models))
    return save_launch(out, resolved, record, trials, plugin_args=plugin_args, threads=threads)


def save_launch(out: Path, resolved: dict[str, Any], record: dict[str, Any], trials: tuple[Trial, ...], *,
                plugin_args: Sequence[str] = (), threads: int = 1) -> Sweep:
    """The sweep of `trials`, each running the `resolved` pipeline, after saving (or, on a
    relaunch, checking) it in `out` with the settings `record`."""
    saved_path = out / PIPELINE
    if saved_path.exists():
        import tomllib

        saved = tomllib.loads(saved_path.read_text())
        differs = first_difference(saved, resolved)
        if differs:
            raise MemorizationError(f"{out}: its models ran another pipeline ({saved_path}, key {differs} differs); "
                                    f"use a new --out, or the same pipeline, estimators and settings")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(saved_path, toml_dumps(resolved))
    atomic.write_json(out / SETTINGS, record)
    sweep = Sweep(pipeline=saved_path.resolve(), out=out.resolve(), trials=trials, plugin_args=tuple(plugin_args),
                  threads=threads)
    write_manifest(sweep, {})
    return sweep


def launch(sweep: Sweep, plugins: PluginManager, *, launcher: str, jobs: int, threads: int, address: str | None,
           launcher_option: tuple[str, ...], out: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    """Run (or, on a relaunch, skip or continue) every trial of `sweep` through `launcher`,
    echoing one line per trial; returns the failed trials' paths and what the launch cost
    (`cost`: its wall seconds, jobs, threads, and how many trials it ran and found finished)."""
    from spurcore_sweep import execute, start_launcher

    records: dict[str, dict[str, Any]] = {}
    total = len(sweep.trials)

    def heard(trial, record) -> None:
        records[trial.path] = record
        write_manifest(sweep, records)
        state = "finished earlier" if record.get("skipped") else record["status"]
        extra = f": {record['error']}" if "error" in record else ""
        echo(f"[{len(records)}/{total}] {trial.path}: {state}{extra}")

    started = time.perf_counter()
    execute(sweep, start_launcher(plugins, launcher, jobs=jobs, threads=threads, address=address,
                                  options=launcher_option, out=out), heard)
    skipped = sum(bool(r.get("skipped")) for r in records.values())
    return {"failed": [path for path, record in records.items() if record["status"] != "done"],
            "cost": {"wall_seconds": round(time.perf_counter() - started, 1), "jobs": jobs, "threads": threads,
                     "trials_run": len(records) - skipped, "trials_finished_earlier": skipped}}


def full_data(out: Path, plugins: PluginManager) -> SpuriousData:
    """The dataset with its whole training split: what every model is scored on."""
    planned = plan(load_pipeline(out / PIPELINE, ["dataset.train_subset=1.0"]), plugins)
    return plugins.get("datasets", planned.config.dataset.name).build(planned.dataset_options)


PREDICTIONS = "predictions"
SAVED = ("trained", "epoch", "train", "test", "key")  # the arrays of a predictions file


def derived_from(out: Path, seed: int, k: int, content: str) -> str:
    """What model k's predictions derive from, as the key their file is kept under: the data
    (`content_digest`) and the model's run (its checkpoints and stage results: path, size and
    modification time), so a retrained model or changed data is predicted again."""
    run = out / model_path(seed, k)
    digest = hashlib.sha256(content.encode())
    for path in sorted([*run.glob("checkpoints/*/epoch_*.pt"), *run.glob("checkpoints/*/result.json")]):
        stat = path.stat()
        digest.update(f"{path.relative_to(run)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def saved_problem(path: Path, data: SpuriousData, key: str) -> tuple[dict[str, np.ndarray] | None, str]:
    """The predictions saved in `path` when they are whole and were made under `key`, else
    (None, why not): unreadable, an object or text array, a length that is not the split's, a
    class out of range, another key."""
    n, n_test, classes = len(data.splits["train"]), len(data.splits["test"]), data.n_classes
    saved, name = {}, ""
    try:
        with np.load(path) as handle:  # allow_pickle=False: an object array is refused, not unpickled
            for name in SAVED:
                if name not in handle.files:
                    return None, f"no array {name!r}"
                saved[name] = handle[name]
    except ValueError as exc:
        if name and "allow_pickle" in str(exc):
            return None, f"{name!r} is an array of Python objects (never unpickled)"
        return None, f"unreadable (ValueError: {exc})"
    except Exception as exc:  # noqa: BLE001 - whatever numpy and zipfile make of a damaged file
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    if str(saved["key"]) != key:
        return None, "made from another model or other data"
    for name, size in (("train", n), ("test", n_test), ("trained", None)):
        values = saved[name]
        if values.dtype.kind not in "iu" or values.ndim != 1 or (size is not None and len(values) != size):
            return None, f"{name!r} is {values.dtype} of shape {values.shape}, not {size or 'some'} integers"
    if saved["epoch"].dtype.kind not in "iu" or saved["epoch"].ndim != 0:
        return None, f"'epoch' is {saved['epoch'].dtype} of shape {saved['epoch'].shape}, not one integer"
    if any(((saved[split] < 0) | (saved[split] >= classes)).any() for split in ("train", "test")):
        return None, f"predicted classes outside 0..{classes - 1}"
    if ((saved["trained"] < 0) | (saved["trained"] >= n)).any() or (np.diff(saved["trained"]) <= 0).any():
        return None, f"'trained' is not increasing positions in 0..{n - 1}"
    return saved, ""


def predictions(out: Path, seed: int, k: int, data: SpuriousData, plugins: PluginManager, content: str | None = None,
                note: Callable[[str], None] = lambda message: None) -> dict[str, np.ndarray]:
    """Model k's predicted classes on the whole training split and on test, and the training
    positions it trained on; read from `seedS/predictions/modelK.npz` when a launch wrote it
    from the same model and data (`derived_from`; `content`: the data's `content_digest`) and
    the file is whole (`saved_problem`), else predicted again, with a `note` naming a file that
    was there and why it was not used."""
    path = out / f"seed{seed}" / PREDICTIONS / f"model{k:03d}.npz"
    key = derived_from(out, seed, k, content_digest(data) if content is None else content)
    if path.exists():
        saved, problem = saved_problem(path, data, key)
        if saved is not None:
            return {name: saved[name] for name in SAVED if name != "key"}
        note(f"{path}: not used ({problem}); predicting again with {out / model_path(seed, k)}")
    run = open_run(out / model_path(seed, k), plugins, device=saved_device(out))
    n = len(data.splits["train"])
    trained = train_subset_positions(n, float(run.config.dataset.train_subset), run.config.seed)
    if not np.array_equal(run.data.splits["train"].y, data.splits["train"].y[trained]):
        raise MemorizationError(f"{run.path}: its training split is not the subset its seed draws; was it trained "
                                f"by another version of spurcore?")
    model = run.load_model(0, "selected")
    found = {"trained": trained, "epoch": np.array(run.stage(0).selected)}
    for split in ("train", "test"):
        found[split] = predict(model, data.splits[split], run.device).argmax(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_open(path, "wb") as handle:
        np.savez(handle, **found, key=np.array(key))
    return found


def saved_device(out: Path) -> str:
    """The device of the pipeline saved in `out`, which predictions run on too."""
    import tomllib

    return tomllib.loads((out / PIPELINE).read_text()).get("device", "cpu")


def collect(out: Path, seed: int, models: int, data: SpuriousData, plugins: PluginManager,
            progress: Callable[[Any], Any] = lambda it: it,
            note: Callable[[str], None] = lambda message: None) -> dict[str, np.ndarray]:
    """Every model's predictions for one seed, stacked: `correct_train`, `trained` (models x
    training examples, boolean), `correct_test` (models x test examples), `epochs`."""
    n = len(data.splits["train"])
    content = content_digest(data)
    rows = [predictions(out, seed, k, data, plugins, content, note) for k in progress(range(models))]
    trained = np.zeros((models, n), dtype=bool)
    for k, row in enumerate(rows):
        trained[k, row["trained"]] = True
    return {"correct_train": np.stack([r["train"] == data.splits["train"].y for r in rows]), "trained": trained,
            "correct_test": np.stack([r["test"] == data.splits["test"].y for r in rows]),
            "epochs": np.array([int(r["epoch"]) for r in rows])}


def read_settings(out: Path) -> dict[str, Any]:
    return json.loads((out / SETTINGS).read_text())
