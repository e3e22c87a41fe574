"""A batch-at-once check that events satisfy a flat JSON Schema: the fast path of validation.

Validating event by event with the compiled JSON Schema cost about 6 us per engine event, a third
of the worker's CPU. Most batches are entirely valid, so :class:`BatchCheck` first asks one
question of the whole batch, with column-wise C-level operations (``itemgetter`` over the events,
``map(type, ...)`` over a column, numpy comparisons for bounds): are *all* of them valid? Only when
the answer is not a clear yes does the caller validate event by event, which also finds each
failing event's reason.

Contract: ``check(events)`` returning True implies the schema accepts every event (it may return
False for a valid batch: then the slow path decides). :func:`compile_batch_check` returns None
for a schema that uses anything outside the subset understood here, so such a schema is always
validated event by event. The subset: a top-level object with ``required`` and ``properties``,
``additionalProperties`` absent or true, and per property ``type`` (one of integer, number,
string, boolean), ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``, ``enum``,
``const``, ``pattern``, and annotations (``description``, ``title``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter

import numpy as np

_ANNOTATIONS = {"description", "title", "examples", "default", "$comment", "deprecated", "readOnly", "writeOnly"}
_TOP_KEYWORDS = _ANNOTATIONS | {"$schema", "$id", "type", "required", "properties", "additionalProperties"}
_PROPERTY_KEYWORDS = _ANNOTATIONS | {
    "type",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "const",
    "pattern",
}
# Python types orjson produces for each JSON Schema type. Exact types: bool is not an integer
# here, and 1.0 is not checked as an integer (the slow path decides such rare cases).
_TYPES = {
    "integer": frozenset({int}),
    "number": frozenset({int, float}),
    "string": frozenset({str}),
    "boolean": frozenset({bool}),
}
_SCALARS = frozenset({int, float, str, bool})
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


@dataclass
class _Column:
    name: str
    required: bool
    types: frozenset | None = None  # allowed Python types; None: any
    bounds: dict[str, float] = field(default_factory=dict)
    allowed: frozenset | None = None  # enum/const as (type, value) pairs
    pattern: re.Pattern | None = None


class BatchCheck:
    def __init__(self, columns: list[_Column]) -> None:
        self.columns = columns
        required = [c for c in columns if c.required]
        self._optional = [c for c in columns if not c.required]
        # The checks cost per column, not per value, in a batch of a few events: 27 columns
        # checked one by one cost 56 us a batch (the engines schema, on the benchmark machine), as
        # much as decoding 15 events. So required columns are checked in groups: one type check
        # over every value of all columns that allow the same types, and the bounds of all
        # bounded columns as one matrix. Only enum/const and pattern columns go one by one.
        groups: dict[frozenset | None, list[str]] = {}
        for c in required:
            groups.setdefault(c.types, []).append(c.name)
        # (getter, allowed types or None, getter returns a tuple): also how a missing required field is found.
        self._type_groups = [(itemgetter(*names), types, len(names) > 1) for types, names in groups.items()]
        self._one_by_one = [c for c in required if c.allowed is not None or c.pattern is not None]
        self._bounded = [c for c in required if c.bounds]
        self._limits = _limits(self._bounded)
        self._get_bounded = [itemgetter(c.name) for c in self._bounded]
        self._optional_limits = {c.name: _limits([c]) for c in self._optional if c.bounds}

    def check(self, events: Sequence[dict]) -> bool:
        """True only if every event of the batch is valid under the schema."""
        if not events:
            return True
        try:
            for getter, types, several in self._type_groups:
                values = map(getter, events)
                found = set(map(type, chain.from_iterable(values) if several else values))
                if types is not None and not found <= types:
                    return False
        except KeyError:
            return False  # a required field is missing: the slow path names it
        for spec in self._one_by_one:  # their bounds, if any, are checked below with the others
            if not _column_ok(spec, tuple(e[spec.name] for e in events)):
                return False
        for spec in self._optional:  # only the events that have it
            present = tuple(e[spec.name] for e in events if spec.name in e)
            if present and not _column_ok(spec, present, self._optional_limits.get(spec.name)):
                return False
        # Every required bounded column within its bounds (their types are already checked).
        return not self._bounded or _within([list(map(get, events)) for get in self._get_bounded], self._limits)


def _limits(columns: list[_Column]) -> dict[str, np.ndarray]:
    """Per bound keyword, a (len(columns), 1) column of the columns' bounds; an absent bound is
    infinite, so it lets every finite value through."""
    inf = float("inf")
    return {
        bound: np.array([c.bounds.get(bound, default) for c in columns], dtype=np.float64)[:, None]
        for bound, default in (("minimum", -inf), ("maximum", inf), ("exclusiveMinimum", -inf), ("exclusiveMaximum", inf))
    }


def _within(rows: list, limits: dict[str, np.ndarray]) -> bool:
    """Every value finite and within its row's bounds (`rows`: one sequence of values per column,
    `limits` from :func:`_limits` for those columns)."""
    try:
        matrix = np.array(rows, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):  # an integer beyond a double, say
        return False
    # One reduction at the end: each .all() is a Python-level call, dearer than the compare.
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(matrix)
        ok &= matrix >= limits["minimum"]
        ok &= matrix <= limits["maximum"]
        ok &= matrix > limits["exclusiveMinimum"]
        ok &= matrix < limits["exclusiveMaximum"]
    return bool(ok.all())


def _column_ok(spec: _Column, values: tuple, limits: dict[str, np.ndarray] | None = None) -> bool:
    """One column's values against its type, enum/const and pattern; against its bounds too when
    `limits` (from :func:`_limits`) are given."""
    if spec.types is not None and not set(map(type, values)) <= spec.types:
        return False
    if spec.allowed is not None:
        if not set(map(type, values)) <= _SCALARS or not set(zip(map(type, values), values)) <= spec.allowed:
            return False
    if spec.pattern is not None and not all(map(spec.pattern.search, values)):
        return False
    return limits is None or _within([values], limits)


def compile_batch_check(schema: dict) -> BatchCheck | None:
    """A :class:`BatchCheck` for `schema`, or None if it uses anything outside the subset."""
    if set(schema) - _TOP_KEYWORDS or schema.get("type") != "object":
        return None
    if schema.get("additionalProperties", True) is not True:
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    if not isinstance(properties, dict) or not isinstance(required, list):
        return None
    columns = []
    for name in dict.fromkeys([*required, *properties]):  # required first, each once
        column = _compile_property(name, properties.get(name, {}), required=name in required)
        if column is None:
            return None
        columns.append(column)
    return BatchCheck(columns)


# An unescaped "$": in Python's re it also matches before a final newline ("M1\n" fits "^M[0-9]$"),
# in JSON Schema (ECMA-262 without the m flag) only at the end. The validator the check must never
# be more lenient than (fastjsonschema) rewrites each one to \Z, inside character classes too;
# the check does the same, so both accept exactly the same strings.
_DOLLAR = re.compile(r"(?<!\\)\$")


def _end_anchored(pattern: str) -> str:
    """`pattern` with every unescaped "$" as "\\Z" (end of string only), as the validator reads it."""
    return _DOLLAR.sub(r"\\Z", pattern)


def _compile_property(name: str, prop: dict, *, required: bool) -> _Column | None:
    if not isinstance(prop, dict) or set(prop) - _PROPERTY_KEYWORDS:
        return None
    column = _Column(name, required)
    kind = prop.get("type")
    if kind is not None:
        if not isinstance(kind, str) or kind not in _TYPES:
            return None
        column.types = _TYPES[kind]
    for bound in _BOUNDS:
        if bound in prop:
            value = prop[bound]
            if type(value) not in (int, float) or column.types is None or not column.types <= {int, float}:
                return None  # bounds apply to numbers only: keep the check's reading unambiguous
            column.bounds[bound] = float(value)
    choices = [prop["const"]] if "const" in prop else prop.get("enum")
    if choices is not None:
        if not isinstance(choices, list) or any(type(c) not in (int, float, str, bool) for c in choices):
            return None
        column.allowed = frozenset((type(c), c) for c in choices)
    if "pattern" in prop:
        if column.types != _TYPES["string"]:
            return None
        try:
            column.pattern = re.compile(_end_anchored(prop["pattern"]))
        except re.error:
            return None
    return column
