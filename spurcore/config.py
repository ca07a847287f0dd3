"""Pipeline configuration: attrs classes, validated from TOML, with typed `-o` overrides.

A pipeline file names the dataset, the backbone, the training settings, the stages, the
selector and the metrics. Every error names the file and the key. Plugin options are
validated the same way, against the attrs class each plugin's spec declares.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from spurcore import tomlwriter
from spurcore.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class FieldError(ValueError):
    """A validator's complaint about one field; structuring adds where the field is."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value <= 0:
        raise FieldError(attribute.name, f"must be positive, got {value}")


def non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value < 0:
        raise FieldError(attribute.name, f"must be >= 0, got {value}")


def fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not 0 <= value <= 1:
        raise FieldError(attribute.name, f"must be in [0, 1], got {value}")


def non_empty(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if len(value) == 0:
        raise FieldError(attribute.name, "must not be empty")


TRAIN_EVAL_RULES = ("auto", "full", "none")


def parse_train_eval(value: str) -> tuple[str, int | None]:
    """`train_eval` -> (rule, N): ("auto" | "full" | "none", None) or ("subset", N)."""
    if value in TRAIN_EVAL_RULES:
        return value, None
    subset = re.fullmatch(r"subset:([1-9][0-9]*)", value)
    if subset:
        return "subset", int(subset.group(1))
    raise ValueError(f'must be "auto", "full", "subset:N" (N a positive integer) or "none", got {value!r}')


def _train_eval(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    try:
        parse_train_eval(value)
    except ValueError as exc:
        raise FieldError(attribute.name, str(exc)) from None


@attrs.frozen(kw_only=True)
class ComponentConfig:
    """A plugin chosen by name, with its options (validated by the plugin's options class)."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)


def _holdout(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value < 1:
        raise FieldError(attribute.name, f"must be in [0, 1), got {value}")


def _train_subset(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 < value <= 1:
        raise FieldError(attribute.name, f"must be in (0, 1], got {value}")


@attrs.frozen(kw_only=True)
class DatasetConfig(ComponentConfig):
    """The dataset; `train_subset`: the fraction of the training split kept, a uniform draw
    seeded by the pipeline's seed (`spurcore.data.train_subset_positions`), the rest unused,
    for estimates that train many models on random subsets (memorization scores); 1 keeps
    it whole. `holdout`: the fraction of every training group (of those kept) moved to a split
    of its own, `holdout` (seeded by the pipeline's seed; `spurcore.data.hold_out`), for
    methods that fit on data the model did not train on. 0 keeps the training split whole."""

    train_subset: float = attrs.field(default=1.0, validator=_train_subset)
    holdout: float = attrs.field(default=0.0, validator=_holdout)


def _workers(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise FieldError(attribute.name, f'must be a number of worker processes (>= 0) or "auto", got {value!r}')


def _momentum(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value < 1:
        raise FieldError(attribute.name, f"must be in [0, 1), got {value}")


@attrs.frozen(kw_only=True)
class TrainConfig:
    """How a training stage trains. A stage may override any of these in `[stages.train]`."""

    epochs: int = attrs.field(default=10, validator=positive)
    batch_size: int = attrs.field(default=64, validator=positive)
    eval_batch_size: int = attrs.field(default=512, validator=positive)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = attrs.field(default=1e-3, validator=positive)
    momentum: float = attrs.field(default=0.9, validator=_momentum)
    weight_decay: float = attrs.field(default=1e-4, validator=non_negative)
    scheduler: Literal["none", "cosine", "plateau"] = "none"
    num_workers: int | Literal["auto"] = attrs.field(default=0, validator=_workers)  # "auto": one per core
    channels_last: bool = False  # NHWC memory layout for conv nets (faster convolutions on recent GPUs)
    compile: bool = False  # torch.compile the model before training
    keep_checkpoints: Literal["all", "selected"] = "all"
    # which training examples are evaluated after every epoch (spurcore.evaluation.train_evaluation)
    train_eval: str = attrs.field(default="auto", validator=_train_eval)


@attrs.frozen(kw_only=True)
class StageConfig:
    """One stage: a mitigation by name, its options, and training overrides."""

    method: str
    name: str = ""
    options: dict[str, Any] = attrs.field(factory=dict)
    train: dict[str, Any] = attrs.field(factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.method


@attrs.frozen(kw_only=True)
class InitConfig:
    """Start from another run's model (weights and inserted layers) instead of a fresh backbone:
    a finished ERM run reused by post-hoc stages, or a fine-tuning stage's kick-in checkpoint."""

    run: str
    stage: int = -1  # the stage's index in that run; -1: its last stage
    epoch: int = -1  # -1: the epoch that stage's selector chose


def _device(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
        raise FieldError(attribute.name, f'must be "auto", "cpu", "cuda" or "cuda:N", got {value!r}')


@attrs.frozen(kw_only=True)
class PipelineConfig:
    """A whole pipeline: what `spur run` reads and saves, resolved, as `config.toml`."""

    dataset: DatasetConfig
    backbone: ComponentConfig
    stages: list[StageConfig] = attrs.field(validator=non_empty)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    selector: str = "val-worst-class"
    metrics: list[str] = attrs.field(
        factory=lambda: ["avg_acc", "worst_group_acc", "worst_class_acc", "group_acc"]
    )
    requires: list[str] = attrs.field(factory=list)
    init: InitConfig | None = None
    settings: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    seed: int = 0
    device: str = attrs.field(default="auto", validator=_device)  # whether CUDA is there is checked when a run starts
    amp: bool = True
    deterministic: bool = True  # torch's deterministic algorithms (spurcore.device.set_deterministic)
    # the file the pipeline was read from, for messages; not part of the pipeline (never saved)
    source: str = attrs.field(default="", eq=False, metadata={"saved": False})


# --- structuring: plain data -> attrs classes, with errors that name the key -------------


def structure(cls: type, data: Any, where: str = "") -> Any:
    """Build `cls` from plain data (TOML tables), checking every type; `where` prefixes errors."""
    return _convert(cls, data, where)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if attrs.has(tp):
        return _convert_attrs(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        item = args[0] if args else Any
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {_describe(value)}")
        item = args[1] if args else Any
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: cannot read {_describe(value)} as {tp}")


def _convert_attrs(cls: type, value: Any, where: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a table, got {_describe(value)}")
    attrs.resolve_types(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    unknown = [k for k in value if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"
        raise ConfigError(f"{_join(where, key)}: unknown key{hint}")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(field.type, value[name], _join(where, name))
        elif field.default is attrs.NOTHING:
            raise ConfigError(f"{_join(where, name)}: missing (required)")
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise ConfigError(f"{_join(where, exc.field)}: {exc.message}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# --- files and overrides -------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """`section.key=value` -> (path, value); the value is read as a TOML literal when it is
    one (numbers, booleans, lists, quoted strings) and as a bare string otherwise."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    path: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    if not key.strip() or any(p == "" for p in path):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_override(data: dict[str, Any], path: Sequence[str | int], value: Any, text: str) -> None:
    """Set `value` at `path` inside plain pipeline data; lists are indexed by number."""
    node: Any = data
    for depth, step in enumerate(path[:-1]):
        where = ".".join(map(str, path[: depth + 1]))
        if isinstance(node, list):
            if not isinstance(step, int) or step >= len(node):
                raise ConfigError(f"override {text!r}: {where} is not an index of a list of {len(node)}")
            node = node[step]
        else:
            node = node.setdefault(str(step), {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {text!r}: {where} is a value, not a table")
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(f"override {text!r}: index {last} outside a list of {len(node)}")
        node[last] = value
    else:
        node[str(last)] = value


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read, override and validate a pipeline file. Errors name the file and key."""
    path = Path(path)
    return pipeline_from_dict(read_toml(path, "pipeline file"), overrides, source=str(path))


BOM = b"\xef\xbb\xbf"


def read_toml(path: str | Path, what: str = "TOML file") -> dict[str, Any]:
    """The TOML file at `path` as plain data. A UTF-8 byte order mark is read past (editors on
    Windows write one); any other error names the file, and a byte that is not UTF-8 its line,
    column and value (TOML files are UTF-8)."""
    path = Path(path)
    try:
        body = path.read_bytes().removeprefix(BOM)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a {what}") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = body.rfind(b"\n", 0, exc.start) + 1
        line = body.count(b"\n", 0, exc.start) + 1
        column = len(body[line_start:exc.start].decode("utf-8", errors="replace")) + 1
        raise ConfigError(f"{path} line {line}, column {column}: byte 0x{body[exc.start]:02x} is not UTF-8 (TOML files "
                          f"are UTF-8: save it as UTF-8)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def pipeline_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = (), source: str = "<pipeline>") -> PipelineConfig:
    data = _plain(data)
    for text in overrides:
        key, value = parse_override(text)
        apply_override(data, key, value, text)
    if "source" in data:
        raise ConfigError(f"{source}: source: unknown key")
    try:
        return attrs.evolve(structure(PipelineConfig, data), source=source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data for an attrs config (the inverse of `structure`), without unsaved fields."""
    return attrs.asdict(config, recurse=True, filter=lambda field, value: field.metadata.get("saved", True))


def dumps(config: PipelineConfig) -> str:
    return tomlwriter.dumps({k: v for k, v in to_dict(config).items() if v is not None})


def _plain(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data
