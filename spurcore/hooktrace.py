"""`SPURCORE_TRACE_HOOKS=1`: every hook call printed as it happens, with its arguments in one
word each and the plugins that answer it, to see what a run asks of its plugins and in what order."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

ENV = "SPURCORE_TRACE_HOOKS"


def short(value: Any) -> str:
    """A one-word picture of a hook argument: stages by key, tensors by shape, runs by folder."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)
    for attr, show in (("key", str), ("shape", lambda s: "x".join(map(str, s)) or "scalar"), ("out", lambda o: str(o.path))):
        if hasattr(value, attr) and not callable(getattr(value, attr)):
            try:
                return f"{type(value).__name__}({show(getattr(value, attr))})"
            except (AttributeError, TypeError):
                pass
    if hasattr(value, "__len__") and not isinstance(value, type):
        return f"{type(value).__name__}[{len(value)}]"
    return type(value).__name__


def print_call(hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """`SPURCORE_TRACE_HOOKS=1`: one stderr line per hook call, with its arguments and the
    plugins that implement it in the order they run (a first-result hook stops at the first
    answer)."""
    args = ", ".join(f"{k}={short(v)}" for k, v in kwargs.items())
    order = ", ".join(impl.plugin_name for impl in reversed(impls))
    sys.stderr.write(f"[spurcore] {hook_name}({args}) -> [{order}]\n")
