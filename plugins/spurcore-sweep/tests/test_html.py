"""`spur report DIR --html`: one self-contained page for a run and for a sweep. The tests parse
it: every image is an embedded PNG, every table is there, nothing is fetched from elsewhere;
where headless Chromium is installed, it loads the page without console errors."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from click.testing import CliRunner
from spurcore.testing import TinyPlugin, tiny_pipeline

import spurcore_sweep
from spurcore.api import PluginManager, cli, load_pipeline, run_pipeline, toml_dumps

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """What the tests read of a page: images, tables (by `data-table`), galleries, links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images, self.tables, self.galleries, self.external = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "table":
            self.tables.append(attrs.get("data-table"))
        if tag == "div" and "data-group" in attrs:
            self.galleries.append(attrs["data-group"])
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])


def manager() -> PluginManager:
    pm = PluginManager(block=["progress"])
    pm.register(TinyPlugin(), "tiny")
    if pm.pm.get_plugin("sweep") is None:
        pm.register(spurcore_sweep, "sweep")
    return pm


def invoke(pm, *args):
    pm.hook.spurcore_register_commands(cli=cli)
    return CliRunner().invoke(cli, list(map(str, args)), obj={"manager": pm, "plugin_args": []})


def every_image_is_an_embedded_png(page: Page) -> None:
    assert page.images and not page.external
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)


def fake_trace(run: Path) -> None:
    """A tracer's output folder as `spur trace` writes it (the keys the page reads)."""
    folder = run / "trace" / "memorization"
    folder.mkdir(parents=True)
    trace = {"stage": 0, "epoch": 2, "groups": ["neg/off", "neg/on", "pos/off", "pos/on"],
             "scores": {"top": {"gradient:1": [{"neuron": "embed.0[3]", "score": 2.5}],
                                "magnitude": [{"neuron": "head[0]", "score": 1.0}]}},
             "summary": [{"criterion": "gradient", "intervention": "zero", "scope": "global", "split": "train",
                          "minority_abs": 12.5, "majority_abs": 1.25}]}
    (folder / "trace.json").write_text(json.dumps(trace))
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.bar([0, 1], [1, 2])
    fig.savefig(folder / "group_bars_train.png")
    plt.close(fig)


def fake_scores(path: Path, y: np.ndarray, a: np.ndarray) -> None:
    """A scores file in the documented layout, the last examples scored highest."""
    with h5py.File(path, "w") as handle:
        train = handle.create_group("train")
        train.attrs["group_names"] = ["neg/off", "neg/on", "pos/off", "pos/on"]
        train["index"] = np.arange(len(y))
        train["y"] = y
        train["group"] = y * 2 + a
        scores = np.linspace(0, 1, len(y))
        scores[0] = np.nan
        train["memorization"] = scores


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "run"
    pm = manager()
    path = out.parent / "tiny.toml"
    path.write_text(toml_dumps(tiny_pipeline(train={"epochs": 2, "batch_size": 50, "lr": 0.01})))
    run_pipeline(load_pipeline(path), out, pm, log=lambda *a, **k: None, quiet=True)
    return out


def test_a_runs_page_embeds_its_tables_figures_trace_gallery_and_config(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    fake_trace(folder)
    from spurcore.api import open_run

    data = open_run(folder, manager()).data.splits["train"]
    scores = tmp_path / "scores.h5"
    fake_scores(scores, data.y, data.a)
    result = invoke(manager(), "report", folder, "--html", "--scores", scores, "--gallery", "3")
    assert result.exit_code == 0, result.output
    text = (folder / "report.html").read_text()
    page = Page(text)
    every_image_is_an_embedded_png(page)
    assert page.tables == ["groups", "trace-neurons", "trace-effects"]
    assert page.galleries == ["neg/off", "neg/on", "pos/off", "pos/on"]
    assert len(page.images) == 2 + 1 + 4 * 3  # group_acc and group_acc_epochs, the trace's figure, 3 per group
    assert "gradient, neg/on" in text and "embed.0[3] (2.5)" in text and "12.5" in text
    assert "<pre>" in text and "[dataset]" in text and "worst group" in text
    assert "<script" not in text and "http" not in text.split("</style>")[0]


def test_a_scores_file_of_another_split_is_named_not_drawn(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    scores = tmp_path / "other.h5"
    fake_scores(scores, np.zeros(7, int), np.zeros(7, int))
    result = invoke(manager(), "report", folder, "--html", "--scores", scores)
    assert result.exit_code == 0, result.output
    assert f"{scores}: scores for 7 training examples, but this run has 200; no gallery." in \
        (folder / "report.html").read_text()


def test_a_sweeps_page_has_the_comparison_and_every_run(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(toml_dumps(tiny_pipeline(train={"epochs": 2, "batch_size": 50, "lr": 0.01})))
    out = tmp_path / "sweep"
    swept = invoke(manager(), "sweep", path, "--grid", "train.lr=0.01,0.1", "--seeds", "0", "--out", out)
    assert swept.exit_code == 0, swept.output
    result = invoke(manager(), "report", out, "--html", "--selector", "val-wga")
    assert result.exit_code == 0, result.output
    text = (out / "report.html").read_text()
    page = Page(text)
    every_image_is_an_embedded_png(page)
    assert page.tables == ["comparison", "groups", "groups"]
    assert text.count("<details>") == 2 and "| erm |" not in text and "<td>erm</td>" in text
    assert len(page.images) == 1 + 2 * 2  # wga.png, then each run's two figures


def test_a_folder_that_is_neither_is_refused(tmp_path):
    result = invoke(manager(), "report", tmp_path, "--html")
    assert result.exit_code != 0 and "neither a sweep (sweep.json) nor a finished run (summary.json)" in result.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser on PATH (Debian's package)")
def test_headless_chromium_loads_the_page_without_console_errors(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    assert invoke(manager(), "report", folder, "--html").exit_code == 0
    shot = tmp_path / "report.png"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--screenshot={shot}", "--window-size=1100,1400",
                           (folder / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console, "\n".join(console)
    assert shot.read_bytes().startswith(PNG)
