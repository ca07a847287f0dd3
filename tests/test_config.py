"""Pipeline configuration: loading, validation errors that name the file and key, typed
`-o` overrides, and the `dumps` round trip."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from spurcore.config import (
    ComponentConfig,
    DatasetConfig,
    PipelineConfig,
    StageConfig,
    TrainConfig,
    dumps,
    load_pipeline,
    parse_override,
    pipeline_from_dict,
)
from spurcore import hookimpl
from spurcore.errors import ConfigError
from spurcore.testing import MLPOptions, TinyOptions, tiny_pipeline
from spurcore.tomlwriter import dumps as toml_dumps

ERM_TOML = Path(__file__).resolve().parents[1] / "examples" / "erm.toml"
ERM_DATA = tomllib.loads(ERM_TOML.read_text())


def write(tmp_path: Path, data: dict, name: str = "pipeline.toml") -> Path:
    path = tmp_path / name
    path.write_text(toml_dumps(data))
    return path


def erm_with(**train) -> dict:
    data = tomllib.loads(ERM_TOML.read_text())  # a fresh copy
    data["train"].update(train)
    return data


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, overrides)
    return str(info.value)


# --- loading -------------------------------------------------------------------------------------


def test_loads_the_erm_example():
    config = load_pipeline(ERM_TOML)
    assert isinstance(config, PipelineConfig)
    assert config.dataset == DatasetConfig(name="waterdigits", options={"scale": 1.0})
    assert config.backbone == ComponentConfig(name="small-cnn", options={"width": 32})
    assert config.train == TrainConfig(epochs=10, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=1e-4)
    assert config.stages == [StageConfig(method="erm")]
    assert config.stages[0].label == "erm"
    assert (config.selector, config.seed, config.device) == ("val-worst-class", 0, "auto")
    assert config.metrics == ["avg_acc", "worst_group_acc", "worst_class_acc", "group_acc"]
    # defaults fill what the file leaves out
    assert (config.train.eval_batch_size, config.train.scheduler, config.amp, config.requires) == (512, "none", True, [])


def test_integer_written_for_a_float_becomes_a_float(tmp_path):
    config = load_pipeline(write(tmp_path, erm_with(lr=1)))
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


# --- errors name the file and the key -----------------------------------------------------------------


def test_unknown_key_names_file_and_key_with_a_suggestion(tmp_path):
    path = write(tmp_path, erm_with(lrr=0.1))
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert "train.lrr: unknown key (did you mean 'lr'?)" in message


def test_unknown_key_without_a_close_match_lists_the_known_ones(tmp_path):
    data = dict(ERM_DATA, zzzzzz=1)
    message = error_of(write(tmp_path, data))
    assert "zzzzzz: unknown key (known: dataset, backbone, stages, train, selector" in message


def test_unknown_key_inside_a_stage_names_its_index(tmp_path):
    data = dict(ERM_DATA, stages=[{"method": "erm"}, {"method": "erm", "optoins": {}}])
    assert "stages[1].optoins: unknown key (did you mean 'options'?)" in error_of(write(tmp_path, data))


@pytest.mark.parametrize(
    "value, expected",
    [("ten", "expected an integer, got str 'ten'"), (10.0, "expected an integer, got float 10.0"),
     (True, "expected an integer, got bool True")],
)
def test_wrong_type_names_the_key(tmp_path, value, expected):
    path = write(tmp_path, erm_with(epochs=value))
    message = error_of(path)
    assert message == f"{path}: train.epochs: {expected}"


def test_validator_failure_names_the_key(tmp_path):
    path = write(tmp_path, erm_with(epochs=0))
    assert error_of(path) == f"{path}: train.epochs: must be positive, got 0"
    path = write(tmp_path, erm_with(weight_decay=-0.5), "wd.toml")
    assert error_of(path) == f"{path}: train.weight_decay: must be >= 0, got -0.5"


def test_literal_lists_the_allowed_values(tmp_path):
    path = write(tmp_path, erm_with(optimizer="rmsprop"))
    assert error_of(path) == f"{path}: train.optimizer: 'rmsprop' is not one of 'sgd', 'adam', 'adamw'"


def test_missing_required_key(tmp_path):
    data = {k: v for k, v in ERM_DATA.items() if k != "dataset"}
    path = write(tmp_path, data)
    assert error_of(path) == f"{path}: dataset: missing (required)"


def test_missing_required_key_in_a_stage(tmp_path):
    data = dict(ERM_DATA, stages=[{"name": "first"}])
    assert error_of(write(tmp_path, data)).endswith("stages[0].method: missing (required)")


def test_empty_stage_list(tmp_path):
    data = dict(ERM_DATA, stages=[])
    assert error_of(write(tmp_path, data)).endswith("stages: must not be empty")


def test_wrong_shape_of_a_table(tmp_path):
    data = dict(ERM_DATA, train=3)
    assert error_of(write(tmp_path, data)).endswith("train: expected a table, got int 3")
    data = dict(ERM_DATA, metrics="avg_acc")
    assert error_of(write(tmp_path, data, "m.toml")).endswith("metrics: expected a list, got str 'avg_acc'")


def test_bad_toml_syntax_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train\nepochs = 3\n")
    message = error_of(path)
    assert message.startswith(f"{path}: not valid TOML: ")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    assert error_of(path) == f"{path}: no such pipeline file"


def test_config_error_is_a_value_error_with_exit_code_2():
    with pytest.raises(ValueError) as info:
        pipeline_from_dict({"dataset": {"name": "x"}})
    assert info.value.exit_code == 2
    assert str(info.value) == "<pipeline>: backbone: missing (required)"


# --- overrides ----------------------------------------------------------------------------------------


def test_override_sets_a_typed_value():
    config = pipeline_from_dict(ERM_DATA, ["train.lr=0.01", "train.epochs=3", "amp=false", "device=cpu"])
    assert config.train.lr == 0.01
    assert config.train.epochs == 3
    assert config.amp is False
    assert config.device == "cpu"  # not TOML: read as a bare string


def test_override_does_not_change_the_input_data():
    data = tomllib.loads(ERM_TOML.read_text())
    pipeline_from_dict(data, ["train.epochs=3", "stages.0.method=other"])
    assert data == ERM_DATA


def test_override_is_type_checked_and_names_the_key(tmp_path):
    path = write(tmp_path, ERM_DATA)
    assert error_of(path, ["train.epochs=abc"]) == f"{path}: train.epochs: expected an integer, got str 'abc'"
    assert error_of(path, ["train.epochs=0"]) == f"{path}: train.epochs: must be positive, got 0"
    assert "train.epochs: expected an integer, got float 2.5" in error_of(path, ["train.epochs=2.5"])


def test_override_creates_nested_tables():
    config = pipeline_from_dict(ERM_DATA, ["dataset.options.seed=3", "backbone.options.width=8"])
    assert config.dataset.options == {"scale": 1.0, "seed": 3}
    assert config.backbone.options == {"width": 8}


def test_override_into_a_list_by_index():
    data = dict(ERM_DATA, stages=[{"method": "erm"}, {"method": "erm", "name": "second"}])
    config = pipeline_from_dict(data, ["stages.1.method=dfr", "stages.0.options.alpha=0.5", "stages.1.train.lr=1e-4"])
    assert config.stages[0] == StageConfig(method="erm", options={"alpha": 0.5})
    assert config.stages[1] == StageConfig(method="dfr", name="second", train={"lr": 1e-4})
    config = pipeline_from_dict(ERM_DATA, ["stages.0.method=erm"])
    assert config.stages == [StageConfig(method="erm")]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("stages.1.method=erm", "override 'stages.1.method=erm': stages.1 is not an index of a list of 1"),
        ("stages.5.options.x=1", "override 'stages.5.options.x=1': stages.5 is not an index of a list of 1"),
        ("metrics.4=avg_acc", "override 'metrics.4=avg_acc': index 4 outside a list of 4"),
        ("stages.first.method=erm", "override 'stages.first.method=erm': stages.first is not an index of a list of 1"),
    ],
)
def test_override_outside_a_list_is_an_error(override, expected):
    with pytest.raises(ConfigError) as info:
        pipeline_from_dict(ERM_DATA, [override])
    assert str(info.value) == expected


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match=r"override 'seed.x=1': seed is a value, not a table"):
        pipeline_from_dict(ERM_DATA, ["seed.x=1"])


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=3"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match=r"override .*(expected KEY=VALUE|empty key)"):
        parse_override(text)


def test_override_list_value_and_quoted_string():
    config = pipeline_from_dict(ERM_DATA, ['metrics=["avg_acc", "worst_class_acc"]', 'selector="val-avg"'])
    assert config.metrics == ["avg_acc", "worst_class_acc"]
    assert config.selector == "val-avg"


@pytest.mark.parametrize("override, where", [("train.0=1", r"train(\.0|\[0\])"), ("0=1", r"(^|[\s'\[])0\b")])
def test_numeric_key_in_a_table_is_a_config_error(override, where):
    """A number in a key path indexes lists; used on a table it must be a ConfigError naming
    the key, like any other unknown key (today `difflib` is handed the int key and a
    TypeError escapes, so `spur run -o train.0=1` ends in a traceback)."""
    with pytest.raises(ConfigError) as info:
        pipeline_from_dict(ERM_DATA, [override])
    assert re.search(where, str(info.value)), str(info.value)


@settings(max_examples=100, deadline=None, database=None)
@given(st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False))
def test_overriding_lr_with_any_positive_float_gives_exactly_that_value(lr):
    config = pipeline_from_dict(ERM_DATA, [f"train.lr={lr!r}"])
    assert config.train.lr == lr


@settings(max_examples=60, deadline=None, database=None)
@given(st.integers(min_value=-10**6, max_value=10**6))
def test_overriding_epochs_accepts_exactly_the_positive_integers(epochs):
    if epochs > 0:
        assert pipeline_from_dict(ERM_DATA, [f"train.epochs={epochs}"]).train.epochs == epochs
    else:
        with pytest.raises(ConfigError, match=rf"train\.epochs: must be positive, got {epochs}$"):
            pipeline_from_dict(ERM_DATA, [f"train.epochs={epochs}"])


# --- round trip ---------------------------------------------------------------------------------------


def test_dumps_round_trips_the_example():
    config = load_pipeline(ERM_TOML)
    assert pipeline_from_dict(tomllib.loads(dumps(config))) == config


def test_dumps_round_trips_a_rich_pipeline():
    data = dict(
        ERM_DATA,
        stages=[
            {"method": "erm", "name": "base", "train": {"epochs": 2, "optimizer": "sgd"}},
            {"method": "dfr", "options": {"alphas": [0.1, 1.0], "nested": {"k": "v"}}},
        ],
        requires=["dfr"],
        amp=False,
        train=dict(ERM_DATA["train"], scheduler="cosine", keep_checkpoints="selected"),
    )
    config = pipeline_from_dict(data)
    text = dumps(config)
    assert pipeline_from_dict(tomllib.loads(text)) == config
    assert tomllib.loads(text)["train"]["eval_batch_size"] == 512  # the resolved config, defaults included


@settings(max_examples=50, deadline=None, database=None)
@given(
    lr=st.floats(min_value=1e-8, max_value=10, allow_nan=False),
    epochs=st.integers(1, 1000),
    seed=st.integers(0, 2**31),
    name=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12),
)
def test_dumps_round_trip_property(lr, epochs, seed, name):
    data = dict(ERM_DATA, seed=seed, train=dict(ERM_DATA["train"], lr=lr, epochs=epochs),
                stages=[{"method": "erm", "name": name}])
    config = pipeline_from_dict(data)
    assert pipeline_from_dict(tomllib.loads(dumps(config))) == config


# --- encodings and numbers that cannot train (issue 25) -------------------------------------------


def test_a_utf8_byte_order_mark_is_read_past(tmp_path):
    """Issue 25, item 9: an editor's BOM gave `not valid TOML: Invalid statement (at line 1, column 1)`."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ERM_TOML.read_bytes())
    assert load_pipeline(path) == load_pipeline(ERM_TOML)


def test_a_byte_that_is_not_utf8_is_named_with_its_file_line_and_column(tmp_path):
    """Issue 25, item 9: a Latin-1 byte in a comment raised UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(ERM_TOML.read_bytes() + "# café au lait\n".encode("latin-1"))
    line = ERM_TOML.read_bytes().count(b"\n") + 1
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} line {line}, column 6: byte 0xe9 is not UTF-8"):
        load_pipeline(path)
    path.write_bytes(b"\xef\xbb\xbf" + "seed = 0 # é\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"line 1, column 12: byte 0xe9"):
        load_pipeline(path)


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=nan", "train.lr=-inf", "train.weight_decay=inf",
                                      "train.momentum=nan", "stages.0.train.lr=nan"])
def test_numbers_that_are_not_finite_are_refused_naming_the_key(override):
    """Issue 25, item 3: `-o train.lr=inf` trained to NaN and exited 0; `lr = nan` ended in the
    optimizer's traceback."""
    key = override.split("=")[0].replace("stages.0", "stages[0]")
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: expected a finite number, got"):
        from spurcore.plugins import PluginManager
        from spurcore.planning import plan

        plan(pipeline_from_dict(ERM_DATA, [override], source="erm.toml"), PluginManager(entry_points=False))


@pytest.mark.parametrize("override, message", [
    ("dataset.options.scale=inf", "dataset.options.scale: expected a finite number, got inf"),
    ("train.momentum=1.0", "train.momentum: must be in [0, 1), got 1.0"),
    ("train.momentum=-0.1", "train.momentum: must be in [0, 1), got -0.1"),
])
def test_plugin_options_and_momentum_out_of_range_are_refused_at_planning(override, message):
    from spurcore.plugins import PluginManager
    from spurcore.planning import plan

    with pytest.raises(ConfigError, match=re.escape(f"erm.toml: {message}")):
        plan(pipeline_from_dict(ERM_DATA, [override], source="erm.toml"), PluginManager(entry_points=False))


# --- any pipeline file plans or is refused naming the file and key (issue 25) ----------------------


class Planned(Exception):
    """Raised at `spurcore_run_check`: the pipeline planned, its data and model were built and
    checked, and nothing was written yet."""


class StopAtCheck:
    @hookimpl
    def spurcore_run_check(self):
        raise Planned


def _keys(cls, prefix: str) -> list[str]:
    return [f"{prefix}{field.name}" for field in attrs.fields(cls) if field.metadata.get("saved", True)]


# every key of the schema a tiny pipeline has: the kernel's classes and the tiny plugins' options
SCHEMA_KEYS = [k for k in _keys(PipelineConfig, "") if k not in ("dataset", "backbone", "stages", "train", "init")]
SCHEMA_KEYS += _keys(TrainConfig, "train.") + _keys(TrainConfig, "stages.0.train.") + _keys(StageConfig, "stages.0.")
SCHEMA_KEYS += _keys(DatasetConfig, "dataset.") + _keys(TinyOptions, "dataset.options.") + _keys(MLPOptions, "backbone.options.")
SCHEMA_KEYS += ["backbone.name"]
TABLES = ["", "train", "dataset", "dataset.options", "backbone", "backbone.options", "stages.0", "stages.0.train",
          "stages.0.options", "settings"]
VALUES = st.one_of(
    st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
    st.lists(st.integers(-1, 3), max_size=3), st.dictionaries(st.sampled_from(["a", "n_train", "hidden"]),
                                                              st.integers(0, 3), max_size=2),
    st.sampled_from(["adam", "sgd", "none", "cosine", "auto", "full", "subset:5", "cpu", "cuda", "cuda:7", "val-wga",
                     "tiny", "mlp", "erm", "tiny-refit"]),
)
SET = st.tuples(st.just("set"), st.sampled_from(SCHEMA_KEYS), VALUES)
MUTATION = st.one_of(SET, SET, SET, st.tuples(st.just("unknown"), st.sampled_from(TABLES),
                                               st.from_regex(r"[a-z_]{1,10}", fullmatch=True)),
                     st.tuples(st.just("none")))
ENCODINGS = st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "utf-16", "latin-1", "stray byte"])


def _set(data: dict, key: str, value) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[parts[-1]] = value


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATION, encoding=ENCODINGS, where=st.floats(0, 1, exclude_max=True))
def test_any_pipeline_file_plans_or_is_refused_naming_the_file_and_key(spur_plugins, spur_register_plugin, spur_cli,
                                                                       tmp_path_factory, mutation, encoding, where):
    """Issue 25: a pipeline generated from the config schema, with one key set to any value
    (wrong types, out of range, not finite), an unknown key, or written with a byte order mark,
    in UTF-16, in Latin-1 or with a stray byte, either plans (its data and model built and
    checked) or stops with one message naming the file (and the key or line), exit code 1 or
    2, never another exception, and --out is never created; a number that is not finite never
    plans."""
    if not spur_plugins.pm.has_plugin("stop-at-check"):
        spur_register_plugin(StopAtCheck(), "stop-at-check")
    folder = tmp_path_factory.mktemp("pipeline")
    data = tiny_pipeline(train={"epochs": 1, "batch_size": 32, "lr": 0.01}, dataset={"name": "tiny", "options": {}},
                         backbone={"name": "mlp", "options": {}}, stages=[{"method": "erm", "options": {}, "train": {}}])
    key = None
    if mutation[0] == "set":
        key = mutation[1]
        _set(data, key, mutation[2])
    elif mutation[0] == "unknown":
        key = f"{mutation[1]}.{mutation[2]}" if mutation[1] else mutation[2]
        _set(data, key, 1)
    text = "# a pipeline, café\n" + toml_dumps(data)
    raw = text.encode("utf-8" if encoding == "stray byte" else encoding, errors="replace")
    if encoding == "stray byte":
        at = int(where * len(raw))
        raw = raw[:at] + b"\xff" + raw[at:]
    path = folder / "pipeline.toml"
    path.write_bytes(raw)
    out = folder / "out"
    try:
        result = spur_cli("run", path, "--out", out, "--quiet")
    except Planned:
        assert not out.exists()
        assert not (mutation[0] == "set" and isinstance(mutation[2], float) and not math.isfinite(mutation[2])), mutation
        return
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and message.startswith(f"Error: {path}"), message
    if encoding in ("utf-8", "utf-8-sig") and key is not None:  # the key, or the table it is in
        assert any(part in message for part in key.split(".") if not part.isdigit()), (key, message)
    assert not out.exists()
