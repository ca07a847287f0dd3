"""The plugin manager: built-ins through the hooks, entry-point discovery, allow- and
block-lists, failures that are reported by name, and validation of what plugins register."""

from __future__ import annotations

import re
import sys
import textwrap
import types
from pathlib import Path

import attrs
import pytest

import spurcore
import spurcore.builtins.erm
from spurcore import hookimpl
from spurcore.hookspecs import hookspec
from spurcore.plugins import ALLOW_ENV, PluginError, PluginManager
from spurcore.specs import DatasetSpec, KindSpec, MetricSpec, MitigationSpec

DATASET_PLUGIN = """
from spurcore import hookimpl
from spurcore.specs import DatasetSpec


@hookimpl
def spurcore_register_datasets():
    return [DatasetSpec(name="{dataset}", build=lambda options: None, description="from {module}")]
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path where tests install fake distributions; modules imported from it
    are forgotten afterwards so that tests do not see each other's plugins."""
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def install(site: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write `<dist>-<version>.dist-info` (METADATA, entry_points.txt) and the modules."""
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[spurcore]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


def install_dataset_plugin(site: Path, name: str, version: str = "1.0") -> None:
    """A distribution `<name>` whose entry point `<name>` registers dataset `<name>-data`."""
    module = f"{name}_mod"
    install(site, name, version, {name: module}, {module: DATASET_PLUGIN.format(dataset=f"{name}-data", module=module)})


def dataset_plugin(dataset: str):
    class Plugin:
        @hookimpl
        def spurcore_register_datasets(self):
            return [DatasetSpec(name=dataset, build=lambda options: None)]

    return Plugin()


# --- built-ins ---------------------------------------------------------------------------------


def test_builtins_are_registered_through_the_hooks():
    manager = PluginManager(entry_points=False)
    expected = {
        ("mitigations", "erm"): "erm",
        ("metrics", "avg_acc"): "metrics",
        ("metrics", "worst_group_acc"): "metrics",
        ("metrics", "worst_class_acc"): "metrics",
        ("metrics", "group_acc"): "metrics",
        ("selectors", "val-wga"): "selectors",
        ("selectors", "val-worst-class"): "selectors",
        ("selectors", "val-avg"): "selectors",
        ("backbones", "small-cnn"): "backbones",
        ("datasets", "waterdigits"): "waterdigits",
    }
    for (kind, name), plugin in expected.items():
        entry = manager.registry(kind)[name]
        assert entry.plugin == plugin, (kind, name)
        assert entry.spec.name == name
    # the built-in is an ordinary plugin: its module answers the registration hook
    impls = manager.hook.spurcore_register_mitigations.get_hookimpls()
    assert [i.plugin for i in impls if i.plugin_name == "erm"] == [spurcore.builtins.erm]
    # ERM answers no stage hook: the plain loss is the kernel's fallback when no stage answers
    assert manager.hook.spurcore_train_loss.get_hookimpls() == []


def test_blocking_a_builtin_removes_what_it_registers():
    manager = PluginManager(entry_points=False, block=["selectors"])
    assert "val-wga" not in manager.registry("selectors")
    assert "avg_acc" in manager.registry("metrics")
    with pytest.raises(PluginError, match=r"no selector named 'val-wga'"):
        manager.get("selectors", "val-wga")
    with pytest.raises(PluginError, match=r"'selectors'.*blocked with -p no:"):
        manager.require(["selectors"])


def test_get_suggests_close_name_and_lists_available():
    manager = PluginManager(entry_points=False)
    with pytest.raises(PluginError) as info:
        manager.get("selectors", "val-wgaa")
    message = str(info.value)
    assert "did you mean 'val-wga'?" in message
    assert "available: val-avg, val-wga, val-worst-class" in message


def test_unknown_kind_is_an_error():
    with pytest.raises(PluginError, match=r"unknown kind 'models'.*datasets"):
        PluginManager(entry_points=False).registry("models")


def test_hooks_see_a_read_only_registry_that_reopens_runs(spur_plugins, spur_register_plugin, spur_tiny_config,
                                                          tmp_path):
    from spurcore.finished import open_run
    from spurcore.runner import run_pipeline

    seen = {}

    class Peek:
        @hookimpl
        def spurcore_run_start(self, run):
            seen["public"] = {name for name in dir(run.plugins) if not name.startswith("_")}
            seen["mitigations"] = run.plugins.names("mitigations")
            seen["erm"] = run.plugins.get("mitigations", "erm")
            try:
                run.plugins.get("mitigations", "ermm")
            except PluginError as error:
                seen["unknown"] = str(error)
            if run.config.init is not None:
                seen["init epochs"] = open_run(run.config.init.run, run.plugins).stage(0).epochs

    spur_register_plugin(Peek(), "peek")
    train = {"epochs": 2, "batch_size": 32, "lr": 0.01}
    run_pipeline(spur_tiny_config(train=train), tmp_path / "first", spur_plugins, log=lambda m: None)
    assert seen["public"] == {"get", "names", "require", "specs"}
    assert seen["mitigations"] == tuple(sorted(spur_plugins.registry("mitigations")))
    assert {"erm", "tiny-refit"} <= set(seen["mitigations"])
    assert seen["erm"] == spur_plugins.get("mitigations", "erm")
    assert seen["unknown"].startswith("no mitigation named 'ermm' (did you mean 'erm'?); available: ")
    run_pipeline(spur_tiny_config(train=train, init={"run": str(tmp_path / "first")}), tmp_path / "second",
                 spur_plugins, log=lambda m: None)
    assert seen["init epochs"] == (1, 2)
    left = [name for name, _ in spur_plugins.pm.list_name_plugin() if name and name.startswith(("stage:", "replay:"))]
    assert left == []  # reading the run back registered its stage objects only while it rebuilt the model


# --- discovery through entry points ------------------------------------------------------------


def test_entry_point_plugin_is_discovered_with_its_version(site):
    install(site, "fakeplug", "0.1", {"fakeplug": "fakeplug_mod"},
            {"fakeplug_mod": DATASET_PLUGIN.format(dataset="fake-data", module="fakeplug_mod")})
    manager = PluginManager()
    assert "fakeplug" not in manager.failed
    assert manager.pm.get_plugin("fakeplug") is sys.modules["fakeplug_mod"]
    entry = manager.registry("datasets")["fake-data"]
    assert entry.plugin == "fakeplug"
    assert entry.spec.description == "from fakeplug_mod"
    info = {i.name: i for i in manager.infos()}["fakeplug"]
    assert info.version == "0.1"
    assert info.hooks == ("spurcore_register_datasets",)
    assert info.builtin is False


def test_entry_points_are_ignored_when_disabled(site):
    install_dataset_plugin(site, "plugoff")
    manager = PluginManager(entry_points=False)
    assert manager.pm.get_plugin("plugoff") is None
    assert "plugoff-data" not in manager.registry("datasets")


def test_allow_env_limits_external_loading(site, monkeypatch):
    for name in ("alpha", "beta", "gamma"):
        install_dataset_plugin(site, name)
    monkeypatch.setenv(ALLOW_ENV, " alpha, beta ,")
    manager = PluginManager()
    datasets = manager.registry("datasets")
    assert {"alpha-data", "beta-data"} <= set(datasets)
    assert "gamma-data" not in datasets
    assert manager.pm.get_plugin("gamma") is None
    # built-ins are not external: the allow-list leaves them alone
    assert "erm" in manager.registry("mitigations")
    assert "waterdigits" in datasets


def test_enable_adds_to_the_allow_list(site, monkeypatch):
    for name in ("alpha", "beta", "gamma"):
        install_dataset_plugin(site, name, version="2.3")
    monkeypatch.setenv(ALLOW_ENV, "alpha")
    manager = PluginManager(enable=["gamma"])
    loaded = {i.name: i.version for i in manager.infos() if not i.builtin}
    assert loaded == {"alpha": "2.3", "gamma": "2.3"}


def test_allow_argument_overrides_the_environment(site, monkeypatch):
    for name in ("alpha", "beta"):
        install_dataset_plugin(site, name)
    monkeypatch.setenv(ALLOW_ENV, "alpha")
    manager = PluginManager(allow=["beta"])
    names = {i.name for i in manager.infos() if not i.builtin}
    assert names == {"beta"}


def test_block_skips_an_entry_point(site):
    for name in ("alpha", "beta"):
        install_dataset_plugin(site, name)
    manager = PluginManager(block=["beta"])
    assert "alpha-data" in manager.registry("datasets")
    assert "beta-data" not in manager.registry("datasets")
    assert "beta" not in manager.failed
    with pytest.raises(PluginError, match=r"requires plugin 'beta', which is not loaded \(blocked with -p no:\)"):
        manager.require(["beta"])
    manager.require(["alpha", "erm"])  # loaded ones pass


def test_require_of_an_absent_plugin_says_how_to_install_it():
    manager = PluginManager(entry_points=False)
    with pytest.raises(PluginError, match=r"requires plugin 'dfr', which is not loaded; install spurcore-dfr"):
        manager.require(["dfr"])


def test_enable_loads_a_plain_module_by_import_name(site):
    (site / "plainplug_mod.py").write_text(DATASET_PLUGIN.format(dataset="plain-data", module="plainplug_mod"))
    manager = PluginManager(entry_points=False, enable=["plainplug_mod"])
    assert manager.pm.get_plugin("plainplug_mod") is sys.modules["plainplug_mod"]
    assert manager.registry("datasets")["plain-data"].plugin == "plainplug_mod"
    info = {i.name: i for i in manager.infos()}["plainplug_mod"]
    assert (info.version, info.hooks, info.builtin) == ("", ("spurcore_register_datasets",), False)


def test_enable_of_a_missing_module_is_reported(site):
    with pytest.warns(UserWarning, match="no_such_plugin_mod"):
        manager = PluginManager(entry_points=False, enable=["no_such_plugin_mod"])
    assert manager.failed["no_such_plugin_mod"].startswith("ModuleNotFoundError:")
    with pytest.raises(PluginError, match=r"'no_such_plugin_mod', which failed to load: ModuleNotFoundError"):
        manager.require(["no_such_plugin_mod"])


# --- failures ---------------------------------------------------------------------------------


def test_broken_plugin_is_reported_by_name_and_skipped(site):
    install(site, "brokenplug", "0.3", {"broken": "brokenplug_mod"},
            {"brokenplug_mod": 'raise RuntimeError("boom on import")\n'})
    install_dataset_plugin(site, "healthy")
    with pytest.warns(UserWarning, match=r"'broken' \(brokenplug_mod\) failed to load"):
        manager = PluginManager()
    assert manager.failed["broken"] == "RuntimeError: boom on import"
    assert "healthy" not in manager.failed
    # the others still load
    assert manager.registry("datasets")["healthy-data"].plugin == "healthy"
    assert "erm" in manager.registry("mitigations")
    assert "broken" not in {i.name for i in manager.infos()}
    # it becomes an error only when something needs it, and the error names it
    with pytest.raises(PluginError, match=r"requires plugin 'broken', which failed to load: RuntimeError: boom on import"):
        manager.require(["broken"])
    with pytest.raises(PluginError) as info:
        manager.get("datasets", "broken-data")
    message = str(info.value)
    assert "no dataset named 'broken-data'" in message
    assert "Plugins that failed to load: 'broken': RuntimeError: boom on import" in message


def test_same_dataset_from_two_plugins_names_kind_name_and_both_and_every_other_name_still_works(
        spur_tiny_config):
    """Issue 25, item 11: a clash made every look-up of the registry fail, and a pipeline with
    `dataset.name` = "tiny" was told its dataset.name was to blame."""
    from spurcore.planning import plan
    from spurcore.testing import TinyPlugin

    manager = PluginManager(entry_points=False)
    manager.register(TinyPlugin(), "tiny-plugin")
    manager.register(dataset_plugin("dup"), "alpha")
    manager.register(dataset_plugin("dup"), "beta")
    assert "dup" not in manager.registry("datasets") and "tiny" in manager.registry("datasets")
    assert manager.get("metrics", "avg_acc") is not None
    with pytest.raises(PluginError) as info:
        manager.get("datasets", "dup")
    assert str(info.value) == ("dataset 'dup' is registered by 2 plugins: 'alpha' and 'beta'; block all but one "
                               "(-p no:NAME, or SPURCORE_PLUGINS) or uninstall one")
    plan(spur_tiny_config(), manager)  # the pipelines that do not name it run
    with pytest.raises(PluginError, match=r"^<pipeline>: dataset.name: dataset 'dup' is registered by 2 plugins"):
        plan(spur_tiny_config(dataset={"name": "dup"}), manager)


def test_clash_with_a_builtin_names_the_builtin():
    manager = PluginManager(entry_points=False)
    manager.register(dataset_plugin("waterdigits"), "mine")
    with pytest.raises(PluginError, match=r"dataset 'waterdigits' is registered by 2 plugins: 'waterdigits' and 'mine'"):
        manager.get("datasets", "waterdigits")


def test_registry_follows_registration_order():
    """plugins.py `_gather` says it walks the implementations "in registration order"; a clash
    should name the plugin that registered the name first, first."""
    manager = PluginManager(entry_points=False, block=["waterdigits"])
    manager.register(dataset_plugin("first-data"), "first")
    manager.register(dataset_plugin("second-data"), "second")
    assert list(manager.registry("datasets")) == ["first-data", "second-data"]
    manager.register(dataset_plugin("first-data"), "third")
    manager.register(dataset_plugin("first-data"), "fourth")
    with pytest.raises(PluginError, match=r"registered by 3 plugins: 'first' and 'third' and 'fourth'"):
        manager.get("datasets", "first-data")


class RaisingRegistration:
    @hookimpl
    def spurcore_register_datasets(self):
        raise KeyError("the config file it reads at registration")

    @hookimpl
    def spurcore_register_metrics(self):
        return []


class ExitingRegistration:
    @hookimpl
    def spurcore_register_selectors(self):
        sys.exit("no licence")


@pytest.mark.parametrize("plugin, message", [
    (RaisingRegistration(), "spurcore_register_datasets raised KeyError: 'the config file it reads at registration'"),
    (ExitingRegistration(), "spurcore_register_selectors raised SystemExit: no licence"),
])
def test_a_registration_hook_that_raises_or_exits_isolates_its_plugin_naming_it(plugin, message):
    """Issue 25, item 11: the hook's exception escaped every look-up (and sys.exit ended `spur`)."""
    manager = PluginManager(entry_points=False)
    manager.register(dataset_plugin("healthy-data"), "healthy")
    manager.register(plugin, "fragile")
    with pytest.warns(UserWarning, match=r"plugin 'fragile' is skipped: spurcore_register_"):
        assert "healthy-data" in manager.registry("datasets")
    assert manager.failed == {"fragile": message}
    assert manager.pm.get_plugin("fragile") is None and "val-wga" in manager.registry("selectors")
    with pytest.raises(PluginError, match=rf"Plugins that failed to load: 'fragile': {re.escape(message)}"):
        manager.get("datasets", "fragile-data")


def test_a_plugin_that_exits_at_import_is_reported_by_name_and_skipped(site):
    """Issue 25, item 11: `sys.exit` in a plugin's module ended every `spur` command silently."""
    install(site, "exitplug", "0.1", {"exiting": "exitplug_mod"}, {"exitplug_mod": 'import sys\nsys.exit(3)\n'})
    install_dataset_plugin(site, "healthy")
    with pytest.warns(UserWarning, match=r"'exiting' \(exitplug_mod\) failed to load"):
        manager = PluginManager()
    assert manager.failed["exiting"] == "SystemExit: 3"
    assert manager.registry("datasets")["healthy-data"].plugin == "healthy"


def test_unregister_drops_the_plugins_specs():
    manager = PluginManager(entry_points=False)
    plugin = dataset_plugin("temporary")
    manager.register(plugin, "temp")
    assert "temporary" in manager.registry("datasets")
    manager.unregister(plugin)
    assert "temporary" not in manager.registry("datasets")


class MarkedTypo:
    @hookimpl
    def spurcore_train_los(self, model, batch):
        return None


class UnmarkedTypo:
    def spurcore_train_los(self, model, batch):
        return None


def _typo_module():
    module = types.ModuleType("typo_module")

    def spurcore_train_los(model, batch):
        return None

    module.spurcore_train_los = spurcore_train_los
    return module


@pytest.mark.parametrize("make", [MarkedTypo, UnmarkedTypo, _typo_module], ids=["marked", "unmarked", "module"])
def test_misspelled_hook_is_rejected_with_a_suggestion(make):
    manager = PluginManager(entry_points=False)
    plugin = make()
    with pytest.raises(PluginError) as info:
        manager.register(plugin, "typo")
    assert str(info.value) == (
        "plugin 'typo' implements unknown hook 'spurcore_train_los'; did you mean 'spurcore_train_loss'?"
    )
    assert manager.pm.get_plugin("typo") is None
    assert "typo" not in {i.name for i in manager.infos()}
    assert "typo" not in [i.plugin_name for i in manager.hook.spurcore_train_loss.get_hookimpls()]


def test_misspelled_hook_in_an_entry_point_plugin_is_reported(site):
    source = DATASET_PLUGIN.format(dataset="typo-data", module="typoplug_mod") + textwrap.dedent("""
        def spurcore_train_los(model, batch):
            return None
    """)
    install(site, "typoplug", "1.0", {"typoplug": "typoplug_mod"}, {"typoplug_mod": source})
    install_dataset_plugin(site, "healthy")
    with pytest.warns(UserWarning, match="spurcore_train_los"):
        manager = PluginManager()
    assert manager.failed["typoplug"] == (
        "plugin 'typoplug' implements unknown hook 'spurcore_train_los'; did you mean 'spurcore_train_loss'?"
    )
    # nothing of the rejected plugin stays registered; the others load
    assert "typo-data" not in manager.registry("datasets")
    assert "healthy-data" in manager.registry("datasets")


def test_hookimpl_with_an_argument_the_spec_lacks_is_rejected():
    class BadArgs:
        @hookimpl
        def spurcore_epoch_start(self, stage, epochs):
            pass

    manager = PluginManager(entry_points=False)
    with pytest.raises(PluginError, match=r"(?s)plugin 'badargs' is invalid:.*'epochs'.*can not be found in the hookspec"):
        manager.register(BadArgs(), "badargs")
    assert manager.pm.get_plugin("badargs") is None


def test_spec_of_the_wrong_type_isolates_the_plugin():
    class WrongSpec:
        @hookimpl
        def spurcore_register_datasets(self):
            return [MetricSpec(name="oops", compute=lambda p: {})]

    manager = PluginManager(entry_points=False)
    manager.register(WrongSpec(), "wrongspec")
    with pytest.warns(UserWarning, match="'wrongspec' is skipped"):
        assert "waterdigits" in manager.registry("datasets")
    assert manager.failed["wrongspec"] == (
        "plugin 'wrongspec' returned MetricSpec from spurcore_register_datasets; expected DatasetSpec"
    )


def test_plain_dict_instead_of_a_spec_isolates_the_plugin():
    class DictSpec:
        @hookimpl
        def spurcore_register_selectors(self):
            return [{"name": "mine", "score": lambda c: 0.0}]

    manager = PluginManager(entry_points=False)
    manager.register(DictSpec(), "dictspec")
    with pytest.warns(UserWarning, match="'dictspec' is skipped"):
        manager.registry("selectors")
    assert manager.failed["dictspec"] == ("plugin 'dictspec' returned dict from spurcore_register_selectors; "
                                          "expected SelectorSpec")


# --- listing ------------------------------------------------------------------------------------


def test_infos_lists_name_version_hooks():
    manager = PluginManager(entry_points=False)
    manager.register(dataset_plugin("listed"), "listed")
    infos = manager.infos()
    by_name = {i.name: i for i in infos}
    builtins = {"erm", "metrics", "selectors", "backbones", "waterdigits", "progress"}
    assert builtins <= set(by_name)
    for name in builtins:
        assert by_name[name].builtin is True
        assert by_name[name].version == spurcore.__version__
    assert by_name["erm"].hooks == ("spurcore_register_mitigations",)
    assert by_name["metrics"].hooks == ("spurcore_register_metrics",)
    assert by_name["progress"].hooks == ("spurcore_register_observers",)  # its bar is an object per run
    assert (by_name["listed"].version, by_name["listed"].hooks, by_name["listed"].builtin) == (
        "", ("spurcore_register_datasets",), False,
    )
    # built-ins first, each part sorted by name
    flags = [i.builtin for i in infos]
    assert flags == sorted(flags, reverse=True)
    assert [i.name for i in infos if i.builtin] == sorted(builtins)


def test_infos_leaves_out_blocked_builtins():
    manager = PluginManager(entry_points=False, block=["progress", "waterdigits"])
    names = {i.name for i in manager.infos()}
    assert "progress" not in names and "waterdigits" not in names
    assert "waterdigits" not in manager.registry("datasets")


def test_trace_hooks_prints_every_hook_call_with_its_implementations(monkeypatch, capsys, tmp_path, spur_tiny_config):
    from spurcore.runner import run_pipeline
    from spurcore.testing import kit_manager

    monkeypatch.setenv("SPURCORE_TRACE_HOOKS", "1")
    config = spur_tiny_config(train={"epochs": 1, "batch_size": 100, "eval_batch_size": 200})
    run_pipeline(config, tmp_path / "run", kit_manager(), log=lambda message: None)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("[spurcore] ")]
    names = [l.split(" ", 1)[1].split("(", 1)[0] for l in lines]
    # tiny: 200 training examples in 2 batches; train, val and test evaluated in one batch each
    # before anything is written: the run check (ERM has no prepare_model to replay on a copy)
    assert names == ["spurcore_run_check",
                     "spurcore_run_start", "spurcore_stage_start", "spurcore_prepare_model", "spurcore_inference_variants",
                     "spurcore_epoch_start",
                     "spurcore_train_sampler", *["spurcore_train_loss", "spurcore_batch_end"] * 2,
                     *["spurcore_evaluation_start", "spurcore_evaluation_batch", "spurcore_evaluation_end"] * 3,
                     "spurcore_epoch_end", "spurcore_stage_end", "spurcore_run_end"]
    loss = lines[names.index("spurcore_train_loss")]
    # no stage answers the loss hook under ERM: the kernel's cross-entropy is the fallback
    assert "stage=StageContext(0-erm)" in loss and "batch=Batch[100]" in loss and loss.endswith("-> []")
    evaluation_batches = [line for name, line in zip(names, lines) if name == "spurcore_evaluation_batch"]
    assert "split='train', batch=Batch[200], logits=Tensor(200x2)" in evaluation_batches[0]
    assert "split='val', batch=Batch[120], logits=Tensor(120x2)" in evaluation_batches[1]
    assert "step=1, batch=Batch[100], loss=Tensor(scalar)" in lines[names.index("spurcore_batch_end", 9)]


def test_without_trace_hooks_nothing_is_printed(monkeypatch, capsys, tmp_path, spur_tiny_config):
    from spurcore.runner import run_pipeline
    from spurcore.testing import kit_manager

    monkeypatch.delenv("SPURCORE_TRACE_HOOKS", raising=False)
    run_pipeline(spur_tiny_config(train={"epochs": 1}), tmp_path / "run", kit_manager(), log=lambda message: None)
    assert "[spurcore]" not in capsys.readouterr().err


def test_stage_hooks_are_read_off_a_factory_class_without_building_it():
    class NeedsTheData:
        def __init__(self, options):
            raise AssertionError("built")

        @hookimpl
        def spurcore_train_sampler(self, generator):
            return None

        def spurcore_train_loss(self, model, batch):  # unmarked, still a hook (as at registration)
            return None

        def helper(self):
            return None

    manager = PluginManager(entry_points=False)
    spec = MitigationSpec(name="needs-data", factory=NeedsTheData)
    assert manager.stage_hooks(spec) == ("spurcore_train_loss", "spurcore_train_sampler")


@pytest.mark.parametrize("blocked, key, message", [
    ("erm", "stages[0].method", "no mitigation named 'erm'"),
    ("metrics", "metrics[0]", "no metric named 'avg_acc'; available: none"),
    ("selectors", "selector", "no selector named 'val-worst-class'"),
    ("backbones", "backbone.name", "no backbone named 'small-cnn'"),
    ("waterdigits", "dataset.name", "no dataset named 'waterdigits'"),
])
def test_blocking_any_builtin_gives_one_line_naming_what_is_missing(capsys, tmp_path, blocked, key, message):
    from spurcore.cli import main

    pipeline = Path(__file__).resolve().parents[1] / "examples" / "erm.toml"
    with pytest.raises(SystemExit) as help_exit:
        main(["-p", f"no:{blocked}", "--help"])
    assert help_exit.value.code == 0
    capsys.readouterr()
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as run_exit:
        main(["-p", f"no:{blocked}", "run", str(pipeline), "--out", str(out)])
    captured = capsys.readouterr()
    assert run_exit.value.code != 0 and not out.exists()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Error: {pipeline}: {key}: {message}")
    assert f"(blocked with -p no:NAME: {blocked})" in lines[0]


def test_a_loss_hook_that_returns_nothing_stops_the_run_naming_the_stage(spur_plugins, spur_register_plugin, spur_tiny_config,
                                                                         tmp_path):
    from spurcore.planning import RunError
    from spurcore.runner import run_pipeline

    class NoLoss:
        def __init__(self, options):
            pass

        @hookimpl(tryfirst=True)
        def spurcore_train_loss(self):
            return 0.0  # not a tensor: nothing to backpropagate

    class Plugin:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="no-loss", factory=NoLoss)]

    spur_register_plugin(Plugin(), "no-loss")
    with pytest.raises(RunError, match=r"stages\[0\]: spurcore_train_loss of method 'no-loss' returned float for "
                                       r"stage '0-no-loss'; a loss hook returns a scalar tensor"):
        run_pipeline(spur_tiny_config(stages=[{"method": "no-loss"}]), tmp_path / "run", spur_plugins, log=lambda m: None)


# --- stage hooks belong to stages ---------------------------------------------------------------


class LossCheat:
    """Would replace every stage's loss: a stage hook outside a stage."""

    @hookimpl(tryfirst=True)
    def spurcore_train_loss(self, model, batch):
        return model(batch.x).sum() * 0


def test_an_observer_with_a_stage_hook_is_refused_before_the_run_writes(spur_plugins, spur_register_plugin,
                                                                         spur_tiny_config, tmp_path):
    from spurcore.runner import run_pipeline
    from spurcore.specs import ObserverSpec

    class Plugin:
        @hookimpl
        def spurcore_register_observers(self):
            return [ObserverSpec(name="cheat", factory=lambda settings: LossCheat())]

    spur_register_plugin(Plugin(), "cheat")
    with pytest.raises(PluginError, match=r"^plugin 'observer:cheat' implements 'spurcore_train_loss', a stage hook: "
                                          r"only a stage's method object"):
        run_pipeline(spur_tiny_config(), tmp_path / "run", spur_plugins, log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_a_module_level_plugin_with_a_stage_hook_is_refused_at_registration(monkeypatch):
    module = types.ModuleType("cheat_plugin")
    module.spurcore_train_loss = LossCheat.spurcore_train_loss
    monkeypatch.setitem(sys.modules, "cheat_plugin", module)
    manager = PluginManager(entry_points=False)
    with pytest.raises(PluginError, match=r"plugin 'cheat' implements 'spurcore_train_loss', a stage hook"):
        manager.register(module, "cheat")
    assert manager.hook.spurcore_train_loss.get_hookimpls() == []


# --- kinds owned by plugins -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ReporterSpec:
    name: str
    render: object = None


class ReporterHooks:
    @hookspec
    def spurcore_register_reporters(self) -> list[ReporterSpec]:
        """Return the reporters this plugin provides."""


class Owner:
    """Owns the kind "reporters" and registers one."""

    @hookimpl
    def spurcore_register_kinds(self):
        return [KindSpec(name="reporters", record=ReporterSpec, hookspecs=ReporterHooks)]

    @hookimpl
    def spurcore_register_reporters(self):
        return [ReporterSpec(name="plain")]


class User:
    """Registers a reporter into a kind another plugin owns."""

    @hookimpl
    def spurcore_register_reporters(self):
        return [ReporterSpec(name="fancy")]


def entry_point_manager(monkeypatch, plugins):
    """A manager that loads `plugins` ({name: object}) as entry points, in this order."""

    class EntryPoint:
        def __init__(self, name, plugin):
            self.name, self.value, self.dist, self.plugin = name, f"{name}_module", None, plugin

        def load(self):
            return self.plugin

    found = [EntryPoint(name, plugin) for name, plugin in plugins.items()]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: found if group == "spurcore" else [])
    return PluginManager()


def test_a_plugin_declares_a_kind_others_register_into_loaded_in_any_order(monkeypatch):
    manager = entry_point_manager(monkeypatch, {"user": User(), "owner": Owner()})  # the user loads first
    assert manager.failed == {}
    assert manager.kinds[-1] == "reporters"
    assert manager.names("reporters") == ("fancy", "plain")
    assert manager.registry("reporters")["fancy"].plugin == "user"
    assert "spurcore_register_reporters" in manager.hook_names()


def test_a_hook_of_a_kind_whose_owner_is_absent_fails_that_plugin_alone(monkeypatch):
    with pytest.warns(UserWarning, match=r"^spurcore plugin 'user' is skipped: "):
        manager = entry_point_manager(monkeypatch, {"user": User(), "tiny": dataset_plugin("tiny")})
    assert manager.failed == {"user": "plugin 'user' implements unknown hook 'spurcore_register_reporters': no loaded "
                                      "plugin declares the kind 'reporters' (a KindSpec); is the plugin that owns it "
                                      "installed and not blocked?"}
    assert "tiny" in manager.names("datasets")
    with pytest.raises(PluginError, match=r"^unknown kind 'reporters': use one of datasets, backbones, "):
        manager.registry("reporters")


def test_a_kind_is_declared_once():
    manager = PluginManager(entry_points=False)
    manager.register(Owner(), "owner")

    def declaring(kind):
        """A plugin that declares `kind` (with the reporters' record and hook)."""
        plugin = types.SimpleNamespace()
        plugin.spurcore_register_kinds = lambda: [KindSpec(name=kind, record=ReporterSpec, hookspecs=ReporterHooks)]
        return plugin

    with pytest.raises(PluginError, match=r"^plugin 'thief' declares the kind 'reporters', which owner declares already$"):
        manager.register(declaring("reporters"), "thief")
    with pytest.raises(PluginError, match=r"declares the kind 'metrics', which the kernel declares already"):
        manager.register(declaring("metrics"), "kernel")


def test_the_tracer_and_the_sweep_own_their_kinds():
    import spurcore_sweep
    import spurcore_tracer

    manager = PluginManager(entry_points=False)
    manager.register(spurcore_tracer, "tracer")
    manager.register(spurcore_sweep, "sweep")
    assert manager.kinds == ("datasets", "backbones", "mitigations", "selectors", "metrics", "observers",
                             "tracers", "launchers")
    assert manager.names("tracers") == ("memorization",)
    assert manager.names("launchers") == ("local", "ray")
    assert isinstance(manager.get("tracers", "memorization"), spurcore_tracer.TracerSpec)
    assert not hasattr(spurcore.hookspecs, "spurcore_register_tracers")


def test_a_typo_in_a_registration_hook_is_still_named_as_one():
    class Typo:
        @hookimpl
        def spurcore_register_mitigation(self):
            return []

    with pytest.raises(PluginError, match=r"unknown hook 'spurcore_register_mitigation'; did you mean "
                                          r"'spurcore_register_mitigations'\?$"):
        PluginManager(entry_points=False).register(Typo(), "typo")
