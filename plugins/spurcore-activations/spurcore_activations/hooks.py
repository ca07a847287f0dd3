"""Forward hooks on named modules, each owned by a recorder that removes it, even on error.

Modules are named by their `model.named_modules()` paths (`"embed"`, `"embed.block2"`,
`"embed.block2.0"`). A recorder keeps only the reduced output of the latest forward pass
of each module, so its memory does not grow with the data.

    with ModuleRecorder(model, ["embed.block2", "embed"], reduce="mean") as rec:
        logits = model(x)
        rows = rec.take()          # {"embed.block2": tensor (N, 64), "embed": tensor (N, 128)}
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import nn

from spurcore.api import SpurcoreError

from spurcore_activations.reduce import Reduce, reduce_output


class ActivationError(SpurcoreError):
    """Activation logging cannot proceed as asked; the message says why."""


def resolve_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The modules called `names` in `model.named_modules()`; an unknown name is an error that
    lists the closest names."""
    available = dict(model.named_modules())
    found = {}
    for name in names:
        if name in available and name != "":
            found[name] = available[name]
            continue
        choices = [n for n in available if n]
        close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
        prefix = [n for n in choices if n.startswith(name.rsplit(".", 1)[0])] if "." in name else []
        hint = close or prefix[:8] or choices[:8]
        raise ActivationError(
            f"module {name!r} not found in the model; closest names: {', '.join(hint)} "
            f"(every name comes from model.named_modules())"
        )
    return found


class ModuleRecorder:
    """Owns one forward hook per named module; `detach()` (or leaving the `with` block)
    removes them all, whatever happened in between."""

    def __init__(self, model: nn.Module, names: Sequence[str], reduce: Reduce = "mean") -> None:
        if not names:
            raise ActivationError("no modules to record")
        if len(set(names)) != len(names):
            raise ActivationError(f"modules listed twice: {sorted(n for n in set(names) if list(names).count(n) > 1)}")
        self.model = model
        self.names = list(names)
        self.reduce = reduce
        self.modules = resolve_modules(model, self.names)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._latest: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> ModuleRecorder:
        if self._handles:
            return self
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self._latest.clear()
        self._calls.clear()

    def __enter__(self) -> ModuleRecorder:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: object, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                raise ActivationError(
                    f"module {name!r} returned {type(output).__name__}, not a tensor; "
                    f"record one of its submodules instead"
                )
            self.shapes[name] = tuple(output.shape[1:])
            self._latest[name] = reduce_output(output, self.reduce)
            self._calls[name] = self._calls.get(name, 0) + 1

        return record

    def take(self) -> dict[str, torch.Tensor]:
        """The reduced outputs of the forward pass since the last `take()`, by module, and
        forget them. Every module must have run exactly once."""
        missing = [n for n in self.names if n not in self._latest]
        twice = [n for n, c in self._calls.items() if c > 1]
        if missing or twice:
            self._latest.clear()
            self._calls.clear()
            if missing:
                raise ActivationError(f"modules {missing} did not run in this forward pass")
            raise ActivationError(f"modules {twice} ran more than once in one forward pass; record one call site")
        out = {n: self._latest[n] for n in self.names}
        self._latest.clear()
        self._calls.clear()
        return out
