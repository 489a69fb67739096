"""The curated library file: models (with their architecture figures), the 19 system default profiles, the built-in
profile set, the default model."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.architecture import ModelArchitecture
from contracts.catalog import PROFILE_TYPES, ModelDoc, ProfileDoc, ProfileSetDoc, system_profile_id
from contracts.parameters import validate_parameters

LIBRARY_FILE = Path(__file__).with_name("library.toml")


@dataclass(frozen=True)
class Library:
    models: list[ModelDoc]
    profiles: list[ProfileDoc]
    sets: list[ProfileSetDoc]
    default_model: str | None


def load_library(path: Path = LIBRARY_FILE) -> Library:
    """Parse and validate the library; a broken file fails the start loudly (it ships with the code)."""
    doc: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    for i, m in enumerate(doc.get("models", [])):
        unknown = set(m.get("architecture") or {}) - set(ModelArchitecture.model_fields)
        if unknown:  # the contract ignores unknown fields (newer writers); the shipped file must not have typos
            raise ValueError(f"{path}: models[{i}] ({m.get('id')}): architecture has unknown keys {sorted(unknown)}")
    models = [ModelDoc.model_validate({**m, "origin": "curated"}) for m in doc.get("models", [])]
    ids = {m.id for m in models}
    base = validate_parameters(doc.get("profile_base", {}), "profile_base")
    profiles = []
    for number, name in PROFILE_TYPES.items():
        spec = doc["profiles"][str(number)]
        if spec["model"] not in ids:
            raise ValueError(f"{path}: profiles.{number}: model {spec['model']!r} is not in the library")
        profiles.append(
            ProfileDoc(
                id=system_profile_id(number),
                owner_id=None,
                name=f"{name.replace('_', ' ').title()} (Default)",
                type=number,
                type_name=name,
                description=f"System default profile for {name.replace('_', ' ')}.",
                model_name=spec["model"],
                parameters={**base, **validate_parameters(spec.get("parameters", {}), f"profiles.{number}")},
                system_prompt=spec.get("prompt", ""),
                circuit_breaker=spec.get("circuit_breaker"),
                gpu_config=spec.get("gpu_config"),
                system_default=True,
            )
        )
    sets = [ProfileSetDoc.model_validate({"name": n, **body}) for n, body in doc.get("profile_sets", {}).items()]
    return Library(models=models, profiles=profiles, sets=sets, default_model=doc.get("default_model"))
