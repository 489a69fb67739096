"""Compares two JSON Schemas of one contract and names every change that would break a reader or a writer.

Breaking: a removed field, a newly required field, a type that accepts less than before (a type changed,
a union narrowed, an enum value removed, a string format added or changed), a constraint tightened
(maxLength/maximum lowered, minLength/minimum raised, a pattern changed), a subject changed.
Not breaking: a new optional field, a widened type, a new enum value, a loosened constraint, new docs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]

#: The key a snapshot carries the contract's subject under (JSON Schema ignores unknown `x-` keywords).
SUBJECT_KEY = "x-modelfleet-subject"

_SCALAR_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
# Lower bounds that must not rise, upper bounds that must not fall.
_LOWER_BOUNDS = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")
_UPPER_BOUNDS = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")


@dataclass(frozen=True)
class Break:
    """One breaking change, at a dotted path inside the contract (`roles[]`, `devices[].name`)."""

    path: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class _Branch:
    """One alternative a schema accepts: a JSON type, or one enum value, or anything."""

    kind: str  # one of _SCALAR_TYPES, "enum", "any", "opaque"
    schema: Schema
    fmt: str | None = None
    value: str | None = None  # the JSON text of an enum/const value, or of an opaque schema
    ref: str | None = None  # the $defs name an object branch came from


def breaking_changes(old: Schema, new: Schema) -> list[Break]:
    """Every change from `old` to `new` that a consumer or producer of the old schema would notice."""
    breaks: list[Break] = []
    old_subject, new_subject = old.get(SUBJECT_KEY), new.get(SUBJECT_KEY)
    if old_subject and old_subject != new_subject:
        breaks.append(
            Break("", "subject changed", f"{old_subject!r} -> {new_subject!r}; add a new class on the new subject")
        )
    _Comparer(old.get("$defs", {}), new.get("$defs", {}), breaks).compare(old, new, "")
    return breaks


class _Comparer:
    def __init__(self, old_defs: Schema, new_defs: Schema, breaks: list[Break]) -> None:
        self.defs = (old_defs, new_defs)
        self.breaks = breaks
        self._ancestors: set[tuple[str, str]] = set()

    def compare(self, old: Schema, new: Schema, path: str) -> None:
        new_branches = self._branches(new, 1)
        for branch in self._branches(old, 0):
            match = _covering(branch, new_branches)
            if match is None:
                self.breaks.append(Break(path, "type changed", f"{_describe(branch)} is no longer accepted"))
                continue
            self._compare_branch(branch, match, path)

    def _compare_branch(self, old: _Branch, new: _Branch, path: str) -> None:
        if new.kind == "any" or old.kind in ("enum", "opaque"):
            return
        self._constraints(old.schema, new.schema, path)
        if old.kind == "object":
            # Guard recursive models: a pair already being compared further up this path is not entered again.
            pair = (old.ref or "", new.ref or "")
            if old.ref and new.ref and pair in self._ancestors:
                return
            self._ancestors.add(pair)
            try:
                self._object(old.schema, new.schema, path)
            finally:
                self._ancestors.discard(pair)
        elif old.kind == "array":
            old_items, new_items = old.schema.get("items", {}), new.schema.get("items", {})
            self.compare(old_items, new_items, f"{path}[]")

    def _object(self, old: Schema, new: Schema, path: str) -> None:
        old_props: Schema = old.get("properties", {})
        new_props: Schema = new.get("properties", {})
        prefix = f"{path}." if path else ""
        for name, old_prop in old_props.items():
            if name not in new_props:
                self.breaks.append(Break(f"{prefix}{name}", "removed field", "readers of the old schema expect it"))
            else:
                self.compare(old_prop, new_props[name], f"{prefix}{name}")
        for name in sorted(set(new.get("required", [])) - set(old.get("required", []))):
            before = "was optional" if name in old_props else "did not exist"
            self.breaks.append(Break(f"{prefix}{name}", "newly required field", f"{before}; old producers omit it"))
        old_extra, new_extra = old.get("additionalProperties"), new.get("additionalProperties")
        if isinstance(old_extra, dict) and isinstance(new_extra, dict):
            self.compare(old_extra, new_extra, f"{prefix}*")
        elif old_extra is not False and new_extra is False and not old_props:
            self.breaks.append(Break(f"{prefix}*", "type changed", "extra keys are no longer accepted"))

    def _constraints(self, old: Schema, new: Schema, path: str) -> None:
        for key in _LOWER_BOUNDS:
            if key in new and (key not in old or new[key] > old[key]):
                self.breaks.append(Break(path, "constraint tightened", f"{key} {old.get(key)} -> {new[key]}"))
        for key in _UPPER_BOUNDS:
            if key in new and (key not in old or new[key] < old[key]):
                self.breaks.append(Break(path, "constraint tightened", f"{key} {old.get(key)} -> {new[key]}"))
        if "pattern" in new and new["pattern"] != old.get("pattern"):
            self.breaks.append(
                Break(path, "constraint tightened", f"pattern {old.get('pattern')!r} -> {new['pattern']!r}")
            )

    def _branches(self, schema: Schema, side: int, ref: str | None = None, depth: int = 0) -> list[_Branch]:
        """Flatten `$ref`, `anyOf`/`oneOf`, single `allOf`, type lists, `enum` and `const` into alternatives."""
        if depth > 32:
            raise ValueError("schema nests $ref/anyOf deeper than 32 levels")
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            target = self.defs[side].get(name)
            if target is None:
                raise ValueError(f"$ref {schema['$ref']!r} names no entry of $defs")
            return self._branches(target, side, name, depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return [b for sub in schema[key] for b in self._branches(sub, side, None, depth + 1)]
        if "allOf" in schema and len(schema["allOf"]) == 1:
            return self._branches(schema["allOf"][0], side, ref, depth + 1)
        if "enum" in schema or "const" in schema:
            values = schema["enum"] if "enum" in schema else [schema["const"]]
            return [_Branch("enum", schema, value=json.dumps(v, sort_keys=True)) for v in values]
        kinds = schema.get("type")
        if kinds is None:
            if "allOf" in schema or "not" in schema or "if" in schema:
                return [_Branch("opaque", schema, value=json.dumps(schema, sort_keys=True))]
            if "properties" in schema:
                return [_Branch("object", schema, ref=ref)]
            return [_Branch("any", schema)]
        if isinstance(kinds, str):
            kinds = [kinds]
        return [_Branch(k, schema, fmt=schema.get("format"), ref=ref if k == "object" else None) for k in kinds]


def _covering(old: _Branch, new: list[_Branch]) -> _Branch | None:
    """The new alternative that accepts everything `old` accepted, preferring the same named object."""
    candidates = [n for n in new if _covers(n, old)]
    if not candidates:
        return None
    same_ref = [n for n in candidates if n.ref is not None and n.ref == old.ref]
    exact = [n for n in candidates if n.kind == old.kind]
    return (same_ref or exact or candidates)[0]


def _covers(new: _Branch, old: _Branch) -> bool:
    if new.kind == "any":
        return True
    if old.kind == "any":
        return False
    if old.kind == "enum":
        if new.kind == "enum":
            return new.value == old.value
        return _json_type(json.loads(old.value or "null")) in _widened(new.kind) and new.fmt is None
    if old.kind == "opaque":
        return new.kind == "opaque" and new.value == old.value
    if old.kind == "integer" and new.kind == "number":
        return True
    if new.kind != old.kind:
        return False
    return new.fmt is None or new.fmt == old.fmt


def _widened(kind: str) -> set[str]:
    """The JSON types a branch of `kind` accepts values of."""
    return {"integer", "number"} if kind == "number" else {kind}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _describe(branch: _Branch) -> str:
    if branch.kind == "enum":
        return f"enum value {branch.value}"
    if branch.kind == "object" and branch.ref:
        return f"object {branch.ref}"
    if branch.fmt:
        return f"{branch.kind} (format {branch.fmt})"
    return branch.kind
