"""Every OpenAPI link of the gateway's document (services/gateway/links.py) leads somewhere: its operation exists, it
gives every path parameter that operation takes and no other, and each `$response.body#/...` pointer names a field
the linking answer's schema has (so a renamed route or field breaks this test, not a client)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

SPEC = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"


def _deref(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _has(spec: dict[str, Any], schema: dict[str, Any], pointer: list[str]) -> bool:
    """Whether a JSON pointer can be present in a document of `schema` (objects by property, arrays by index)."""
    schema = _deref(spec, schema)
    if not pointer:
        return True
    step, rest = pointer[0], pointer[1:]
    alternatives = [_deref(spec, s) for s in schema.get("anyOf", [schema])]
    for alt in alternatives:
        if step.isdigit() and alt.get("type") == "array" and _has(spec, alt.get("items", {}), rest):
            return True
        if step in alt.get("properties", {}) and _has(spec, alt["properties"][step], rest):
            return True
    return False


def _links(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, response in op.get("responses", {}).items():
                for name, link in response.get("links", {}).items():
                    out.append((f"{method.upper()} {path} {status} {name}", link, response))
    return out


def test_the_document_has_the_links_the_stateful_fuzzer_follows() -> None:
    names = {label.rsplit(" ", 1)[-1] for label, _, _ in _links(json.loads(SPEC.read_text()))}
    assert {"GetProfile", "UpdateProfile", "DeleteProfile", "ListTokens", "RevokeToken"} <= names, names


def test_every_link_names_an_operation_its_parameters_and_fields_that_exist() -> None:
    spec = json.loads(SPEC.read_text())
    for label, link, response in _links(spec):
        ref = link["operationRef"]
        assert ref.startswith("#/paths/"), label
        target_path, target_method = ref.removeprefix("#/paths/").rsplit("/", 1)
        target_path = target_path.replace("~1", "/").replace("~0", "~")
        target = spec["paths"].get(target_path, {}).get(target_method)
        assert target is not None, f"{label}: no operation {ref}"
        path_params = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
        assert set(link["parameters"]) == path_params == set(re.findall(r"\{([^}]+)\}", target_path)), label
        body = response["content"]["application/json"]["schema"]
        for name, expression in link["parameters"].items():
            assert expression.startswith("$response.body#/"), f"{label}: {name}={expression}"
            pointer = expression.removeprefix("$response.body#/").split("/")
            assert _has(spec, body, pointer), f"{label}: the answer has no {expression}"
