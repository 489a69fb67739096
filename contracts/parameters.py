"""Generation parameters: the names and ranges every service accepts, and the precedence merge of their layers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The layers of a resolution, lowest precedence first (docs/catalog.md#resolution): the catalog's settings, the
#: model's defaults, the role entry's parameters, the performance profile (named by the request, else by the role),
#: the profile, the user's overrides, the request's options.
LAYERS: tuple[str, ...] = ("global", "model", "role", "performance_profile", "profile", "user", "request")


@dataclass(frozen=True)
class Spec:
    kind: type  # int, float, bool, list (of str)
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded (num_ctx > 0)

    def describe(self) -> str:
        if self.kind is list:
            return "a list of strings"
        if self.kind is bool:
            return "true or false"
        name = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{name} from {self.lo:g} to {self.hi:g}" + (
                " (exclusive of the lower bound)" if self.lo_open else ""
            )
        if self.lo is not None:
            return f"{name} {'>' if self.lo_open else '>='} {self.lo:g}"
        return name


#: Ollama's generation options (the ones a profile may carry) and their accepted ranges.
SPECS: dict[str, Spec] = {
    "num_ctx": Spec(int, 0, 10_000_000, lo_open=True),
    "temperature": Spec(float, 0, 2),
    "top_p": Spec(float, 0, 1),
    "top_k": Spec(int, 0, 1_000_000),
    "min_p": Spec(float, 0, 1),
    "typical_p": Spec(float, 0, 1),
    "repeat_penalty": Spec(float, 0, 10),
    "repeat_last_n": Spec(int, -1, 10_000_000),
    "presence_penalty": Spec(float, -2, 2),
    "frequency_penalty": Spec(float, -2, 2),
    "seed": Spec(int, -(2**63), 2**63 - 1),
    "num_predict": Spec(int, -2, 10_000_000),
    "num_keep": Spec(int, -1, 10_000_000),
    "stop": Spec(list),
    "mirostat": Spec(int, 0, 2),
    "mirostat_tau": Spec(float, 0, 100),
    "mirostat_eta": Spec(float, 0, 1),
    "num_gpu": Spec(int, -1, 10_000),
    "main_gpu": Spec(int, 0, 1_000),
    "num_thread": Spec(int, 0, 10_000),
    "num_batch": Spec(int, 0, 1_000_000, lo_open=True),
    "low_vram": Spec(bool),
    "use_mmap": Spec(bool),
    "use_mlock": Spec(bool),
    "numa": Spec(bool),
    "penalize_newline": Spec(bool),
}

#: Other spellings operators write (TOML performance profiles say max_tokens).
ALIASES: dict[str, str] = {"max_tokens": "num_predict", "context_length": "num_ctx"}


class ParameterError(ValueError):
    """A parameter outside its range or of the wrong type; names the layer and the field."""

    def __init__(self, field: str, message: str, layer: str = ""):
        self.field = field
        self.layer = layer
        super().__init__(f"{layer + ': ' if layer else ''}parameter {field!r} {message}")


def _check(name: str, value: Any, spec: Spec, layer: str) -> Any:
    if spec.kind is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ParameterError(name, f"must be {spec.describe()}, got {value!r}", layer)
        return list(value)
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ParameterError(name, f"must be {spec.describe()}, got {value!r}", layer)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParameterError(name, f"must be {spec.describe()}, got {value!r}", layer)
    if spec.kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ParameterError(name, f"must be {spec.describe()}, got {value!r}", layer)
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ParameterError(name, f"must be {spec.describe()}, got {value!r}", layer)
    low_bad = spec.lo is not None and (value <= spec.lo if spec.lo_open else value < spec.lo)
    if low_bad or (spec.hi is not None and value > spec.hi):
        raise ParameterError(name, f"must be {spec.describe()}, got {value!r}", layer)
    return value


def validate_parameters(params: Mapping[str, Any], layer: str = "") -> dict[str, Any]:
    """Normalise aliases, check each value's type and range; `None` means "not set" and is dropped."""
    if not isinstance(params, Mapping):
        raise ParameterError("parameters", f"must be an object, got {type(params).__name__}", layer)
    out: dict[str, Any] = {}
    for raw_name, value in params.items():
        name = ALIASES.get(str(raw_name), str(raw_name))
        spec = SPECS.get(name)
        if spec is None:
            raise ParameterError(str(raw_name), f"is not a known parameter (known: {', '.join(SPECS)})", layer)
        if value is None:
            continue
        out[name] = _check(name, value, spec, layer)
    return out


def merge_parameters(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Merge `(layer name, parameters)` lowest precedence first: a higher layer's value replaces a lower one's."""
    return merge_traced(layers)[0]


def merge_traced(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[dict[str, Any], dict[str, int]]:
    """`merge_parameters`, and for each merged parameter the index (in `layers`) of the layer its value came from."""
    merged: dict[str, Any] = {}
    origin: dict[str, int] = {}
    for index, (name, params) in enumerate(layers):
        for key, value in validate_parameters(params, name).items():
            merged[key] = value
            origin[key] = index
    return merged, origin
