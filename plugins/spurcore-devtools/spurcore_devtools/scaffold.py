"""`spur new-plugin`: a plugin package that installs and passes its own tests as generated.

The package is what a first-party plugin looks like: `pyproject.toml` with the `spurcore`
entry point, `spurcore_<name>/__init__.py` with a working hook implementation of its kind,
a README, and tests that use the test kit (`spurcore.testing`, which the pyproject's
`[tool.pytest.ini_options]` opts into), the first of which checks that the plugin is
installed (as simonw/llm's and datasette's plugin templates do). A mitigation is
a training stage that shapes the loss (`mitigation`) or a post-hoc stage that fits a new head
on frozen embeddings (`posthoc-mitigation`); an `observer` listens to a run's hooks, a
`launcher` runs a sweep's trials (it depends on spurcore-sweep, whose protocol it implements).
"""

from __future__ import annotations

import re
import string
from importlib import resources
from pathlib import Path

from spurcore.api import SpurcoreError, atomic

KINDS = ("mitigation", "posthoc-mitigation", "dataset", "backbone", "selector", "metric", "tracer", "observer",
         "launcher")
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

USAGE = {
    "mitigation": 'In a pipeline:\n\n```toml\n[[stages]]\nmethod = "$name"\n[stages.options]\npower = 1.0\n```',
    "posthoc-mitigation": 'In a pipeline, after the stage that trains the features:\n\n```toml\n[[stages]]\n'
                          'method = "erm"\n\n[[stages]]\nmethod = "$name"\n[stages.options]\nsteps = 200\n```',
    "dataset": 'In a pipeline:\n\n```toml\n[dataset]\nname = "$name"\n[dataset.options]\nn_train = 400\n```',
    "backbone": 'In a pipeline:\n\n```toml\n[backbone]\nname = "$name"\n[backbone.options]\nwidth = 32\n```',
    "selector": 'In a pipeline (top-level key):\n\n```toml\nselector = "$name"\n```',
    "metric": 'In a pipeline (top-level key):\n\n```toml\nmetrics = ["avg_acc", "worst_group_acc", "$name"]\n```',
    "tracer": "On a finished run (`spur trace` comes with spurcore-tracer):\n\n```\n"
              "spur trace runs/erm --tracer $name            # writes runs/erm/trace/$name/$module.json\n"
              "spur trace runs/erm --tracer $name --stage 0 --out elsewhere\n```",
    "observer": 'In a pipeline (it writes `$name.json` into the run folder):\n\n```toml\n[settings.$name]\n'
                'split = "val"\nmetric = "worst_group_acc"\n```',
    "launcher": "For a sweep (`spur sweep` comes with spurcore-sweep):\n\n```\n"
                "spur sweep pipeline.toml --out runs/sweep --seeds 0,1 --launcher $name --jobs 2\n"
                "spur sweep pipeline.toml --out runs/sweep --launcher $name --launcher-option 'prefix=[\"nice\"]'\n```\n\n"
                "The launcher protocol it implements: `docs/sweeps.md`, \"Writing a launcher\".",
}
# what a kind needs besides what every plugin package depends on
DEPENDENCIES = {"launcher": ("spurcore-sweep>=0.1",), "tracer": ("spurcore-tracer>=0.1",)}


def registers(kind: str) -> str:
    """The kind of spec a plugin of this scaffold kind registers (a post-hoc mitigation is a
    mitigation: `spurcore_register_mitigations`, `spur list mitigations`)."""
    return kind.removeprefix("posthoc-")


class ScaffoldError(SpurcoreError):
    """The plugin cannot be generated as asked; the message says why."""


def _render(template: str, values: dict[str, str]) -> str:
    text = resources.files("spurcore_devtools").joinpath("templates", template).read_text()
    return string.Template(text).substitute(values)


def new_plugin(name: str, kind: str, out: Path) -> Path:
    """Write the package `out/spurcore-<name>` and return its path; nothing is written when
    the name or kind is bad or the folder exists."""
    if not NAME.match(name):
        raise ScaffoldError(f"plugin name {name!r}: use lowercase letters, digits and single hyphens, "
                            f"starting with a letter (e.g. \"my-method\")")
    if kind not in KINDS:
        raise ScaffoldError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
    root = Path(out) / f"spurcore-{name}"
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another --out or name")
    module = f"spurcore_{name.replace('-', '_')}"
    values = {
        "name": name, "kind": kind, "kinds": f"{registers(kind)}s", "module": module, "dist": f"spurcore-{name}",
        "Class": "".join(part.capitalize() for part in name.split("-")),
        "summary": f"{name}: a spurcore {kind.replace('-', ' ')} plugin",
    }
    values["usage"] = string.Template(USAGE[kind]).substitute(values)
    values["dependencies"] = "".join(f', "{requirement}"' for requirement in DEPENDENCIES.get(kind, ()))
    files = {
        "pyproject.toml": _render("pyproject.toml.tmpl", values),
        "README.md": _render("README.md.tmpl", values),
        f"{module}/__init__.py": _render(f"{kind}.py.tmpl", values),
        f"tests/test_{module}.py": _render(f"{kind}_test.py.tmpl", values),
    }
    for relative, text in files.items():
        atomic.write_text(root / relative, text)
    return root
