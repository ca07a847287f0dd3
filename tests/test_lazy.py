"""`lazy` and `lazy_exports`: a registration record, or a package's public name, imports its
module when it is used, never when the plugin is registered."""

from __future__ import annotations

import sys
import textwrap

import pytest

from spurcore import hookimpl
from spurcore.api import MitigationSpec, PluginError, lazy, pipeline_from_dict, run_pipeline
from spurcore.plugins import PluginManager
from spurcore.testing import kit_manager, tiny_pipeline

PACKAGE = {
    "__init__.py": '''
        from spurcore import hookimpl
        from spurcore.api import MitigationSpec, lazy, lazy_exports

        __all__ = ["Method", "trace"]
        __getattr__, __dir__ = lazy_exports(__name__, {
            "Method": "lazyplug.method:Method",
            "trace": "lazyplug.trace:trace",
        })


        @hookimpl
        def spurcore_register_mitigations():
            return [MitigationSpec(name="lazy-method", factory=lazy("lazyplug.method:Method", scale=3))]
    ''',
    "method.py": '''
        from spurcore import hookimpl

        IMPORTED = True


        class Method:
            built = 0

            def __init__(self, options, scale):
                Method.built += 1
                self.options, self.scale = options, scale

            @hookimpl
            def spurcore_train_sampler(self, generator):
                return None
    ''',
    "trace.py": '''
        def trace(run):
            return f"traced {run}"
    ''',
}


@pytest.fixture
def lazyplug(tmp_path, monkeypatch):
    """A plugin package `lazyplug` on sys.path whose names and factory are lazy; removed after."""
    folder = tmp_path / "lazyplug"
    folder.mkdir()
    for name, text in PACKAGE.items():
        (folder / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazyplug"
    for module in [m for m in sys.modules if m.split(".")[0] == "lazyplug"]:
        del sys.modules[module]


def test_a_lazy_factory_imports_its_module_on_the_first_call_and_passes_its_keywords(lazyplug):
    import lazyplug

    spec = lazyplug.spurcore_register_mitigations()[0]
    assert "lazyplug.method" not in sys.modules
    method = spec.factory("opts")
    assert "lazyplug.method" in sys.modules
    assert (type(method).__name__, method.options, method.scale) == ("Method", "opts", 3)
    assert spec.factory.resolve() is sys.modules["lazyplug.method"].Method


def test_registering_and_listing_a_lazy_plugin_imports_nothing_and_hooks_are_read_off_the_class(lazyplug):
    import lazyplug

    manager = PluginManager(entry_points=False, block=["progress"])
    manager.register(lazyplug, "lazyplug")
    assert "lazy-method" in manager.registry("mitigations")
    info = {i.name: i for i in manager.infos(stage_hooks=False)}["lazyplug"]
    assert (info.mitigations, info.stage_hooks) == (("lazy-method",), {})
    assert "lazyplug.method" not in sys.modules and "lazyplug.trace" not in sys.modules
    assert manager.stage_hooks(manager.get("mitigations", "lazy-method")) == ("spurcore_train_sampler",)
    assert sys.modules["lazyplug.method"].Method.built == 0  # read off the class, never built


def test_lazy_exports_import_on_first_read_and_are_listed(lazyplug):
    import lazyplug

    assert {"Method", "trace"} <= set(dir(lazyplug)) and "lazyplug.trace" not in sys.modules
    from lazyplug import trace

    assert trace("run") == "traced run" and "lazyplug.trace" in sys.modules
    with pytest.raises(AttributeError, match="module 'lazyplug' has no attribute 'Tracer'"):
        lazyplug.Tracer  # noqa: B018


def test_importing_a_submodule_named_like_an_export_does_not_replace_the_export(lazyplug):
    import lazyplug
    import lazyplug.trace  # binds `trace` on the package to the module, unless kept off

    assert lazyplug.trace is sys.modules["lazyplug.trace"].trace
    from lazyplug import trace

    assert callable(trace) and trace("x") == "traced x"


def test_a_lazy_target_must_name_module_and_attribute():
    with pytest.raises(ValueError, match=r'lazy\(\'spurcore.runner\'\): name the object as "package.module:attr"'):
        lazy("spurcore.runner")


def test_a_lazy_target_that_does_not_exist_fails_when_used_naming_it():
    spec = MitigationSpec(name="missing", factory=lazy("spurcore.nowhere:Method"))
    with pytest.raises(ModuleNotFoundError, match="spurcore.nowhere"):
        spec.factory(None)
    manager = PluginManager(entry_points=False, block=["progress"])

    class Registers:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [spec]

    manager.register(Registers(), "registers")
    hooks = {i.name: i for i in manager.infos()}["registers"].stage_hooks["missing"]
    assert hooks.startswith("unknown: missing's factory failed") and "spurcore.nowhere" in hooks


def test_a_pipeline_naming_a_lazy_method_that_cannot_be_imported_stops_before_it_starts(tmp_path):
    class Registers:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="missing", factory=lazy("spurcore.nowhere:Method"))]

    manager = kit_manager()
    manager.register(Registers(), "registers")
    config = pipeline_from_dict(tiny_pipeline(stages=[{"method": "erm", "train": {"epochs": 1}}, {"method": "missing"}]))
    with pytest.raises(PluginError, match=r"^<pipeline>: stages\[1\].method: mitigation 'missing': its factory 'spurcore.nowhere:Method' "
                                          r"cannot be imported: ModuleNotFoundError: No module named 'spurcore.nowhere'$"):
        run_pipeline(config, tmp_path / "run", manager, log=lambda message: None)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
