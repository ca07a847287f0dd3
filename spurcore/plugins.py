"""The plugin manager: discovery, allow- and block-lists, validation, and the registry.

Plugins are found through the `spurcore` entry-point group; the built-ins are registered the
same way, through the same hooks. A plugin that fails to import (or exits while importing), or
whose registration hook raises, is reported by name and skipped; it becomes an error only when
a pipeline needs it. So does a name two plugins register: the error names the kind, the name and
both plugins, and every other name works. A function named `spurcore_*`
that matches no hook is rejected, naming the plugin and the closest hook; a plugin may add hooks
of its own with a new kind of registration (`KindSpec`), so plugins loaded at start-up are
checked once all of them have loaded.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import pluggy

from spurcore import hooktrace, hookspecs
from spurcore.config import structure
from spurcore.errors import ConfigError, SpurcoreError
from spurcore.lazy import Lazy
from spurcore.specs import SPEC_TYPES, KindSpec

ENTRY_POINT_GROUP = "spurcore"
ALLOW_ENV = "SPURCORE_PLUGINS"
BUILTIN_MODULES = (
    "spurcore.builtins.erm",
    "spurcore.builtins.metrics",
    "spurcore.builtins.selectors",
    "spurcore.builtins.backbones",
    "spurcore.builtins.waterdigits",
    "spurcore.builtins.progress",
)


class PluginError(SpurcoreError):
    """A plugin is missing, broken, or clashes with another; the message names it."""


class _BrokenRegistration(Exception):
    """A registration hook that failed: `plugin` is isolated, with `message` as its failure."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(message)
        self.plugin, self.message = plugin, message


@attrs.frozen
class Registered:
    """A spec and the plugin that registered it."""

    spec: Any
    plugin: str


@attrs.frozen
class PluginInfo:
    """`mitigations`: the names of the mitigations the plugin registers. `stage_hooks`: for each
    of them, the hooks of its stage object (which `hooks` cannot show: the object exists only
    while its stage runs), or why they are unknown; empty when not asked for, since reading
    them imports the mitigations' code."""

    name: str
    version: str
    hooks: tuple[str, ...]
    builtin: bool
    mitigations: tuple[str, ...] = ()
    stage_hooks: Mapping[str, tuple[str, ...] | str] = attrs.field(factory=dict)


def default_options(spec: Any) -> Any:
    """The options a stage of `spec` gets from an empty `[stages.options]` table (None for a
    spec without options); a ConfigError names an option that has no default."""
    return None if spec.options is None else structure(spec.options, {}, f"{spec.name}.options")


class _Manager(pluggy.PluginManager):
    """Treats every `spurcore_*` callable as a hook implementation, marked or not, so a
    misspelled name is caught instead of silently ignored (as pytest does)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(f"{hookspecs.PROJECT}_"):
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                return {}
        return opts


class PluginManager:
    """Loads plugins and answers: which hooks, which specs of each kind, which failed."""

    def __init__(
        self,
        *,
        entry_points: bool = True,
        enable: Sequence[str] = (),
        block: Sequence[str] = (),
        allow: Sequence[str] | None = None,
    ) -> None:
        self.pm = _Manager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failed: dict[str, str] = {}
        for name in block:
            self.block(name)
        self._versions: dict[str, str] = {}
        self._builtin: set[str] = set()
        self._records: dict[str, type] = dict(SPEC_TYPES)  # kind -> its record class
        self._kind_owners: dict[str, str] = {}  # a plugin's kind -> that plugin
        self._unchecked: list[str] | None = []  # plugins loaded at start-up, checked once all have
        self._registry: dict[str, dict[str, Registered]] | None = None
        self._clashes: dict[str, dict[str, list[str]]] = {}  # kind -> name -> the plugins that register it
        if os.environ.get(hooktrace.ENV):
            self.pm.add_hookcall_monitoring(hooktrace.print_call, lambda outcome, name, impls, kwargs: None)
        for module in BUILTIN_MODULES:
            name = module.rsplit(".", 1)[-1]
            if not self.pm.is_blocked(name):
                self.register(importlib.import_module(module), name)
                self._builtin.add(name)
        if allow is None and os.environ.get(ALLOW_ENV):
            allow = [p.strip() for p in os.environ[ALLOW_ENV].split(",") if p.strip()]
        wanted = None if allow is None else set(allow) | set(enable)
        found = set()
        if entry_points:
            found = self._load_entry_points(wanted)
        for name in enable:
            if name not in found and not self.pm.is_blocked(name) and self.pm.get_plugin(name) is None:
                self._load(name, name, lambda n=name: importlib.import_module(n), version="")
        unchecked, self._unchecked = self._unchecked, None
        for name in unchecked:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                try:
                    self._check_known(plugin, name)
                except PluginError as exc:
                    self._isolate(name, str(exc))

    @classmethod
    def from_args(cls, plugin_args: Sequence[str]) -> PluginManager:
        """The manager the `spur` command line builds from its `-p` arguments: `NAME` loads a
        plugin, `no:NAME` blocks one (also how sweep workers rebuild the sweep's plugins)."""
        enable = [p for p in plugin_args if not p.startswith("no:")]
        block = [p[3:] for p in plugin_args if p.startswith("no:")]
        return cls(enable=enable, block=block)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # --- loading ---------------------------------------------------------------------------

    def _load_entry_points(self, wanted: set[str] | None) -> set[str]:
        found = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.is_blocked(ep.name) or (wanted is not None and ep.name not in wanted):
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            found.add(ep.name)
            version = ep.dist.version if ep.dist is not None else ""
            self._load(ep.name, ep.value, ep.load, version)
        return found

    def _load(self, name: str, where: str, load: Any, version: str) -> None:
        try:
            plugin = load()
        except (Exception, SystemExit) as exc:  # a broken plugin (one that exits at import, too) must not take the others down
            self.failed[name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"spurcore plugin {name!r} ({where}) failed to load and is skipped: {self.failed[name]}", stacklevel=2)
            return
        try:
            self.register(plugin, name)
        except PluginError as exc:
            self.failed[name] = str(exc)
            warnings.warn(str(exc), stacklevel=2)
            return
        self._versions[name] = version

    def register(self, plugin: object, name: str | None = None, *, stage: bool = False) -> str:
        """Register a plugin (a module or an object) and the kinds it declares; refuse hooks that
        match no spec (at once, or for plugins loaded at start-up once all have loaded), and
        stage hooks (`hookspecs.STAGE_HOOKS`) unless `plugin` is a stage's method object (`stage`)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        hooks = self._implemented(plugin)
        if "spurcore_register_kinds" in hooks:
            self._add_kinds(plugin, name)
        if self._unchecked is None:
            self._check_known(plugin, name)
        shaping = [h for h in hooks if h in hookspecs.STAGE_HOOKS]
        if shaping and not stage:
            raise PluginError(f"plugin {name!r} implements {shaping[0]!r}, a stage hook: only a stage's method object "
                              f"(what a MitigationSpec's factory builds) shapes a run, while its stage runs; move it "
                              f"onto the method's object")
        try:
            registered = self.pm.register(plugin, name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from None
        if self._unchecked is not None:
            self._unchecked.append(registered)
        self._registry = None
        return registered

    def _implemented(self, plugin: object) -> list[str]:
        return [h for h in dir(plugin) if h.startswith(f"{hookspecs.PROJECT}_")
                and self.pm.parse_hookimpl_opts(plugin, h) is not None]

    def _check_known(self, plugin: object, name: str) -> None:
        unknown = [h for h in self._implemented(plugin) if not self._has_spec(h)]
        if unknown:
            prefix = f"{hookspecs.PROJECT}_register_"
            kind_hook = unknown[0].startswith(prefix)  # a kind's hook: a typo only when nearly the same
            close = difflib.get_close_matches(unknown[0], self.hook_names(), n=1, cutoff=0.9 if kind_hook else 0.6)
            if kind_hook and not close:
                hint = (f": no loaded plugin declares the kind {unknown[0][len(prefix):]!r} (a KindSpec); is the "
                        f"plugin that owns it installed and not blocked?")
            else:
                hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PluginError(f"plugin {name!r} implements unknown hook {unknown[0]!r}{hint}")

    def _add_kinds(self, plugin: object, name: str) -> None:
        """Add the kinds `plugin` declares (`spurcore_register_kinds`) and their hook specs."""
        for kind in getattr(plugin, "spurcore_register_kinds")() or ():
            if not isinstance(kind, KindSpec):
                raise PluginError(f"plugin {name!r} returned {type(kind).__name__} from spurcore_register_kinds; "
                                  f"expected KindSpec")
            owner = "the kernel" if kind.name in SPEC_TYPES else self._kind_owners.get(kind.name)
            if owner is not None and owner != name:
                raise PluginError(f"plugin {name!r} declares the kind {kind.name!r}, which {owner} declares already")
            if not callable(getattr(kind.hookspecs, kind.hook, None)):
                raise PluginError(f"plugin {name!r} declares the kind {kind.name!r} without its hook "
                                  f"specification {kind.hook!r} in {kind.hookspecs!r}")
            if not self._has_spec(kind.hook):
                self.pm.add_hookspecs(kind.hookspecs)
            self._records[kind.name] = kind.record
            self._kind_owners[kind.name] = name
        self._registry = None

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind of registration: the kernel's, then those the loaded plugins declare."""
        owners = {name for name, plugin in self.pm.list_name_plugin() if plugin is not None}
        return tuple(k for k in self._records if k in SPEC_TYPES or self._kind_owners[k] in owners)

    def unregister(self, plugin: object) -> None:
        self.pm.unregister(plugin)
        self._registry = None

    def block(self, name: str) -> None:
        """Unregister the plugin called `name`, if loaded, and keep it out (`-p no:name`): what it
        registered is then unknown to every pipeline, which says so by name."""
        self.pm.set_blocked(name)  # unregisters it if loaded
        self._registry = None

    @property
    def blocked(self) -> set[str]:
        return {name for name, plugin in self.pm.list_name_plugin() if plugin is None and name is not None}

    def _has_spec(self, hook_name: str) -> bool:
        caller = getattr(self.pm.hook, hook_name, None)
        return caller is not None and caller.spec is not None

    def hook_names(self) -> list[str]:
        """Every hook with a specification: the kernel's and those plugins' kinds added."""
        return sorted(n for n in dir(self.pm.hook) if n.startswith(f"{hookspecs.PROJECT}_") and self._has_spec(n))

    # --- the registry ------------------------------------------------------------------------

    def registry(self, kind: str) -> Mapping[str, Registered]:
        """Every spec of one kind by name. A name two plugins register is left out (`get` names
        both); a plugin whose registration hook raises, exits or returns something other than
        specs is unregistered and listed in `failed`, so the other plugins work on."""
        kinds = self.kinds
        if kind not in kinds:
            owner = f" (declared by plugin {self._kind_owners[kind]!r}, not loaded)" if kind in self._kind_owners else ""
            raise PluginError(f"unknown kind {kind!r}{owner}: use one of {', '.join(kinds)}")
        while self._registry is None:
            try:
                self._clashes = {}
                self._registry = {k: self._gather(k) for k in self.kinds}
            except _BrokenRegistration as broken:
                self._isolate(broken.plugin, broken.message)
        return self._registry[kind]

    def _isolate(self, name: str, message: str) -> None:
        """Unregister the plugin `name` and list it among those that failed, with `message`."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.failed[name] = message
        warnings.warn(f"spurcore plugin {name!r} is skipped: {message}", stacklevel=3)
        self._registry = None

    def _gather(self, kind: str) -> dict[str, Registered]:
        caller = getattr(self.pm.hook, f"spurcore_register_{kind}")
        expected = self._records[kind]
        found: dict[str, Registered] = {}
        for impl in caller.get_hookimpls():  # registration order
            try:
                specs = list(impl.function() or ())
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - the plugin is isolated, and named
                raise _BrokenRegistration(impl.plugin_name, f"spurcore_register_{kind} raised "
                                                            f"{type(exc).__name__}: {exc}") from None
            for spec in specs:
                if not isinstance(spec, expected):
                    raise _BrokenRegistration(impl.plugin_name, f"plugin {impl.plugin_name!r} returned "
                                                                f"{type(spec).__name__} from spurcore_register_{kind}; "
                                                                f"expected {expected.__name__}")
                if spec.name in self._clashes.get(kind, {}):
                    self._clashes[kind][spec.name].append(impl.plugin_name)
                elif spec.name in found:
                    self._clashes.setdefault(kind, {})[spec.name] = [found.pop(spec.name).plugin, impl.plugin_name]
                else:
                    found[spec.name] = Registered(spec, impl.plugin_name)
        return found

    def names(self, kind: str) -> tuple[str, ...]:
        """The names registered for `kind` (e.g. "mitigations"), sorted."""
        return tuple(sorted(self.registry(kind)))

    def specs(self, kind: str) -> Mapping[str, Any]:
        """Every spec of `kind` by name, in registration order."""
        return {name: entry.spec for name, entry in self.registry(kind).items()}

    @property
    def view(self) -> Registry:
        """The read-only view of this manager that hooks get as `run.plugins`."""
        return Registry(self)

    def get(self, kind: str, name: str) -> Any:
        """The spec called `name`, or an error that lists what exists and what failed."""
        entries = self.registry(kind)
        if name in entries:
            return entries[name].spec
        clash = self._clashes.get(kind, {}).get(name)
        if clash:
            raise PluginError(f"{kind[:-1]} {name!r} is registered by {len(clash)} plugins: "
                              f"{' and '.join(map(repr, clash))}; block all but one (-p no:NAME, or "
                              f"SPURCORE_PLUGINS) or uninstall one")
        message = f"no {kind[:-1]} named {name!r}"
        close = difflib.get_close_matches(name, list(entries), n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        message += f"; available: {', '.join(sorted(entries)) or 'none'}"
        if self.blocked:
            message += f" (blocked with -p no:NAME: {', '.join(sorted(self.blocked))})"
        if self.failed:
            failures = "; ".join(f"{p!r}: {e}" for p, e in self.failed.items())
            message += f". Plugins that failed to load: {failures}"
        raise PluginError(message)

    def require(self, names: Iterable[str]) -> None:
        """Stop unless every named plugin is loaded (a pipeline's `requires`)."""
        for name in names:
            if name in self.failed:
                raise PluginError(f"this pipeline requires plugin {name!r}, which failed to load: {self.failed[name]}")
            if self.pm.get_plugin(name) is None:
                hint = " (blocked with -p no:)" if name in self.blocked else f"; install spurcore-{name}"
                raise PluginError(f"this pipeline requires plugin {name!r}, which is not loaded{hint}")

    # --- listing -------------------------------------------------------------------------------

    def stage_hooks(self, spec: Any) -> tuple[str, ...]:
        """The hooks a mitigation's stage object implements: read off `factory` when it is a
        class (or a `lazy` class), else off the object it builds from the default options
        (which may raise)."""
        factory = spec.factory.resolve() if isinstance(spec.factory, Lazy) else spec.factory
        method = factory if inspect.isclass(factory) else spec.factory(default_options(spec))
        return tuple(sorted(
            name for name in dir(method)
            if name.startswith(f"{hookspecs.PROJECT}_") and self._has_spec(name)
            and self.pm.parse_hookimpl_opts(method, name) is not None
        ))

    def _described_stage_hooks(self, spec: Any) -> tuple[str, ...] | str:
        try:
            return self.stage_hooks(spec)
        except ConfigError as exc:
            return f"unknown without options ({exc})"
        except Exception as exc:  # a factory that fails on its defaults must not stop the listing
            return f"unknown: {spec.name}'s factory failed on its default options: {type(exc).__name__}: {exc}"

    def infos(self, stage_hooks: bool = True) -> list[PluginInfo]:
        """Name, version and implemented hooks of every loaded plugin, the mitigations it
        registers and, with `stage_hooks`, their stage hooks (for `spur plugins`)."""
        from spurcore import __version__

        methods: dict[str, list[str]] = {}
        stages: dict[str, dict[str, tuple[str, ...] | str]] = {}
        for method, entry in self.registry("mitigations").items():
            methods.setdefault(entry.plugin, []).append(method)
            if stage_hooks:
                stages.setdefault(entry.plugin, {})[method] = self._described_stage_hooks(entry.spec)
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            if name is None or plugin is None:
                continue
            hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(plugin) or ()))
            builtin = name in self._builtin
            version = __version__ if builtin else self._versions.get(name, "")
            rows.append(PluginInfo(name, version, hooks, builtin, tuple(sorted(methods.get(name, ()))), stages.get(name, {})))
        return sorted(rows, key=lambda r: (not r.builtin, r.name))


class Registry:
    """What hooks see of the plugins, as `run.plugins`: the registered specs by kind and name,
    read only. Loading, blocking and registering plugins, and calling hooks, stay with the
    kernel, so a hook cannot change which plugins the rest of its run sees. The kernel's
    functions that read specs (planning, `open_run`) take it as they take the manager."""

    def __init__(self, manager: PluginManager) -> None:
        self._manager = manager

    def get(self, kind: str, name: str) -> Any:
        """The spec of `kind` called `name`, or an error with the closest name and what exists."""
        return self._manager.get(kind, name)

    def names(self, kind: str) -> tuple[str, ...]:
        """The names registered for `kind` (e.g. "mitigations"), sorted."""
        return self._manager.names(kind)

    def specs(self, kind: str) -> Mapping[str, Any]:
        """Every spec of `kind` by name."""
        return self._manager.specs(kind)

    def require(self, names: Iterable[str]) -> None:
        """Stop unless every named plugin is loaded (a pipeline's `requires`)."""
        self._manager.require(names)
