"""TOML text from plain data: what `config.toml`, saved pipelines and sweep overrides are
written with, so that spurcore writes TOML with nothing but the standard library (the GPU
machines it is checked on may reach no package registry; reading is `tomllib`'s).

Tables are mappings with string keys; values are strings, integers, floats, booleans, lists
(or tuples) and tables; there are no dates in a pipeline, and other types are a TypeError. The
layout is tomli-w's (1.x), which this module replaced, so that files are written as before: a
table's plain values first, then each sub-table as a `[a.b]` section; a list of tables as
`[[name]]` sections unless every one of them fits on a line of `INLINE_WIDTH` characters as an
inline table; lists one item per line. For every such table `tomllib.loads(dumps(t)) == t`
(tuples come back as lists).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

INDENT = "    "
INLINE_WIDTH = 100  # an indented inline table, comma included, for a list of tables to stay inline
BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
ESCAPES = {"\b": "\\b", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def dumps(table: Mapping[str, Any]) -> str:
    """`table` as a TOML document."""
    return "".join(_sections(table, ""))


def literal(value: Any, level: int = 0) -> str:
    """One value as TOML writes it after `key = ` (a table inline): for `-o KEY=VALUE` overrides.
    `level` is the list nesting depth, which indents a list's items."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)  # inf and nan are TOML's own words; exponents as Python writes them (1e-05)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        items = ",\n".join(INDENT * (level + 1) + literal(item, level + 1) for item in value)
        return f"[\n{items},\n{INDENT * level}]"
    if isinstance(value, Mapping):
        return _inline(value)
    raise TypeError(f"a {type(value).__qualname__} cannot be written as TOML: {value!r}")


def _sections(table: Mapping[str, Any], name: str, array_item: bool = False) -> Iterator[str]:
    values, tables = [], []
    for key, value in table.items():
        if isinstance(value, Mapping):
            tables.append((key, value, False))
        elif _is_table_list(value) and not all(_fits_inline(t) for t in value):
            tables.extend((key, t, True) for t in value)
        else:
            values.append((key, value))
    written = False
    if array_item or (name and (values or not tables)):  # a table holding only tables needs no header
        written = True
        yield f"[[{name}]]\n" if array_item else f"[{name}]\n"
    for key, value in values:
        written = True
        yield f"{_key(key)} = {literal(value)}\n"
    for key, value, item in tables:
        if written:
            yield "\n"
        written = True
        yield from _sections(value, f"{name}.{_key(key)}" if name else _key(key), item)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _inline(table: Mapping[str, Any]) -> str:
    if not table:
        return "{}"
    return "{ " + ", ".join(f"{_key(k)} = {literal(v)}" for k, v in table.items()) + " }"


def _fits_inline(table: Mapping[str, Any]) -> bool:
    line = f"{INDENT}{_inline(table)},"
    return len(line) <= INLINE_WIDTH and "\n" not in line


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a TOML key must be a string, got {type(key).__qualname__} {key!r}")
    return key if key and BARE_KEY.issuperset(key) else _string(key)


def _string(text: str) -> str:
    """A basic string: quotes, backslashes and control characters (but tab) escaped."""
    out = []
    for char in text:
        if char in ESCAPES:
            out.append(ESCAPES[char])
        elif (ord(char) < 32 and char != "\t") or ord(char) == 127:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
