"""The trace's evaluation plan, as data: every selection's interventions and random controls,
and every layer's rewinding, each with the evaluations it needs; run by `Executor`, which
evaluates each distinct intervention once (a selection's top-k of one criterion often equals
another's)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from tqdm.auto import tqdm

from spurcore_tracer.effects import Evaluator, summarize_changes
from spurcore_tracer.interventions import intervene
from spurcore_tracer.neurons import NeuronIndex, NeuronLayer
from spurcore_tracer.options import TraceOptions
from spurcore_tracer.rewinding import layer_state, rewound
from spurcore_tracer.selection import non_critical, top_k, top_k_per_layer


def stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


@attrs.frozen
class Selection:
    """One ranking to select from: a criterion, and the group its scores were computed on."""

    criterion: str
    group: int | None
    scores: np.ndarray = attrs.field(eq=False)

    @property
    def name(self) -> str:
        return self.criterion if self.group is None else f"{self.criterion}:{self.group}"


@attrs.frozen
class Change:
    """One intervention to evaluate: these neurons (as a set; `order` is how they were
    selected, which a random perturbation draws in), changed this way (zero: sigma None,
    repeat 0)."""

    neurons: tuple[int, ...]
    kind: str
    sigma: float | None
    repeat: int
    order: tuple[int, ...] = attrs.field(eq=False)

    @classmethod
    def of(cls, neurons: np.ndarray, kind: str, sigma: float | None, repeat: int) -> Change:
        zero, order = kind == "zero", tuple(int(n) for n in neurons)
        return cls(tuple(sorted(order)), kind, None if zero else (sigma or 0.0), 0 if zero else repeat, order)


@attrs.frozen
class Job:
    """A row of trace.json's effects: what it records (`meta`) and the changes it averages."""

    meta: dict[str, Any] = attrs.field(eq=False)
    changes: tuple[Change, ...]


@attrs.frozen
class Rewind:
    """A layer put back to its weights of an earlier epoch."""

    meta: dict[str, Any] = attrs.field(eq=False)
    layer: NeuronLayer = attrs.field(eq=False)
    past: int


def plan_interventions(selections: Sequence[Selection], index: NeuronIndex, options: TraceOptions,
                       names: Sequence[str], notes: list[str]) -> list[Job]:
    """Per selection: its top k neurons under every intervention, a control of as many random
    non-critical neurons, and its top k per layer zeroed. A control that cannot be drawn is noted."""
    jobs = []

    def changed(meta: dict, neurons: np.ndarray, kind: str, sigma: float | None) -> Job:
        repeats = 1 if kind == "zero" else options.repeats
        return Job({**meta, "intervention": kind, "sigma": sigma, "repeats": repeats,
                    "neurons": [str(index.neuron(i)) for i in neurons]},
                   tuple(Change.of(neurons, kind, sigma, r) for r in range(repeats)))

    for sel in selections:
        selected_for = None if sel.group is None else names[sel.group]
        for k in options.k:
            meta = {"criterion": sel.criterion, "selected_for": selected_for, "scope": "global", "layer": None,
                    "k": k, "k_effective": k}
            neurons = top_k(sel.scores, k)
            for kind in options.interventions:
                for sigma in ([None] if kind == "zero" else options.sigma):
                    jobs.append(changed(meta, neurons, kind, sigma))
            if options.control:
                pool = non_critical(sel.scores, options.control_exclude_percent)
                if len(pool) < k:
                    notes.append(f"control for {sel.name} k={k} skipped: only {len(pool)} non-critical neurons")
                    continue
                draws = [np.random.default_rng(stable_seed(options.seed, "control", sel.name, "global", None, k, r))
                         for r in range(options.repeats)]
                jobs.append(Job({**meta, "intervention": "control", "sigma": None, "repeats": options.repeats,
                                 "neurons": None},
                                tuple(Change.of(np.sort(rng.choice(pool, size=k, replace=False)), "zero", None, 0)
                                      for rng in draws)))
        for k in options.per_layer_k:
            for path, neurons in top_k_per_layer(sel.scores, index, k).items():
                meta = {"criterion": sel.criterion, "selected_for": selected_for, "scope": "per-layer", "layer": path,
                        "k": k, "k_effective": int(len(neurons))}
                jobs.append(changed(meta, neurons, "zero", None))
    return jobs


def plan_rewinds(index: NeuronIndex, plan: Sequence[tuple[int, int]]) -> list[Rewind]:
    """Every layer at every (offset, past epoch) of the rewinding plan."""
    return [Rewind({"layer": layer.path, "offset": offset, "past_epoch": past}, layer, past)
            for offset, past in plan for layer in index.layers]


class Executor:
    """Evaluates changes and rewinds against the unchanged model, each distinct change once."""

    def __init__(self, evaluator: Evaluator, index: NeuronIndex, options: TraceOptions) -> None:
        self.evaluator, self.index, self.options = evaluator, index, options
        self.cache: dict[Change, dict[str, np.ndarray]] = {}

    def change(self, change: Change) -> dict[str, np.ndarray]:
        if change not in self.cache:
            key = (change.neurons, change.kind, change.sigma, change.repeat)
            generator = torch.Generator().manual_seed(stable_seed(self.options.seed, *key))
            neurons = np.asarray(change.order, dtype=np.int64)
            layers = [layer.path for layer in self.index.group_by_layer(neurons)]
            with intervene(self.index, neurons, change.kind, sigma=change.sigma or 0.0, generator=generator,
                           include_bias=self.options.include_bias):
                self.cache[change] = self.evaluator.change(self.evaluator.accuracy(layers))
        return self.cache[change]

    def rewind(self, rewind: Rewind, state: dict[str, Any]) -> dict[str, np.ndarray]:
        with rewound(rewind.layer, layer_state(state, rewind.layer)):
            return self.evaluator.change(self.evaluator.accuracy([rewind.layer.path]))


@attrs.frozen
class Outcome:
    """What running the plan found: the effect records, the rewinding records, and each
    rewinding's change per (offset, split, layer)."""

    effects: list[dict]
    rewinding: list[dict]
    by_offset: dict[int, dict[str, dict[str, np.ndarray]]]


def execute(jobs: Sequence[Job], rewinds: Sequence[Rewind], executor: Executor, past_states: dict[int, Any],
            records: Callable[[dict, dict], list[dict]], progress: bool) -> Outcome:
    """Run every job and rewind with a progress bar; `records(change, meta)` turns a summarized
    change into trace.json's rows."""
    bar = tqdm(total=sum(len(job.changes) for job in jobs) + len(rewinds), desc="trace", unit="eval",
               disable=not progress, dynamic_ncols=True)
    effects: list[dict] = []
    rewinding: list[dict] = []
    by_offset: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    try:
        for job in jobs:
            changes = []
            for change in job.changes:
                changes.append(executor.change(change))
                bar.update(1)
            effects += records(summarize_changes(changes), job.meta)
        for rewind in rewinds:
            change = executor.rewind(rewind, past_states[rewind.past])
            bar.update(1)
            rewinding += records(summarize_changes([change]), rewind.meta)
            for split, values in change.items():
                by_offset.setdefault(rewind.meta["offset"], {}).setdefault(split, {})[rewind.layer.path] = values
    finally:
        bar.close()
    return Outcome(effects, rewinding, by_offset)
