"""Names that import their module on first use, so that gathering the registry (and `spur
--help`) imports no torch: `lazy`, a callable named by "module:attr" for registration records,
and `lazy_exports`, a module's PEP 562 `__getattr__` and `__dir__` from a name -> "module:attr"
table."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

import attrs


def resolve(target: str) -> Any:
    """What "package.module:attr" names (the module itself for "package.module"), imported now."""
    module, _, attr = target.partition(":")
    found = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        found = getattr(found, part)
    return found


@attrs.frozen
class Lazy:
    """A function or class named by "module:attr", imported on the first call; `keywords` are
    passed on every call, as `functools.partial` would. `resolve()` is the object itself (the
    kernel reads a mitigation's stage hooks off its class without building it)."""

    target: str
    keywords: tuple[tuple[str, Any], ...] = ()

    def resolve(self) -> Any:
        return resolve(self.target)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **dict(self.keywords), **kwargs)


def lazy(target: str, **keywords: Any) -> Lazy:
    """`lazy("my_plugin.method:MyMethod")`: a registration record's factory (or build, compute,
    score) that imports its module only when the record is used."""
    if ":" not in target:
        raise ValueError(f"lazy({target!r}): name the object as \"package.module:attr\"")
    return Lazy(target, tuple(keywords.items()))


class _KeepsExports(types.ModuleType):
    """A module with lazy exports: importing a submodule named like one of them (`pkg.trace`
    next to the function `trace`) does not replace the export, as an eager
    `from pkg.trace import trace` in `pkg/__init__.py` would have rebound it."""

    def __setattr__(self, name: str, value: Any) -> None:
        target = self.__dict__.get("__lazy_exports__", {}).get(name)
        if (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
                and target is not None and target != value.__name__):
            return
        super().__setattr__(name, value)


def lazy_exports(module_name: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """PEP 562 `__getattr__` and `__dir__` for the module `module_name`, whose names in `table`
    (name -> "module:attr") are imported when first read, then kept:

        __getattr__, __dir__ = lazy_exports(__name__, {"NeuronIndex": "my_plugin.neurons:NeuronIndex"})
    """
    module = sys.modules[module_name]
    targets = dict(table)
    module.__lazy_exports__ = targets
    module.__class__ = _KeepsExports

    def __getattr__(name: str) -> Any:
        if name not in targets:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = resolve(targets[name])
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(targets))

    return __getattr__, __dir__
