"""spurcore-tracer: find the neurons and layers where a trained network memorizes its minority
groups ("The Silent Majority", Stage I; docs/methods/tracer.md).

    spur trace RUN_DIR [--criterion gradient,magnitude] [--k 1,2,3] [--out DIR]   # --tracer memorization

The pieces are usable on their own: `NeuronIndex.of(model)` (what a neuron is),
`score_neurons(model, batches, criterion)` (scores by global index), `top_k` /
`top_k_per_layer` / `top_percent` (selection), `intervene(...)` (zero / init / noise, undone
bitwise), `trace(run_dir, options)` / `trace_run(run, options)` (the whole study of a run
directory or of an opened run, writing trace.json and figures). The plugin owns the kind
"tracers": another plugin adds a tracer to `spur trace` by returning `TracerSpec`s from
`spurcore_register_tracers` (`spurcore_tracer.kind`).
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import lazy, lazy_exports
from spurcore_tracer.kind import TRACERS, TracerSpec
from spurcore_tracer.options import NAME, TraceOptions, TracerError

__all__ = [
    "Neuron", "NeuronIndex", "TraceOptions", "TracerError", "TracerSpec", "gradient_norms", "group_gradient_scores",
    "intervene", "loss_gradient_scores", "lowest_confidence", "magnitude", "ranking", "score_neurons",
    "split_logits", "top_k", "top_k_per_layer", "top_percent", "trace", "trace_run",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    **{name: f"spurcore_tracer.criteria:{name}" for name in (
        "gradient_norms", "group_gradient_scores", "loss_gradient_scores", "lowest_confidence", "magnitude",
        "score_neurons", "split_logits")},
    "intervene": "spurcore_tracer.interventions:intervene",
    "Neuron": "spurcore_tracer.neurons:Neuron",
    "NeuronIndex": "spurcore_tracer.neurons:NeuronIndex",
    **{name: f"spurcore_tracer.selection:{name}" for name in ("ranking", "top_k", "top_k_per_layer", "top_percent")},
    "trace": "spurcore_tracer.trace:trace",
    "trace_run": "spurcore_tracer.trace:trace_run",
})


@hookimpl
def spurcore_register_kinds():
    return [TRACERS]


@hookimpl
def spurcore_register_tracers():
    return [TracerSpec(name=NAME, trace=lazy("spurcore_tracer.trace:trace_finished"), options=TraceOptions,
                       description="neurons and layers whose change moves minority-group accuracy (Silent Majority, Stage I)")]


@hookimpl
def spurcore_register_commands(cli):
    from spurcore_tracer.cli import trace_cmd

    cli.add_command(trace_cmd)
