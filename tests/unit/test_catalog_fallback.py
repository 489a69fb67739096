"""A role entry's `fallback` object in a JSON manifest: parsed, refused with the manifest/role/field, written back."""

from __future__ import annotations

import json

import pytest

from services.catalog import manifests
from services.catalog.manifests import ManifestError

pytestmark = pytest.mark.unit


def manifest(fallback: object) -> str:
    entry = {"name": "qwen3:8b", "fallback": fallback}
    return json.dumps({"profiles": {"default": {"models": {"coding": entry, "general": "qwen3:8b"}}}})


def test_path_and_repo_fallbacks_parse_and_round_trip():
    for fallback in (
        {"path": "/models/qwen3-8b.Q4_K_M.gguf"},
        {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "v1.0", "max_seq_length": 4096},
    ):
        plan = manifests.parse("m.json", manifest(fallback))
        spec = plan.sets[0].models["coding"].fallback
        assert spec is not None and spec.model_dump(exclude_none=True) == fallback
        assert plan.sets[0].models["general"].fallback is None
        assert plan.warnings == []
        exported = manifests.export_json(plan.sets)
        assert json.loads(exported)["profiles"]["default"]["models"]["coding"]["fallback"] == fallback
        assert json.loads(exported)["profiles"]["default"]["models"]["general"] == "qwen3:8b"  # still the shorthand
        assert manifests.parse("m.json", exported).sets == plan.sets


@pytest.mark.parametrize(
    ("fallback", "field", "says"),
    [
        ("/models/x.gguf", "fallback", "must be an object"),
        ({}, "fallback", "exactly one of path, repo"),
        ({"path": "/a.gguf", "repo": "org/x", "revision": "main"}, "fallback", "exactly one of path, repo"),
        ({"repo": "org/x"}, "fallback", "needs a revision"),
        ({"repo": "not a repo", "revision": "main"}, "fallback.repo", "pattern"),
        ({"path": "models/x.gguf"}, "fallback.path", "absolute path"),
        ({"path": ""}, "fallback.path", "at least 1 character"),
        ({"path": "/x.gguf", "max_seq_length": 4}, "fallback.max_seq_length", "greater than or equal to 16"),
        ({"path": "/x.gguf", "device": "cuda"}, "fallback.device", "unknown field"),
    ],
)
def test_bad_fallbacks_name_the_manifest_the_role_and_the_field(fallback: object, field: str, says: str):
    with pytest.raises(ManifestError) as caught:
        manifests.parse("llm_models.json", manifest(fallback))
    err = caught.value
    where = "key profiles.default.models.coding.fallback"
    assert (err.filename, err.where, err.field) == ("llm_models.json", where, field)
    assert says in str(err) and str(err).startswith(f"llm_models.json: {where}: ")
