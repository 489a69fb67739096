"""The three manifest formats operators already write, parsed into an import plan and written back out (pure)."""

from __future__ import annotations

import json
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import tomli_w
from pydantic import ValidationError

from contracts.catalog import ModelDoc, ModelSources, ProfileSetDoc, QuantizationDoc, RoleModelDoc
from contracts.fallback import FallbackSpec
from contracts.model_ref import ModelRefError, parse_model_ref
from contracts.parameters import ALIASES, ParameterError, validate_parameters

#: Providers the fleet can serve; a manifest entry naming another is skipped with a warning.
SUPPORTED_PROVIDERS = ("ollama", "huggingface", "local", "openai")
#: An `openai` entry's name is the id an OpenAI-compatible backend lists in /v1/models, not a model reference.
OPENAI_ID_MAX = 256
FORMATS = ("json", "toml", "models.txt")
_ENTRY_FIELDS = {"name", "provider", "auto_download", "parameters", "description", "fallback", "performance_profile"}
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PRESET_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {  # field -> (types, required)
    "weights": (str, True),
    "tokenizer": (str, False),
    "format": (str, False),
    "size_gb": ((int, float), False),
    "avg_tokens_per_sec": ((int, float), False),
    "quality": (str, False),
    "use_case": (str, False),
    "context_length": (int, False),
    "min_ram_gb": ((int, float), False),
}
_PERF_TEXT = ("description", "use_case")
_TOML_FIELDS = frozenset(
    {"provider", "context_window", "recommended_use", "min_ram_gb", "quantizations", "sources", "tags", "extra"}
)


class ManifestError(ValueError):
    """A bad manifest: names the file, the line or key, and the field."""

    def __init__(self, filename: str, where: str, field_name: str, message: str):
        self.filename, self.where, self.field = filename, where, field_name
        super().__init__(f"{filename}: {where}: {field_name}: {message}")


@dataclass
class ImportPlan:
    format: str
    sets: list[ProfileSetDoc] = field(default_factory=list)
    models: list[ModelDoc] = field(default_factory=list)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: The model fields this format carries; an import over an existing model changes only these.
    model_fields: frozenset[str] = frozenset()


def guess_format(filename: str, content: str) -> str:
    name = PurePosixPath(filename.replace("\\", "/")).name.lower()
    if name.endswith(".json"):
        return "json"
    if name.endswith(".toml"):
        return "toml"
    if name.endswith(".txt"):
        return "models.txt"
    stripped = content.lstrip()
    return "json" if stripped.startswith("{") else "toml" if stripped.startswith("[") else "models.txt"


def parse(filename: str, content: str, fmt: str | None = None) -> ImportPlan:
    fmt = fmt or guess_format(filename, content)
    parser = {"json": parse_json, "toml": parse_toml, "models.txt": parse_models_txt}.get(fmt)
    if parser is None:
        raise ManifestError(filename, "format", "format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    try:
        return parser(filename, content)
    except ValidationError as exc:  # a value the contracts refuse, past the format's own checks
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "(entry)"
        raise ManifestError(filename, "entry", where, first["msg"]) from exc


# --- JSON manifest: profiles.<set>.models.<role> = "name" | {name, provider, auto_download, parameters, description} -


def parse_json(filename: str, content: str) -> ImportPlan:
    try:
        doc = json.loads(content)
    except json.JSONDecodeError as exc:
        raise ManifestError(filename, f"line {exc.lineno}", "(document)", f"not valid JSON: {exc.msg}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("profiles"), dict):
        raise ManifestError(filename, "key profiles", "profiles", "the manifest needs a top-level object `profiles`")
    plan = ImportPlan("json")
    for set_name, body in doc["profiles"].items():
        key = f"profiles.{set_name}"
        if not _SET_NAME.match(str(set_name)):
            raise ManifestError(filename, f"key {key}", "name", "a profile set name is letters, digits, '.', '_', '-'")
        if not isinstance(body, dict) or not isinstance(body.get("models"), dict):
            raise ManifestError(
                filename, f"key {key}", "models", "each profile needs an object `models` (role -> entry)"
            )
        models: dict[str, RoleModelDoc] = {}
        for role, entry in body["models"].items():
            parsed = _json_entry(filename, f"{key}.models.{role}", entry, plan.warnings)
            if parsed is not None:
                models[str(role)] = parsed
        plan.sets.append(ProfileSetDoc(name=str(set_name), models=models))
    return plan


def _json_entry(filename: str, key: str, entry: Any, warnings: list[str]) -> RoleModelDoc | None:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise ManifestError(filename, f"key {key}", "(entry)", "must be a model name or an object with `name`")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ManifestError(filename, f"key {key}", "name", "required: the model name (e.g. qwen3:8b)")
    provider = entry.get("provider", "ollama")
    if not isinstance(provider, str):
        raise ManifestError(filename, f"key {key}", "provider", f"must be a string, got {provider!r}")
    if provider not in SUPPORTED_PROVIDERS:
        warnings.append(
            f"{filename}: {key}: provider {provider!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_PROVIDERS)}); entry {name!r} skipped"
        )
        return None
    if provider == "openai":
        problem = openai_id_problem(name.strip())
        if problem:
            raise ManifestError(filename, f"key {key}", "name", problem)
    else:
        try:
            parse_model_ref(name)
        except ModelRefError as exc:
            raise ManifestError(filename, f"key {key}", "name", str(exc)) from exc
    auto = entry.get("auto_download", True)
    if not isinstance(auto, bool):
        raise ManifestError(filename, f"key {key}", "auto_download", f"must be true or false, got {auto!r}")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise ManifestError(filename, f"key {key}", "description", f"must be a string, got {description!r}")
    try:
        parameters = validate_parameters(entry.get("parameters") or {})
    except ParameterError as exc:
        raise ManifestError(filename, f"key {key}.parameters", exc.field, str(exc)) from exc
    fallback = _fallback(filename, key, entry.get("fallback"))
    performance_profile = entry.get("performance_profile")
    if performance_profile is not None and (
        not isinstance(performance_profile, str) or not _SET_NAME.match(performance_profile)
    ):
        raise ManifestError(
            filename, f"key {key}", "performance_profile",
            f"must be a performance profile name (letters, digits, '.', '_', '-'), got {performance_profile!r}",
        )  # fmt: skip
    for unknown in sorted(set(entry) - _ENTRY_FIELDS):
        warnings.append(f"{filename}: {key}: unknown field {unknown!r} ignored")
    return RoleModelDoc(
        name=name.strip(),
        provider=provider,
        auto_download=auto,
        parameters=parameters,
        description=description,
        fallback=fallback,
        performance_profile=performance_profile,
    )


def _fallback(filename: str, key: str, value: Any) -> FallbackSpec | None:
    """A role's `fallback` object: `{"path": "/abs/m.gguf"}` or `{"repo": "org/name", "revision": "<commit|tag>"}`."""
    if value is None:
        return None
    where = f"key {key}.fallback"
    if not isinstance(value, dict):
        raise ManifestError(
            filename, where, "fallback", f'must be an object {{"path": ...}} or {{"repo": ..., "revision": ...}}, '
            f"got {value!r}"[:300],
        )  # fmt: skip
    unknown = sorted(set(value) - set(FallbackSpec.model_fields))
    if unknown:
        raise ManifestError(
            filename, where, f"fallback.{unknown[0]}", f"unknown field (known: {', '.join(FallbackSpec.model_fields)})"
        )
    try:
        spec = FallbackSpec.model_validate(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(map(str, first["loc"]))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ManifestError(filename, where, f"fallback.{loc}" if loc else "fallback", message) from exc
    if spec.path is not None and not PurePosixPath(spec.path).is_absolute() and not _is_windows_absolute(spec.path):
        raise ManifestError(
            filename, where, "fallback.path", f"must be an absolute path on the fallback's host, got {spec.path!r}"
        )
    return spec


def _is_windows_absolute(path: str) -> bool:
    return bool(re.match(r"^[A-Za-z]:[\\/]", path))


def openai_id_problem(name: str) -> str | None:
    """Why `name` cannot be an OpenAI-compatible model id (any 1 to 256 characters without whitespace or control
    characters: servers list paths, repo ids, aliases), or None."""
    if not 1 <= len(name) <= OPENAI_ID_MAX:
        return f"an OpenAI model id is 1 to {OPENAI_ID_MAX} characters, got {len(name)}"
    bad = next((c for c in name if c.isspace() or unicodedata.category(c).startswith("C")), None)
    if bad is not None:
        return f"an OpenAI model id has no whitespace or control characters, got {bad!r} in {name!r}"
    return None


def export_json(sets: list[ProfileSetDoc]) -> str:
    profiles: dict[str, Any] = {}
    for s in sets:
        models: dict[str, Any] = {}
        for role, e in s.models.items():
            plain = not e.parameters and not e.description and e.fallback is None and e.performance_profile is None
            if e.provider == "ollama" and e.auto_download and plain:
                models[role] = e.name
                continue
            obj: dict[str, Any] = {"name": e.name, "provider": e.provider, "auto_download": e.auto_download}
            if e.parameters:
                obj["parameters"] = e.parameters
            if e.description:
                obj["description"] = e.description
            if e.fallback is not None:
                obj["fallback"] = e.fallback.model_dump(mode="json", exclude_none=True)
            if e.performance_profile is not None:
                obj["performance_profile"] = e.performance_profile
            models[role] = obj
        profiles[s.name] = {"models": models}
    return json.dumps({"profiles": profiles}, indent=2) + "\n"


# --- TOML presets: [model_presets.<name>] and [performance_profiles.<name>] ------------------------------------------


def _toml_line(content: str, section: str, key: str | None = None) -> str:
    """`line N` of a section header (or of `key` inside it), for error messages; tomllib gives no positions."""
    lines = content.splitlines()
    header = re.compile(rf"^\s*\[\s*{re.escape(section)}\s*\]\s*(#.*)?$")
    for i, line in enumerate(lines):
        if header.match(line):
            if key is None:
                return f"line {i + 1}"
            for j in range(i + 1, len(lines)):
                if lines[j].lstrip().startswith("["):
                    break
                if re.match(rf"^\s*{re.escape(key)}\s*=", lines[j]):
                    return f"line {j + 1}"
            return f"line {i + 1}"
    return f"key {section}" + (f".{key}" if key else "")


def parse_toml(filename: str, content: str) -> ImportPlan:
    try:
        doc = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        where = f"line {match.group(1)}" if match else "document"
        raise ManifestError(filename, where, "(document)", f"not valid TOML: {exc}") from exc
    plan = ImportPlan("toml", model_fields=_TOML_FIELDS)
    for section in doc:
        if section not in ("model_presets", "performance_profiles"):
            plan.warnings.append(f"{filename}: [{section}] is not a catalog section; ignored")
    for name, table in _tables(filename, content, doc, "model_presets").items():
        plan.models.append(_preset_model(filename, content, name, table))
    for name, table in _tables(filename, content, doc, "performance_profiles").items():
        plan.presets[name] = _performance_profile(filename, content, name, table)
    if not plan.models and not plan.presets:
        raise ManifestError(filename, "document", "model_presets", "no [model_presets.*] or [performance_profiles.*]")
    return plan


def _tables(filename: str, content: str, doc: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    tables = doc.get(section, {})
    if not isinstance(tables, dict):
        raise ManifestError(filename, _toml_line(content, section), section, "must be a table of named tables")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ManifestError(filename, f"key {section}.{name}", name, "must be a table")
        if not _SET_NAME.match(name):
            raise ManifestError(filename, _toml_line(content, f"{section}.{name}"), "name", "letters, digits, . _ -")
    return tables


def _preset_model(filename: str, content: str, name: str, table: dict[str, Any]) -> ModelDoc:
    section = f"model_presets.{name}"
    for key, (types, required) in _PRESET_FIELDS.items():
        value = table.get(key)
        if value is None:
            if required:
                raise ManifestError(filename, _toml_line(content, section), key, "required")
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            expected = "a string" if types is str else "a number"
            raise ManifestError(filename, _toml_line(content, section, key), key, f"must be {expected}, got {value!r}")
        if isinstance(value, int | float) and value < 0:
            raise ManifestError(filename, _toml_line(content, section, key), key, f"must be >= 0, got {value!r}")
    if table.get("context_length") == 0:
        raise ManifestError(filename, _toml_line(content, section, "context_length"), "context_length", "must be > 0")
    weights = str(table["weights"])
    size = table.get("size_gb")
    quant = str(table.get("format", "unknown")).upper()
    file_name = PurePosixPath(weights.replace("\\", "/")).name
    return ModelDoc(
        id=name,
        display_name=name,
        provider="local",
        context_window=table.get("context_length"),
        recommended_use=str(table.get("use_case", "")),
        min_ram_gb=table.get("min_ram_gb"),
        quantizations=[QuantizationDoc(name=quant, file=file_name, size_bytes=int(size * 1e9))] if size else [],
        sources=ModelSources(local_path=weights),
        tags=[t for t in [str(table.get("quality", ""))] if t],
        origin="imported",
        extra={"preset": dict(table)},
    )


def _performance_profile(filename: str, content: str, name: str, table: dict[str, Any]) -> dict[str, Any]:
    section = f"performance_profiles.{name}"
    params = {k: v for k, v in table.items() if k not in _PERF_TEXT}
    try:
        parameters = validate_parameters(params)
    except ParameterError as exc:
        key = next((k for k in params if ALIASES.get(k, k) == exc.field), exc.field)
        raise ManifestError(filename, _toml_line(content, section, key), exc.field, str(exc)) from exc
    for key in _PERF_TEXT:
        if key in table and not isinstance(table[key], str):
            raise ManifestError(filename, _toml_line(content, section, key), key, "must be a string")
    return {
        "parameters": parameters,
        "description": table.get("description", ""),
        "use_case": table.get("use_case", ""),
        "raw": dict(table),
    }


def export_toml(models: list[ModelDoc], presets: dict[str, dict[str, Any]]) -> str:
    doc: dict[str, Any] = {}
    model_presets = {m.id: m.extra["preset"] for m in models if isinstance(m.extra.get("preset"), dict)}
    if model_presets:
        doc["model_presets"] = model_presets
    if presets:
        doc["performance_profiles"] = {name: p.get("raw") or p["parameters"] for name, p in presets.items()}
    return tomli_w.dumps(doc)


# --- models.txt: `org/model` lines, `local:file.gguf` lines, `#` comments ---------------------------------------------


def parse_models_txt(filename: str, content: str) -> ImportPlan:
    plan = ImportPlan("models.txt", model_fields=frozenset({"provider", "sources"}))
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            ref = parse_model_ref(line)
        except ModelRefError as exc:
            raise ManifestError(filename, f"line {number}", "model", str(exc)) from exc
        if ref.kind not in ("hf", "local"):
            raise ManifestError(filename, f"line {number}", "model", f"{line!r}: expected org/model or local:file.gguf")
        if ref.canonical in seen:
            plan.warnings.append(f"{filename}: line {number}: {line!r} repeats an earlier line; ignored")
            continue
        seen.add(ref.canonical)
        if ref.kind == "local":
            sources = ModelSources(local_path=ref.path)
            display = PurePosixPath(str(ref.path)).name
        else:
            sources = ModelSources(hf_repo=ref.repo, hf_revision=ref.revision)
            display = str(ref.repo).split("/", 1)[1]
        plan.models.append(
            ModelDoc(id=ref.canonical, display_name=display, provider=ref.provider, sources=sources, origin="imported")
        )
    if not plan.models:
        raise ManifestError(filename, "line 1", "model", "no model lines (org/model or local:file.gguf)")
    return plan


def models_txt_line(model: ModelDoc) -> str | None:
    """The models.txt line of a model, or None where the format cannot express it. The format names a Hugging Face
    repository (`org/model[@revision]`) or a local file relative to the models directory (`local:path`), so it
    expresses every model served from either, curated or imported; not an Ollama or OpenAI-served model, nor a local
    file given by an absolute path (a TOML preset's `weights` often is)."""
    s = model.sources
    if model.provider == "huggingface" and s.hf_repo:
        line = f"{s.hf_repo}@{s.hf_revision}" if s.hf_revision else s.hf_repo
        kind = "hf"
    elif model.provider == "local" and s.local_path:
        line, kind = f"local:{s.local_path}", "local"
    else:
        return None
    try:
        return line if parse_model_ref(line).kind == kind else None
    except ModelRefError:
        return None


def export_models_txt(models: list[ModelDoc]) -> str:
    lines = ["# modelfleet models.txt: org/model (Hugging Face) or local:file.gguf, one a line"]
    left_out = []
    for m in sorted(models, key=lambda m: m.id):
        line = models_txt_line(m)
        if line is None:
            left_out.append(m.id)
        elif line not in lines:
            lines.append(line)
    if left_out:
        lines.insert(1, f"# {len(left_out)} models this format cannot express (Ollama, OpenAI, absolute local paths)")
    return "\n".join(lines) + "\n"
