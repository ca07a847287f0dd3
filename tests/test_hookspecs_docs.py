"""The hook contract is documentation: every hook says when it is called, what it receives,
and shows an example; the module docstring's calling sequence names exactly the hooks that
exist, with their arguments; and the runner calls them in that documented order."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap

import pluggy
import pytest
from torch import nn

from spurcore import hookimpl, hookspecs
from spurcore.runner import run_pipeline
from spurcore.specs import SPEC_TYPES, MitigationSpec

HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("spurcore_") and callable(getattr(hookspecs, n)))
REGISTRATION = [h for h in HOOKS if h.startswith("spurcore_register_")]
RUN_HOOKS = [h for h in HOOKS if h not in REGISTRATION]
MODULE_DOC = hookspecs.__doc__
SEQUENCE = MODULE_DOC.split("The calling sequence of `spur run`::", 1)[1].split("\n\n", 2)[1]
CALL = re.compile(r"(spurcore_\w+)\(([^)]*)\)")


def spec_args(hook: str) -> list[str]:
    return list(inspect.signature(getattr(hookspecs, hook)).parameters)


def doc(hook: str) -> str:
    return inspect.getdoc(getattr(hookspecs, hook)) or ""


def prose(hook: str) -> str:
    """The docstring without its example."""
    return doc(hook).split("Example::", 1)[0]


def example(hook: str) -> str:
    after = doc(hook).split("Example::", 1)[1]
    return textwrap.dedent(after.strip("\n"))


def word(name: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text, flags=re.IGNORECASE) is not None


def test_the_hook_list_is_complete():
    # the parametrised tests below see exactly the hooks pluggy registers from the module
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    specs = sorted(name for name in dir(pm.hook) if getattr(getattr(pm.hook, name), "spec", None) is not None)
    assert specs == HOOKS
    # one per kernel kind, plus the commands hook and the hook by which plugins declare kinds of their own
    extra = ("spurcore_register_commands", "spurcore_register_kinds")
    assert len(REGISTRATION) == len(SPEC_TYPES) + len(extra)
    assert sorted(f"spurcore_register_{kind}" for kind in SPEC_TYPES) == [h for h in REGISTRATION if h not in extra]


# --- each hook's docstring ------------------------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_docstring_says_when_the_hook_is_called(hook):
    text = prose(hook)
    assert len(text.split()) >= 8, f"{hook}: docstring too short to say anything"
    # "Called once per ...", or, for notifications, the event itself ("A run begins", "An epoch finished")
    assert re.search(r"\bCalled\b", text) or re.search(r"\b(begins|finished|failed)\b", text), (
        f"{hook}: the docstring does not say when the hook is called"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_argument_is_documented(hook):
    """An argument is documented when its own docstring names it, when the module docstring
    explains it (`run`, `stage`, the loop variables epoch / batch / split, the loss), or when
    the docstring describes it by its type (`cli`: "the root click group")."""
    signature = inspect.signature(getattr(hookspecs, hook))
    module_prose = CALL.sub("", MODULE_DOC)  # the argument lists of the calls document nothing
    for name, parameter in signature.parameters.items():
        # the last word of the annotated type: click.Group -> "Group", BaseException -> "Exception"
        type_words = re.findall(r"[A-Z][a-z]+", str(parameter.annotation).split("|")[0].rsplit(".", 1)[-1])
        documented = (
            word(name, prose(hook))
            or word(name, module_prose)
            or (bool(type_words) and word(type_words[-1], prose(hook)))
        )
        assert documented, f"{hook}: argument {name!r} is documented nowhere"
    for name in ("run", "stage"):
        assert f"`{name}` is a `spurcore.context." in MODULE_DOC


@pytest.mark.parametrize("hook", HOOKS)
def test_docstring_has_an_example_that_implements_the_hook(hook):
    assert "Example::" in doc(hook), f"{hook}: no Example:: block"
    tree = ast.parse(example(hook))  # the example is valid Python
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == hook]
    assert defs, f"{hook}: the example does not define {hook}"
    decorators = [ast.unparse(d) for d in defs[0].decorator_list]
    assert decorators == ["hookimpl"], f"{hook}: the example's implementation is not marked @hookimpl"


@pytest.mark.parametrize("hook", HOOKS)
def test_example_signatures_fit_the_spec(hook):
    """pluggy lets an implementation take fewer arguments than its spec, never others; and a
    function that uses `self` must take it (it is a method of the plugin object)."""
    tree = ast.parse(example(hook))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("spurcore_")):
            continue
        if [ast.unparse(d) for d in node.decorator_list] == ["hookspec"]:
            continue  # a plugin's own hook specification (spurcore_register_kinds' example)
        assert node.name in HOOKS, f"{hook}: the example implements unknown hook {node.name}"
        params = [a.arg for a in node.args.args]
        extra = set(params) - set(spec_args(node.name)) - {"self"}
        assert not extra, f"{hook}: example's {node.name} takes {sorted(extra)}, not in the spec"
        uses_self = any(isinstance(n, ast.Name) and n.id == "self" for n in ast.walk(node))
        if uses_self:
            assert params[:1] == ["self"], f"{hook}: example's {node.name} uses `self` but does not take it"


# --- the module docstring's calling sequence ------------------------------------------------------


def sequence_calls() -> dict[str, list[str]]:
    calls = {}
    for match in CALL.finditer(SEQUENCE):
        calls[match.group(1)] = [a.strip() for a in match.group(2).split(",") if a.strip()]
    return calls


def test_every_hook_named_in_the_sequence_exists():
    calls = sequence_calls()
    assert len(calls) >= 10
    unknown = sorted(set(calls) - set(HOOKS))
    assert not unknown, f"the calling sequence names hooks that do not exist: {unknown}"


def test_every_run_hook_appears_in_the_sequence():
    missing = sorted(set(RUN_HOOKS) - set(sequence_calls()))
    assert not missing, f"hooks missing from the calling sequence in hookspecs' docstring: {missing}"
    # the registration hooks are covered by the `spurcore_register_*` paragraph instead
    assert "`spurcore_register_*`" in MODULE_DOC
    assert not set(REGISTRATION) & set(sequence_calls())


def test_sequence_arguments_match_the_specs():
    for hook, args in sequence_calls().items():
        assert args == spec_args(hook), f"{hook}: sequence says {args}, spec takes {spec_args(hook)}"


def test_firstresult_hooks_are_marked_in_the_sequence():
    lines = {m.group(1): line for line in SEQUENCE.splitlines() for m in CALL.finditer(line)}
    for hook in RUN_HOOKS:
        firstresult = getattr(getattr(hookspecs, hook), "spurcore_spec")["firstresult"]
        assert ("firstresult" in lines[hook]) == firstresult, hook


# --- the runner follows the documented sequence ----------------------------------------------------


class Recorder:
    """Records every run-time hook (and checks the promises its docstring makes)."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def spurcore_run_start(self, run):
        self.calls.append(("run_start",))

    @hookimpl
    def spurcore_stage_start(self, stage):
        self.calls.append(("stage_start", stage.index))

    @hookimpl
    def spurcore_epoch_start(self, epoch):
        self.calls.append(("epoch_start", epoch))

    @hookimpl
    def spurcore_batch_end(self, epoch, step):
        self.calls.append(("batch_end", epoch, step))

    @hookimpl
    def spurcore_evaluation_start(self, stage, epoch, split):
        assert not stage.model.training
        self.calls.append(("evaluation_start", epoch, split))

    @hookimpl
    def spurcore_evaluation_batch(self, epoch, split):
        self.calls.append(("evaluation_batch", epoch, split))

    @hookimpl
    def spurcore_evaluation_end(self, epoch, split, metrics):
        assert 0 <= metrics["avg_acc"] <= 1
        self.calls.append(("evaluation_end", epoch, split))

    @hookimpl
    def spurcore_epoch_end(self, run, stage, epoch, metrics):
        assert run.out.checkpoint(stage.key, epoch).is_file(), "epoch_end before the checkpoint is written"
        assert list(metrics) == ["train", "val", "test", "train_loss"]
        self.calls.append(("epoch_end", epoch))

    @hookimpl
    def spurcore_stage_end(self, stage, result):
        assert result["name"] == stage.name
        self.calls.append(("stage_end", stage.index))

    @hookimpl
    def spurcore_run_end(self, run, summary):
        for path in (run.out.summary, run.out.report, run.out.figure, run.out.config, run.out.metrics):
            assert path.is_file(), f"run_end before {path.name} is written"
        self.calls.append(("run_end",))

    @hookimpl
    def spurcore_run_error(self, error):
        self.calls.append(("run_error", type(error).__name__))


class RecordedTrain:
    """A train method that records its stage hooks (only a stage's object may implement them)
    and leaves the kernel's defaults in place (a plain shuffle, cross-entropy)."""

    def __init__(self, calls):
        self.calls = calls

    @hookimpl
    def spurcore_prepare_model(self, stage, model):
        assert model is stage.model
        self.calls.append(("prepare_model", stage.index))

    @hookimpl
    def spurcore_train_sampler(self, epoch, generator):
        self.calls.append(("train_sampler", epoch))

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        assert model.training
        self.calls.append(("train_loss",))


class Refit:
    """A post-hoc method: a fresh linear head."""

    def __init__(self, calls):
        self.calls = calls

    @hookimpl
    def spurcore_posthoc_head(self, stage, model, embeddings):
        assert embeddings["val"].features.shape == (120, 16)
        self.calls.append(("posthoc_head", stage.index))
        return nn.Linear(model.feature_dim, 2)


class RefitPlugin:
    """`recorded` and `refit`, both recording into `calls` (a Recorder's)."""

    def __init__(self, calls=None):
        self.calls = [] if calls is None else calls

    @hookimpl
    def spurcore_register_mitigations(self):
        return [MitigationSpec(name="recorded", factory=lambda options: RecordedTrain(self.calls)),
                MitigationSpec(name="refit", factory=lambda options: Refit(self.calls), kind="posthoc")]


def documented_sequence(epochs: int, train_batches: int, eval_batches: dict[str, int]) -> list[tuple]:
    """The calling sequence of hookspecs' docstring, for an ERM stage then a post-hoc stage."""

    def evaluation(epoch):
        calls = []
        for split, n in eval_batches.items():
            calls.append(("evaluation_start", epoch, split))
            calls += [("evaluation_batch", epoch, split)] * n
            calls.append(("evaluation_end", epoch, split))
        return calls

    calls = [("prepare_model", 0), ("run_start",), ("stage_start", 0), ("prepare_model", 0)]
    for epoch in range(1, epochs + 1):
        calls += [("epoch_start", epoch), ("train_sampler", epoch)]
        for step in range(train_batches):
            calls += [("train_loss",), ("batch_end", epoch, step)]
        calls += evaluation(epoch)
        calls.append(("epoch_end", epoch))
    calls.append(("stage_end", 0))
    calls += [("stage_start", 1), ("posthoc_head", 1)] + evaluation(0) + [("stage_end", 1)]
    calls.append(("run_end",))
    return calls


def test_runner_calls_hooks_in_the_documented_order(spur_plugins, spur_tiny_config, tmp_path):
    recorder = Recorder()
    spur_plugins.register(RefitPlugin(recorder.calls), "refit")
    spur_plugins.register(recorder, "recorder")
    config = spur_tiny_config(
        train={"epochs": 2, "batch_size": 100, "eval_batch_size": 100, "lr": 0.01},
        stages=[{"method": "recorded"}, {"method": "refit"}],
    )
    run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda message: None)
    # tiny: 200 train examples (2 batches of 100), val 120 and test 160 (2 batches each); train
    # is evaluated first (train_eval "auto": every example of the in-memory split)
    expected = documented_sequence(epochs=2, train_batches=2, eval_batches={"train": 2, "val": 2, "test": 2})
    assert recorder.calls == expected


def test_run_error_is_called_once_when_a_stage_fails(spur_plugins, spur_tiny_config, tmp_path):
    class Boom:
        def __init__(self, options):
            pass

        @hookimpl
        def spurcore_train_loss(self):
            raise RuntimeError("loss exploded")

    class BoomPlugin:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="boom", factory=Boom)]

    recorder = Recorder()
    spur_plugins.register(recorder, "recorder")
    spur_plugins.register(BoomPlugin(), "boom")
    with pytest.raises(RuntimeError, match="loss exploded"):
        run_pipeline(spur_tiny_config(stages=[{"method": "boom"}]), tmp_path / "run", spur_plugins, log=lambda message: None)
    assert recorder.calls[-1] == ("run_error", "RuntimeError")
    assert [c for c in recorder.calls if c[0] in ("run_error", "run_end", "stage_end")] == [("run_error", "RuntimeError")]


# --- the generated hook reference (docs/hooks.md) ----------------------------------------------


def load_reference_builder():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "docs" / "make_hook_reference.py"
    spec = importlib.util.spec_from_file_location("make_hook_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_reference_page_is_generated_from_the_current_hookspecs():
    builder = load_reference_builder()
    assert builder.PAGE.read_text() == builder.render(), (
        "docs/hooks.md has drifted from spurcore/hookspecs.py: run python docs/make_hook_reference.py"
    )


def test_hook_reference_documents_every_hook_with_its_signature_and_example():
    text = load_reference_builder().render()
    for hook in HOOKS:
        section = text.split(f"### `{hook}`", 1)[1].split("\n### ", 1)[0]
        signature = section.split("```python\n", 1)[1].split("\n", 1)[0]
        assert re.findall(r"(?:\(|, )(\w+): ", signature) == spec_args(hook), signature
        assert f"@hookimpl\ndef {hook}(" in section, f"{hook}: its example is missing from docs/hooks.md"
        firstresult = getattr(hookspecs, hook).spurcore_spec["firstresult"]
        assert ("*firstresult*" in section) == firstresult, hook
    assert text.index("## Registration hooks") < text.index("## Lifecycle hooks") < text.index("## Stage hooks")
    assert "```text\nfor each train stage: spurcore_prepare_model(run, stage, model)" in text  # the calling sequence, as a code block


def test_hook_reference_check_mode_reports_drift(tmp_path, monkeypatch, capsys):
    builder = load_reference_builder()
    stale = tmp_path / "hooks.md"
    stale.write_text(builder.render().replace("spurcore_train_loss", "spurcore_old_loss", 1))
    monkeypatch.setattr(builder, "PAGE", stale)
    assert builder.main(["--check"]) == 1
    assert "is out of date: run python docs/make_hook_reference.py" in capsys.readouterr().err
    stale.write_text(builder.render())
    assert builder.main(["--check"]) == 0


def test_on_resume_the_state_comes_back_after_stage_start_and_prepare_model(spur_plugins, spur_tiny_config, tmp_path):
    calls = []

    class Resumable:
        stop_at = 2

        def __init__(self, options):
            pass

        @hookimpl
        def spurcore_stage_start(self, stage):
            calls.append(("stage_start", stage.first_epoch))

        @hookimpl
        def spurcore_prepare_model(self):
            calls.append(("prepare_model",))

        @hookimpl
        def spurcore_epoch_start(self, epoch):
            calls.append(("epoch_start", epoch))
            if epoch == Resumable.stop_at:
                raise RuntimeError("interrupted")

        def state_dict(self):
            return {"epochs": len([c for c in calls if c[0] == "epoch_start"])}

        def load_state_dict(self, state):
            calls.append(("load_state_dict", state["epochs"]))

    class Plugin:
        @hookimpl
        def spurcore_register_mitigations(self):
            return [MitigationSpec(name="resumable", factory=Resumable)]

    spur_plugins.register(Plugin(), "resumable")
    config = spur_tiny_config(stages=[{"method": "resumable"}], train={"epochs": 3, "batch_size": 100})
    with pytest.raises(RuntimeError, match="interrupted"):
        run_pipeline(config, tmp_path / "run", spur_plugins, log=lambda message: None)
    Resumable.stop_at = None
    calls.clear()
    run_pipeline(config, tmp_path / "run", spur_plugins, resume=True, log=lambda message: None)
    # the replay on a copy before anything is written, then the documented order
    assert calls == [("prepare_model",), ("stage_start", 2), ("prepare_model",), ("load_state_dict", 1),
                     ("epoch_start", 2), ("epoch_start", 3)]
