"""Write docs/api.md, the plugin API page, from the table in spurcore/api.py.

    python docs/make_api_reference.py          # rewrite docs/api.md
    python docs/make_api_reference.py --check  # exit 1 when docs/api.md is out of date

tests/test_public_api.py fails when the committed page and spurcore.api drift apart.
"""

from __future__ import annotations

import inspect
import runpy
import sys
from pathlib import Path

from spurcore import api, testing

PAGE = Path(__file__).with_name("api.md")
# the hook reference's writer, which checks a page the same way
write_or_check = runpy.run_path(str(Path(__file__).with_name("make_hook_reference.py")))["write_or_check"]
HEADER = """\
# The plugin API

<!-- Generated from spurcore/api.py by docs/make_api_reference.py: edit the table there, then
     run `python docs/make_api_reference.py`. -->

What a plugin may import from spurcore: every name on this page, from `spurcore.api`
(`from spurcore.api import MitigationSpec, positive`), and `hookimpl` and `__version__` from
`spurcore` itself. These names keep their meaning across releases; anything else in the kernel
is internal and may change. The third-party example
[`examples/third_party/spurcore-jtt`](../examples/third_party/spurcore-jtt), the packages
`spur new-plugin` generates and every plugin of this repository use only these
(`tests/test_public_api.py` checks them). The hooks themselves are in the
[hook reference](hooks.md).

`spurcore.api` imports each name from its module when it is first read, so an entry module that
imports only options classes, validators and specs imports no torch, and `spur --help` does not
wait for it: name the implementation with `lazy("my_plugin.method:MyMethod")` and keep heavy
imports in the modules it names ([Startup](concepts.md#startup)).
"""
FOOTER = """\
## The test kit: `spurcore.testing`

Tests, and only tests, also import from `spurcore.testing`; a plugin's tests opt in to its
fixtures with `pytest_plugins = ["spurcore.testing"]` in a root `conftest.py`. Its fixtures, and
every argument and check of `mitigation_conformance`, are in
[writing-plugins.md](writing-plugins.md#7-test-it-with-the-kit). Its names:
"""


class _Named:
    """A default that is a function, shown by its name (`log=print`)."""

    def __init__(self, function: object) -> None:
        self.function = function

    def __repr__(self) -> str:
        return self.function.__name__


def signature(obj: object) -> str:
    """A function's parameters as a caller writes them: no annotations."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=p.empty, default=_Named(p.default) if inspect.isroutine(p.default) else p.default)
              for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def first_line(obj: object) -> str:
    """The first paragraph of the object's docstring, as the rest of a sentence."""
    text = (inspect.getdoc(obj) or "").split("\n\n", 1)[0].replace("\n", " ").strip()
    acronym = any(c.isupper() for c in text.split(" ", 1)[0][1:])  # "DFR: ...", not "A plugin ..."
    return text if acronym else text[:1].lower() + text[1:]


def entry(name: str, description: str | None) -> str:
    obj = getattr(api, name)
    shown = f"{name}{signature(obj)}" if inspect.isfunction(obj) else name
    return f"- `{shown}`: {description or first_line(obj)}"


def render() -> str:
    parts = [HEADER]
    for title, note, names in api.REFERENCE:
        parts += [f"## {title}", ""]
        if note:
            parts += [note, ""]
        parts += [entry(name, description) for name, (_, description) in names.items()]
        parts.append("")
    parts += [FOOTER, ", ".join(f"`{name}`" for name in sorted(testing.__all__)) + "."]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str]) -> int:
    return write_or_check(PAGE, render(), argv, "docs/make_api_reference.py")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
