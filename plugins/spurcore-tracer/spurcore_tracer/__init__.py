"""spurcore-tracer: find the neurons and layers where a trained network memorizes its minority
groups (METHODS.md section 1; "The Silent Majority", Stage I).

    spur trace RUN_DIR [--criterion gradient,magnitude] [--k 1,2,3] [--out DIR]

The pieces are usable on their own: `NeuronIndex.of(model)` (what a neuron is),
`score_neurons(model, batches, criterion)` (scores by global index), `top_k` /
`top_k_per_layer` / `top_percent` (selection), `intervene(...)` (zero / init / noise, undone
bitwise), `trace(run_dir, options)` (the whole study, writing trace.json and figures).
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.specs import TracerSpec
from spurcore_tracer.criteria import (
    gradient_norms,
    group_gradient_scores,
    loss_gradient_scores,
    magnitude,
    score_neurons,
)
from spurcore_tracer.interventions import intervene
from spurcore_tracer.neurons import Neuron, NeuronIndex
from spurcore_tracer.selection import ranking, top_k, top_k_per_layer, top_percent
from spurcore_tracer.trace import TraceOptions, TracerError, trace

__all__ = [
    "Neuron", "NeuronIndex", "TraceOptions", "TracerError", "gradient_norms", "group_gradient_scores",
    "intervene", "loss_gradient_scores", "magnitude", "ranking", "score_neurons", "top_k", "top_k_per_layer",
    "top_percent", "trace",
]


def _trace_spec(run_dir, options, plugins):
    """TracerSpec.trace: the whole study with the caller's plugins, written to RUN_DIR/trace."""
    return trace(run_dir, options, plugins=plugins)


@hookimpl
def spurcore_register_tracers():
    return [TracerSpec(name="memorization", trace=_trace_spec, options=TraceOptions,
                       description="neurons and layers whose change moves minority-group accuracy (Silent Majority, Stage I)")]


@hookimpl
def spurcore_register_commands(cli):
    from spurcore_tracer.cli import add_command

    add_command(cli)
