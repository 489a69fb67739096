"""The three manifest formats as their users write them: parsed, refused with file/line-or-key/field, written back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.catalog import manifests
from services.catalog.manifests import ManifestError

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalog"


def load(name: str) -> tuple[str, str]:
    path = FIXTURES / name
    return path.name, path.read_text()


def test_json_manifest_shorthand_and_object_entries():
    plan = manifests.parse(*load("llm_models.json"))
    assert plan.format == "json" and [s.name for s in plan.sets] == ["default"]
    models = plan.sets[0].models
    assert models["general"].name == "dolphin3" and models["general"].provider == "ollama"
    assert models["general"].auto_download is True
    assert models["general"].parameters == {"top_p": 0.9, "num_predict": 512}
    assert models["coding"].name == "dolphin3-llm2vec" and models["coding"].parameters == {}
    assert plan.warnings == []


def test_unsupported_provider_is_skipped_with_a_warning_naming_it():
    plan = manifests.parse(*load("llm_models_multi.json"))
    laptop = next(s for s in plan.sets if s.name == "laptop")
    assert set(laptop.models) == {"general", "coding", "summarization"}
    assert (laptop.models["summarization"].name, laptop.models["summarization"].provider) == ("gpt-4o-mini", "openai")
    assert len(plan.warnings) == 1
    assert "'anthropic'" in plan.warnings[0] and "profiles.laptop.models.vision" in plan.warnings[0]
    assert "claude-3-5-haiku" in plan.warnings[0] and "openai" in plan.warnings[0]  # the supported list names it


def test_openai_entries_name_the_id_their_backend_lists():
    path = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"  # llama-cpp-python's id without an alias: no model reference
    content = json.dumps({"profiles": {"default": {"models": {
        "coding": {"name": "smollm2", "provider": "openai"},
        "general": {"name": path, "provider": "openai", "parameters": {"temperature": 0.2}},
    }}}})  # fmt: skip
    plan = manifests.parse("m.json", content)
    models = plan.sets[0].models
    assert (models["coding"].name, models["coding"].provider) == ("smollm2", "openai")
    assert (models["general"].name, models["general"].parameters) == (path, {"temperature": 0.2})
    assert plan.warnings == []
    assert manifests.parse("m.json", manifests.export_json(plan.sets)).sets == plan.sets


@pytest.mark.parametrize(
    ("name", "why"),
    [("smol lm2", "whitespace"), ("a\x07b", "control"), ("x" * 257, "1 to 256 characters")],
)
def test_a_bad_openai_id_is_refused_naming_the_key(name: str, why: str):
    content = json.dumps({"profiles": {"default": {"models": {"coding": {"name": name, "provider": "openai"}}}}})
    with pytest.raises(ManifestError, match=why) as info:
        manifests.parse("m.json", content)
    assert info.value.field == "name" and info.value.where == "key profiles.default.models.coding"


def test_toml_presets_and_performance_profiles():
    plan = manifests.parse(*load("config_enhanced.toml"))
    assert [m.id for m in plan.models] == ["gemma2-2b-it", "gemma3-4b-it-sfp"]
    gemma = plan.models[0]
    assert gemma.provider == "local" and gemma.context_window == 8192 and gemma.min_ram_gb == 4
    assert gemma.quantizations[0].size_bytes == 2_500_000_000 and gemma.quantizations[0].file == "2b-it.sbs"
    assert gemma.extra["preset"]["avg_tokens_per_sec"] == 45
    assert plan.presets["balanced"]["parameters"] == {
        "num_predict": 1024,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 50,
    }
    assert plan.presets["code_gen"]["use_case"] == "coding"
    assert any("[gemma]" in w for w in plan.warnings)


def test_models_txt_lines_and_comments():
    plan = manifests.parse(*load("models.txt"))
    assert [m.id for m in plan.models] == [
        "deepseek-ai/Janus-Pro-1B", "unsloth/Qwen2.5-Omni-3B-GGUF", "ggml-org/Qwen2.5-Omni-3B-GGUF",
        "Qwen/Qwen2.5-0.5B-Instruct@main", "local:tinyllama-1.1b-chat.Q4_K_M.gguf",
    ]  # fmt: skip
    assert plan.models[3].sources.hf_revision == "main" and plan.models[3].provider == "huggingface"
    assert plan.models[4].provider == "local" and plan.models[4].sources.local_path == "tinyllama-1.1b-chat.Q4_K_M.gguf"


BAD = [
    ("syntax_error.json", "line 8", "(document)"),
    ("top_p_out_of_range.json", "key profiles.default.models.general.parameters", "top_p"),
    ("missing_name.json", "key profiles.default.models.general", "name"),
    ("no_profiles.json", "key profiles", "profiles"),
    ("syntax_error.toml", "line 4", "(document)"),
    ("wrong_type.toml", "line 4", "size_gb"),
    ("temperature_out_of_range.toml", "line 3", "temperature"),
    ("bad_line.txt", "line 4", "model"),
    ("path_escape.txt", "line 2", "model"),
]


@pytest.mark.parametrize(("name", "where", "field"), BAD)
def test_bad_files_name_file_line_or_key_and_field(name, where, field):
    with pytest.raises(ManifestError) as info:
        manifests.parse(*load(f"bad/{name}"))
    err = info.value
    assert (err.filename, err.where, err.field) == (name, where, field)
    assert str(err).startswith(f"{name}: {where}: {field}: ")


@pytest.mark.parametrize("name", ["llm_models.json", "llm_models_multi.json", "config_enhanced.toml", "models.txt"])
def test_export_then_import_is_a_fixed_point(name):
    plan = manifests.parse(*load(name))
    if plan.format == "json":
        text = manifests.export_json(plan.sets)
    elif plan.format == "toml":
        text = manifests.export_toml(plan.models, plan.presets)
    else:
        text = manifests.export_models_txt(plan.models)
    again = manifests.parse(f"exported.{'txt' if plan.format == 'models.txt' else plan.format}", text)
    assert again.sets == plan.sets and again.presets == plan.presets
    assert sorted(again.models, key=lambda m: m.id) == sorted(plan.models, key=lambda m: m.id)


def test_json_export_writes_shorthand_where_the_entry_is_plain():
    plan = manifests.parse(*load("llm_models.json"))
    text = manifests.export_json(plan.sets)
    assert '"coding": "dolphin3-llm2vec"' in text and '"top_p": 0.9' in text
