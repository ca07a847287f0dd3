"""The kernel's TOML writer: what it writes reads back as the same data, in the layout tomli-w
wrote before it replaced that dependency (the expected texts below are tomli-w 1.2's output)."""

from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import given, strategies as st
from spurcore.testing import tiny_pipeline

from spurcore.config import dumps as dump_pipeline, pipeline_from_dict
from spurcore.tomlwriter import dumps, literal

CHARS = st.characters(blacklist_categories=("Cs",))  # lone surrogates are no text
KEYS = st.text(CHARS, max_size=6)
SCALARS = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.text(CHARS, max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
                      max_leaves=20)


@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_what_it_writes_reads_back_as_the_same_data(table):
    assert tomllib.loads(dumps(table)) == table


@given(VALUES)
def test_a_literal_reads_back_as_its_value(value):
    assert tomllib.loads(f"v = {literal(value)}")["v"] == value


def test_nan_is_written_as_toml_nan():
    assert math.isnan(tomllib.loads(dumps({"x": math.nan}))["x"])


@pytest.mark.parametrize("value, text", [
    (1e-05, "1e-05"), (0.1, "0.1"), (1e16, "1e+16"), (float("inf"), "inf"), (3, "3"), (True, "true"),
    ('a"b\\c\t\x01\x7f', '"a\\"b\\\\c\t\\u0001\\u007f"'), ([], "[]"), (["block3"], '[\n    "block3",\n]'),
    ([[1, 2], [3]], "[\n    [\n        1,\n        2,\n    ],\n    [\n        3,\n    ],\n]"),
    ({"a": 1, "b": []}, "{ a = 1, b = [] }"), ({}, "{}"), ([{"method": "dfr"}], '[\n    { method = "dfr" },\n]'),
])
def test_literals_are_written_as_tomli_w_wrote_them(value, text):
    assert literal(value) == text


def test_tables_lists_of_tables_and_keys_are_laid_out_as_tomli_w_laid_them_out():
    # a list of tables that all fit on a line stays inline; one that does not makes every one a
    # [[section]]; a table holding only tables gets no header of its own; odd keys are quoted
    assert dumps({"stages": [{"method": "erm"}], "k e": 1}) == 'stages = [\n    { method = "erm" },\n]\n"k e" = 1\n'
    assert dumps({"stages": [{"method": "x" * 120}, {"method": "y"}], "a": {}, "b": {"c": {"d": 1}}}) == (
        f'[[stages]]\nmethod = "{"x" * 120}"\n\n[[stages]]\nmethod = "y"\n\n[a]\n\n[b.c]\nd = 1\n')


def test_a_resolved_pipeline_is_written_as_before():
    data = tiny_pipeline(stages=[{"method": "erm", "name": "identify", "train": {"epochs": 2}},
                                 {"method": "fairdropout", "options": {"placement": ["block3"], "p_gen": 0.5}}],
                         settings={"mlflow": {"uri": "file:/tmp/a b", "tags": {"x.y": 'q"\n'}}}, metrics=["avg_acc"])
    assert dump_pipeline(pipeline_from_dict(data)) == (
        'selector = "val-wga"\nmetrics = [\n    "avg_acc",\n]\nrequires = []\nseed = 0\ndevice = "cpu"\namp = true\n'
        'deterministic = true\n\n[dataset]\nname = "tiny"\ntrain_subset = 1.0\nholdout = 0.0\n\n[dataset.options]\n\n'
        '[backbone]\nname = "mlp"\n\n[backbone.options]\n\n[[stages]]\nmethod = "erm"\nname = "identify"\n\n'
        '[stages.options]\n\n[stages.train]\nepochs = 2\n\n[[stages]]\nmethod = "fairdropout"\nname = ""\n\n'
        '[stages.options]\nplacement = [\n    "block3",\n]\np_gen = 0.5\n\n[stages.train]\n\n[train]\nepochs = 3\n'
        'batch_size = 32\neval_batch_size = 512\noptimizer = "adam"\nlr = 0.01\nmomentum = 0.9\nweight_decay = 0.0001\n'
        'scheduler = "none"\nnum_workers = 0\nchannels_last = false\ncompile = false\nkeep_checkpoints = "all"\n'
        'train_eval = "auto"\n\n[settings.mlflow]\nuri = "file:/tmp/a b"\n\n[settings.mlflow.tags]\n"x.y" = "q\\"\\n"\n')


@pytest.mark.parametrize("table, message", [
    ({"when": object()}, "a object cannot be written as TOML"),
    ({"x": {1: 2}}, "a TOML key must be a string, got int 1"),
])
def test_what_toml_cannot_hold_is_a_type_error_naming_it(table, message):
    with pytest.raises(TypeError, match=message):
        dumps(table)
