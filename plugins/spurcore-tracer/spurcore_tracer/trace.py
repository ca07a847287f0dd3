"""The whole trace of one finished run: score, select, intervene, measure, rewind, write.

`trace_run(run, options, out=...)` (or `trace(run_dir, ...)`, which opens the run first)
loads the model of one stage at one epoch, scores every
neuron by each criterion, and for every selection (criterion x group x scope x k) applies
every intervention and measures the change of every group's accuracy on train and test,
next to a control of as many random non-critical neurons. It then rewinds each layer to
earlier checkpoints and compares the two criteria's rankings. With `memorized` (a `spur
memorization` scores file) the top-memorized training examples are measured as one more row
after the groups, on train, and kept out of the minority/majority summary. Everything goes to
`trace.json` (written atomically) and the figures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from spurcore.api import SpurcoreError, atomic
from spurcore_tracer import criteria as crit
from spurcore_tracer.effects import Evaluator, minority_groups
from spurcore_tracer.marked import Marked, top_memorized
from spurcore_tracer.neurons import NeuronIndex
from spurcore_tracer.options import NAME, TraceOptions, TracerError
from spurcore_tracer.overlap import rank_overlap
from spurcore_tracer.plan import Executor, Outcome, Selection, execute, plan_interventions, plan_rewinds
from spurcore_tracer.rewinding import rewind_plan, sensitive_counts
from spurcore_tracer.selection import top_k

SCHEMA = 1


def open_traced(run_dir: Any, plugins: Any, device: str = "cpu") -> Any:
    """The finished run in `run_dir` (`spurcore.api.open_run`), or a TracerError saying why not."""
    from spurcore.api import open_run

    path = Path(run_dir)
    if not path.is_dir():
        raise TracerError(f"{path}: no such run directory")
    if not (path / "config.toml").exists():
        raise TracerError(f"{path}: not a run directory (no config.toml); pass the --out of a `spur run`")
    try:
        return open_run(path, plugins, device=device)
    except SpurcoreError as exc:
        raise TracerError(f"{path}: cannot read the run back: {exc}") from None


def _resolve(run: Any, options: TraceOptions) -> tuple[Any, int]:
    """The stage and epoch the options name, on a run whose training split has attribute labels."""
    try:
        stage = run.stage(options.stage)
        epoch = run.resolve_epoch(stage.index, options.epoch if options.epoch in ("last", "selected") else int(options.epoch))
    except SpurcoreError as exc:
        raise TracerError(f"{run.path}: cannot read the run back: {exc}") from None
    data = run.data
    if not data.splits["train"].has_attributes:
        raise TracerError(
            f"{run.path}: dataset {data.name!r} has no attribute labels on train; tracing measures each "
            f"group's training accuracy and the per-group gradient criterion reads D_j, so both need them")
    return stage, epoch


def _entries(names: list[str], minority: set[int], marked: Marked | None, splits) -> dict[str, list[tuple[str, bool, bool]]]:
    """Per split, the (name, minority, marked) of each entry of the evaluator's accuracies:
    the groups, then on train the marked examples when there are any."""
    groups = [(name, g in minority, False) for g, name in enumerate(names)]
    return {s: groups + ([(marked.label, False, True)] if marked is not None and s == "train" else []) for s in splits}


def _records(base: dict, change: dict, meta: dict, entries: dict[str, list[tuple[str, bool, bool]]]) -> list[dict]:
    out = []
    for split, values in change.items():
        for g, (name, minority, marked) in enumerate(entries[split]):
            if np.isnan(base[split][g]):
                continue
            out.append({**meta, "split": split, "group": name, "minority": minority, "marked": marked,
                        "acc_before": round(float(base[split][g]), 4),
                        "signed": round(float(values["signed"][g]), 4), "abs": round(float(values["abs"][g]), 4)})
    return out


def trace(run_dir: Any, options: TraceOptions | None = None, *, out: Any = None, plugins: Any = None,
          device: str = "cpu", progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Open the finished run in `run_dir` on `device` with `plugins` (default: every installed
    plugin) and trace it (`trace_run`); returns what trace.json holds."""
    from spurcore.api import PluginManager

    run = open_traced(run_dir, plugins if plugins is not None else PluginManager(), device)
    return trace_run(run, options, out=out, progress=progress, log=log)


def trace_run(run: Any, options: TraceOptions | None = None, *, out: Any = None, progress: bool = True,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trace a finished run (`spurcore.finished.FinishedRun`) into `out` (default:
    RUN_DIR/trace/memorization); returns what trace.json holds. Four steps: score the neurons,
    plan the evaluations (`spurcore_tracer.plan`), execute them, assemble and write the result."""
    options = options or TraceOptions()
    started = time.perf_counter()
    out = Path(out) if out is not None else run.out.trace_dir(NAME)
    atomic.check_writable(out)  # a read-only run: say so before tracing, not after
    planned, epoch = _resolve(run, options)
    data = run.data
    names = list(data.group_names)
    notes: list[str] = []
    torch.manual_seed(options.seed)
    marked = None if options.memorized is None else top_memorized(
        options.memorized, options.memorized_share, data.splits["train"].y, data.groups("train"), names)
    model = run.load_model(planned.index, epoch)
    index = NeuronIndex.of(model, options.exclude)
    if index.total == 0:
        raise TracerError(f"{run.path}: the model has no conv or linear layer to trace")
    evaluator = Evaluator(model, data, ("train", "test"), options.batch_size, options.max_cache_mb,
                          marked=None if marked is None else marked.mask,
                          layers=[layer.path for layer in index.layers], cache_dir=options.cache_dir)
    log(f"replay cache: {len(evaluator.replay.points)} points, "
        f"{evaluator.replay.bytes_per_example / 1024:.1f} KiB per example")
    if "test" not in evaluator.splits:
        notes.append("test split has no attribute labels: effects are reported on train only")
    minority = set(minority_groups(data, "train"))
    entries = _entries(names, minority, marked, evaluator.splits)

    scored = score(model, index, data, evaluator, options)
    jobs = plan_interventions(scored.selections, index, options, names, notes)
    rewind_epochs, rewind_notes = rewind_plan(epoch, list(planned.epochs), options.rewind_offsets)
    notes += rewind_notes
    past_states = {past: run.load_weights(planned.index, past) for _, past in rewind_epochs}
    outcome = execute(jobs, plan_rewinds(index, rewind_epochs), Executor(evaluator, index, options), past_states,
                      lambda change, meta: _records(evaluator.base, change, meta, entries), progress)

    result = assemble(run, options, planned.key, epoch, names, minority, marked, evaluator, index, scored, outcome,
                      rewind_epochs, entries, notes)
    evaluator.replay.close()
    out.mkdir(parents=True, exist_ok=True)
    if options.figures:
        from spurcore_tracer import figures

        result["figures"] = figures.draw_all(result, out)
    result["cost"]["seconds"] = round(time.perf_counter() - started, 1)
    atomic.write_text(out / "trace.json", json.dumps(result, indent=1) + "\n")
    for note in notes:
        log(f"note: {note}")
    return result


@attrs.frozen
class Scores:
    """Every criterion's scores: the rankings to select from, what trace.json says of them, and
    the magnitude and per-group gradient scores the rank overlap compares."""

    selections: list[Selection]
    described: dict[str, Any]
    magnitude: np.ndarray
    gradient: Any


def score(model: Any, index: NeuronIndex, data: Any, evaluator: Evaluator, options: TraceOptions) -> Scores:
    """Score every neuron by each criterion of `options` (per group for the gradient)."""
    names, train, groups = list(data.group_names), data.splits["train"], data.groups("train")
    kw = dict(include_bias=options.include_bias, reduction=options.reduction, batch_size=options.batch_size)
    magnitude = crit.magnitude(index, options.include_bias)
    selections: list[Selection] = []
    described: dict[str, Any] = {}
    gradient = None
    if "gradient" in options.criteria:
        gradient, used = crit.group_gradient_scores(
            model, train, groups, data.n_groups, index=index, subset=options.subset, n=options.subset_size,
            logits=evaluator.base_logits["train"], **kw)
        for j in range(data.n_groups):
            if j in used:
                selections.append(Selection("gradient", j, gradient[j]))
        described["gradient"] = {names[j]: {"examples": int(len(used[j]))} for j in used}
    if "magnitude" in options.criteria:
        selections.append(Selection("magnitude", None, magnitude))
    if "loss-gradient" in options.criteria:
        loss_scores, rows = crit.loss_gradient_scores(model, train, index=index, n=options.subset_size,
                                                      logits=evaluator.base_logits["train"], **kw)
        selections.append(Selection("loss-gradient", None, loss_scores))
        counts = np.bincount(groups[rows], minlength=data.n_groups)
        described["loss-gradient"] = {"examples": int(len(rows)), "examples_by_group": dict(zip(names, counts.tolist()))}
    max_k = max(options.k)
    if max_k > index.total:
        raise TracerError(f"--k {max_k}: the model has only {index.total} neurons")
    for sel in selections:
        described.setdefault("top", {})[sel.name] = [
            {"neuron": str(index.neuron(i)), "score": float(sel.scores[i])} for i in top_k(sel.scores, max_k)]
    return Scores(selections, described, magnitude, gradient)


def assemble(run: Any, options: TraceOptions, stage: str, epoch: int, names: list[str], minority: set[int],
             marked: Marked | None, evaluator: Evaluator, index: NeuronIndex, scored: Scores, outcome: Outcome,
             rewind_epochs: list[tuple[int, int]], entries: dict[str, list[tuple[str, bool, bool]]],
             notes: list[str]) -> dict[str, Any]:
    """What trace.json holds (its `cost.seconds` is set when it is written)."""
    sensitive = {
        split: {str(offset): dict(zip([entry[0] for entry in entries[split]],
                                      sensitive_counts(per_split[split], options.sensitive_threshold).tolist()))
                for offset, per_split in outcome.by_offset.items()}
        for split in evaluator.splits
    }
    overlap = None
    if scored.gradient is not None:
        overlap = rank_overlap(scored.magnitude, {names[s.group]: s.scores for s in scored.selections
                                                  if s.criterion == "gradient"}, options.overlap_percents)
    data = run.data
    return {
        "schema": SCHEMA,
        "run_dir": str(run.path),
        "device": str(run.device.device),
        "stage": stage,
        "epoch": epoch,
        "options": attrs.asdict(options),
        "dataset": data.name,
        "groups": names,
        "minority_groups": [names[g] for g in sorted(minority)],
        "marked": None if marked is None else {
            **marked.chosen, "base_accuracy": round(float(evaluator.base["train"][-1]), 4),
            "summary": summarize_marked(outcome.effects)},
        "group_counts": {s: dict(zip(names, evaluator.counts[s].tolist())) for s in evaluator.splits},
        "base_accuracy": {s: {n: (None if np.isnan(v) else round(float(v), 4)) for n, v in zip(names, evaluator.base[s])}
                          for s in evaluator.splits},
        "neurons": {"total": index.total, "layers": index.describe()},
        "scores": scored.described,
        "effects": outcome.effects,
        "summary": summarize(outcome.effects),
        "rewinding": {"plan": [{"offset": o, "past_epoch": p} for o, p in rewind_epochs],
                      "threshold": options.sensitive_threshold, "records": outcome.rewinding,
                      "sensitive_layers": sensitive},
        "rank_overlap": overlap,
        "notes": notes,
        "cost": {"evaluations": evaluator.evaluations, "full_forward_passes": evaluator.replay.full_passes,
                 "replay_points": [p for p, _ in evaluator.replay.points],
                 "replay_bytes_per_example": round(evaluator.replay.bytes_per_example, 1), "seconds": None},
    }


def trace_finished(run: Any, options: TraceOptions | None, out: Path, log: Callable[[str], None] | None) -> str:
    """`TracerSpec.trace` of the memorization tracer (what `spur trace` runs): the whole study
    into `out`, with a progress bar and notes unless `log` is None (`--quiet`); returns one line
    per global selection (mean |change| of minority and majority groups, and on train of the
    top-memorized examples when they are marked) and what was written."""
    result = trace_run(run, options, out=out, progress=log is not None, log=log or (lambda message: None))
    marked = result["marked"]
    marked_rows = {} if marked is None else {_key(row): row for row in marked["summary"]}
    lines = []
    for row in result["summary"]:
        if row["scope"] != "global":
            continue
        sigma = "" if row["sigma"] is None else f" sigma={row['sigma']}"
        line = (f"{row['criterion']:<14} {row['intervention']:<8}{sigma:<13} {row['split']:<5} "
                f"|change| minority {row['minority_abs']:6.2f}  majority {row['majority_abs']:6.2f}")
        if _key(row) in marked_rows:
            line += f"  {marked['label']} {marked_rows[_key(row)]['abs']:6.2f}"
        lines.append(line + " points")
    lines.append(f"wrote {Path(out) / 'trace.json'} and {', '.join(result.get('figures', []))} "
                 f"({result['cost']['evaluations']} evaluations, {result['cost']['seconds']} s)")
    return "\n".join(lines)


def _key(e: dict) -> tuple:
    return e["criterion"], e["intervention"], e["sigma"], e["scope"], e["split"]


def summarize(effects: list[dict]) -> list[dict]:
    """Mean absolute change of minority and of majority groups, per (criterion, intervention,
    sigma, scope, split), over k and groups. With the per-group gradient a group counts with the
    neurons selected for it (the paper's Delta(j) with I_j); other criteria select once for all.
    The marked examples are no group and count on neither side (`summarize_marked`)."""
    table: dict[tuple, dict[str, list[float]]] = {}
    for e in effects:
        if e["marked"] or (e["selected_for"] is not None and e["selected_for"] != e["group"]):
            continue
        key = _key(e)
        table.setdefault(key, {"minority": [], "majority": [], "minority_signed": [], "majority_signed": []})
        side = "minority" if e["minority"] else "majority"
        table[key][side].append(e["abs"])
        table[key][side + "_signed"].append(e["signed"])
    rows = []
    for (criterion, kind, sigma, scope, split), v in table.items():
        mean = lambda xs: round(float(np.mean(xs)), 3) if xs else None
        rows.append({"criterion": criterion, "intervention": kind, "sigma": sigma, "scope": scope, "split": split,
                     "minority_abs": mean(v["minority"]), "majority_abs": mean(v["majority"]),
                     "minority_signed": mean(v["minority_signed"]), "majority_signed": mean(v["majority_signed"])})
    return rows


def summarize_marked(effects: list[dict]) -> list[dict]:
    """Mean absolute and signed change of the marked examples per (criterion, intervention,
    sigma, scope, split), over k (and layers); with the per-group gradient, over every group's
    selection too, since the marked examples have no selection of their own."""
    table: dict[tuple, list[tuple[float, float]]] = {}
    for e in effects:
        if e["marked"]:
            table.setdefault(_key(e), []).append((e["abs"], e["signed"]))
    return [{"criterion": criterion, "intervention": kind, "sigma": sigma, "scope": scope, "split": split,
             "abs": round(float(np.mean([a for a, _ in v])), 3), "signed": round(float(np.mean([s for _, s in v])), 3)}
            for (criterion, kind, sigma, scope, split), v in table.items()]
