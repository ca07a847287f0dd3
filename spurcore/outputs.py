"""What a run leaves besides its checkpoints: `metrics.jsonl` (rewritten after every epoch,
one line per stage, epoch and split), and at the end the summary, `report.md` and the figures,
`summary.json` last: a run folder with `summary.json` holds a finished run."""

from __future__ import annotations

import json
from typing import Any

from spurcore import atomic
from spurcore.config import PipelineConfig
from spurcore.rundir import RunDir


class RunOutputs:
    """The record files of one run; `histories` holds every stage's epochs seen so far."""

    def __init__(self, out: RunDir) -> None:
        self.out = out
        self.histories: dict[str, list[dict[str, Any]]] = {}

    def write_metrics(self, key: str, history: list[dict[str, Any]]) -> None:
        """Stage `key`'s history as it stands, with every earlier stage's, to metrics.jsonl."""
        self.histories[key] = history
        lines = []
        for stage_key, entries in self.histories.items():
            for entry in entries:
                for split, metrics in entry["metrics"].items():
                    row = {"stage": stage_key, "epoch": entry["epoch"], "split": split,
                           "train_loss": entry["train_loss"], **metrics}
                    lines.append(json.dumps(row) + "\n")
        atomic.write_text(self.out.metrics, "".join(lines))

    def finish(self, results: list[dict[str, Any]], config: PipelineConfig, log: Any) -> dict[str, Any]:
        """Write the report, the figures and summary.json from the stages' results; return the summary."""
        from spurcore import report

        summary = summarize(results)
        atomic.write_text(self.out.report, report.markdown(summary, config))
        report.plot_group_acc(summary, self.out.figure)
        if not report.plot_group_acc_epochs(results, self.out.epochs_figure):
            log("no train evaluation with attribute labels: group_acc_epochs.png not written")
        atomic.write_json(self.out.summary, summary)  # last: a run with summary.json is complete
        return summary


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's summary: the last stage's metrics, the selection that stands, every stage."""
    final = results[-1]
    chosen = next((r for r in reversed(results) if r["selected"]["selector"] is not None), final)
    return {
        "metrics": {s: final["metrics"][s] for s in ("train", "val", "test") if s in final["metrics"]},
        "selected": {"selector": chosen["selected"]["selector"], "stage": chosen["name"], "epoch": chosen["selected"]["epoch"],
                     **({"variant": chosen["selected"]["variant"]} if "variant" in chosen["selected"] else {})},
        "stages": [
            {"name": r["name"], "method": r["method"], "kind": r["kind"], "selected": r["selected"],
             "metrics": r["metrics"], "train_eval": r.get("train_eval")}
            for r in results
        ],
    }
