"""Write docs/hooks.md, the hook reference, from the docstrings of spurcore/hookspecs.py.

    python docs/make_hook_reference.py          # rewrite docs/hooks.md
    python docs/make_hook_reference.py --check  # exit 1 when docs/hooks.md is out of date

tests/test_hookspecs_docs.py fails when the committed page and the hookspecs drift apart.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

from spurcore import hookspecs

PAGE = Path(__file__).with_name("hooks.md")
SECTIONS = (
    ("Registration hooks", "spurcore_register_"),
    ("Lifecycle hooks", None),
    ("Stage hooks", ("spurcore_prepare_model", "spurcore_train_sampler", "spurcore_train_loss", "spurcore_posthoc_head")),
)


def literal_blocks(text: str, language: str) -> str:
    """reStructuredText's `para::` + indented block -> `para:` + a fenced code block."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            out.append(line.rstrip()[:-1])
            block, i = [], i + 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            out += ["", f"```{language}", textwrap.dedent("\n".join(block)).strip("\n"), "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip() + "\n"


def hooks_in_source_order() -> list[str]:
    names = [n for n in dir(hookspecs) if n.startswith("spurcore_")]
    return sorted(names, key=lambda n: inspect.getsourcelines(getattr(hookspecs, n))[1])


def section_of(name: str) -> str:
    for title, match in SECTIONS:
        if match is None:
            continue
        if (isinstance(match, str) and name.startswith(match)) or (isinstance(match, tuple) and name in match):
            return title
    return "Lifecycle hooks"


def signature(function) -> str:
    """The spec's signature as written (annotations are strings under `from __future__`)."""
    sig = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {function.__name__}({params}) -> {sig.return_annotation}"


def render_hook(name: str) -> str:
    function = getattr(hookspecs, name)
    lines = [f"### `{name}`", "", "```python", signature(function), "```", ""]
    if function.spurcore_spec.get("firstresult"):
        lines += ["*firstresult*: the implementations run until one returns a value other than None; that value is used.", ""]
    lines.append(literal_blocks(inspect.getdoc(function), "python"))
    return "\n".join(lines)


def render() -> str:
    intro = literal_blocks(inspect.getdoc(hookspecs), "text")
    parts = [
        "# Hook reference",
        "",
        "<!-- Generated from spurcore/hookspecs.py by docs/make_hook_reference.py: edit the",
        "     docstrings there, then run `python docs/make_hook_reference.py`. -->",
        "",
        "Import the marker with `from spurcore import hookimpl`. An implementation may take any",
        "subset of a hook's arguments, by name. Set `SPURCORE_TRACE_HOOKS=1` to print every hook",
        "call, its arguments and the plugins that implement it, in the order they run.",
        "",
        "## The contract",
        "",
        intro,
    ]
    by_section: dict[str, list[str]] = {title: [] for title, _ in SECTIONS}
    for name in hooks_in_source_order():
        by_section[section_of(name)].append(name)
    for title, names in by_section.items():
        parts += [f"## {title}", ""]
        parts += [render_hook(name) for name in names]
    return "\n".join(parts).rstrip() + "\n"


def write_or_check(page: Path, text: str, argv: list[str], script: str) -> int:
    """Write a generated page; with `--check`, 1 when the committed page differs from `text`
    (docs/make_api_reference.py uses it too)."""
    if "--check" in argv:
        if page.read_text() != text:
            print(f"{page} is out of date: run python {script}", file=sys.stderr)
            return 1
        return 0
    page.write_text(text)
    print(f"wrote {page}")
    return 0


def main(argv: list[str]) -> int:
    return write_or_check(PAGE, render(), argv, "docs/make_hook_reference.py")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
