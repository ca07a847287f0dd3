"""The standard selectors: the candidate with the best validation metric wins."""

from __future__ import annotations

from spurcore.hookspecs import hookimpl
from spurcore.specs import SelectorSpec


def _on_val(key: str):
    def score(candidate) -> float:
        return candidate.metrics["val"][key]

    score.__name__ = f"val_{key}"
    return score


@hookimpl
def spurcore_register_selectors():
    return [
        SelectorSpec(name="val-wga", score=_on_val("worst_group_acc"), metrics=["worst_group_acc"], needs_attributes=True,
                     description="validation worst-group accuracy"),
        SelectorSpec(name="val-worst-class", score=_on_val("worst_class_acc"), metrics=["worst_class_acc"],
                     description="validation worst-class accuracy"),
        SelectorSpec(name="val-avg", score=_on_val("avg_acc"), metrics=["avg_acc"],
                     description="validation average accuracy"),
    ]
