"""The quantization table every service reads the same way: GGUF type names, bits per weight, size estimates."""

from __future__ import annotations

import re

#: GGUF quantization -> average bits per weight (llama.cpp's published figures, rounded).
BITS_PER_WEIGHT: dict[str, float] = {
    "IQ1_S": 1.56,
    "IQ1_M": 1.75,
    "IQ2_XXS": 2.06,
    "IQ2_XS": 2.31,
    "IQ2_S": 2.50,
    "IQ2_M": 2.70,
    "Q2_K": 2.63,
    "IQ3_XXS": 3.06,
    "IQ3_XS": 3.30,
    "IQ3_S": 3.44,
    "IQ3_M": 3.66,
    "Q3_K_S": 3.50,
    "Q3_K_M": 3.91,
    "Q3_K_L": 4.27,
    "IQ4_XS": 4.25,
    "IQ4_NL": 4.50,
    "Q4_0": 4.55,
    "Q4_1": 5.00,
    "Q4_K_S": 4.58,
    "Q4_K_M": 4.89,
    "Q5_0": 5.54,
    "Q5_1": 6.00,
    "Q5_K_S": 5.54,
    "Q5_K_M": 5.69,
    "Q6_K": 6.56,
    "Q8_0": 8.50,
    "MXFP4": 4.25,
    "F16": 16.0,
    "BF16": 16.0,
    "F32": 32.0,
}

#: From smallest to largest; the order a "next smaller quantization" fallback walks.
ORDER: tuple[str, ...] = tuple(sorted(BITS_PER_WEIGHT, key=lambda q: (BITS_PER_WEIGHT[q], q)))

#: What Ollama pulls when a tag names no quantization, and what the catalog recommends first.
DEFAULT_QUANT = "Q4_K_M"

_ALIASES = {"FP16": "F16", "FP32": "F32", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}
_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(I?Q[1-8](?:_[0-9A-Z]+)*|MXFP4|BF16|FP16|FP32|F16|F32)(?![A-Za-z0-9])", re.I)


class QuantizationError(ValueError):
    """A quantization name that is not in the table."""


def normalize_quant(name: str) -> str:
    """`q4_k_m`, `Q4-K-M`, `fp16` -> the table's spelling; anything else raises naming the value."""
    key = name.strip().upper().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in BITS_PER_WEIGHT:
        known = ", ".join(ORDER)
        raise QuantizationError(f"unknown quantization {name!r} (known: {known})")
    return key


# a repo's own build of a table type: a prefix such as unsloth's `UD-`, or bartowski's `_L`/`_XL` (Q8_0 embeddings)
_BUILD_VARIANT = re.compile(r"^(?:(?P<prefix>[A-Z]{1,8})-)?(?P<base>[A-Z0-9_]+?)(?P<suffix>_X?L)?$")


def normalize_gguf_tag(name: str) -> str:
    """A quantization as a GGUF repo's tag names it: a table type in the table's spelling, or a build variant of one
    (`Q6_K_L`, `UD-Q4_K_XL`) upper-cased, since Ollama and the provisioner match the repo's file by that name."""
    try:
        return normalize_quant(name)
    except QuantizationError as unknown:
        key = name.strip().upper()
        match = _BUILD_VARIANT.match(key)
        if match is None or not (match["prefix"] or match["suffix"]):
            raise
        try:
            normalize_quant(match["base"])
        except QuantizationError:
            raise unknown from None  # the variant of an unknown type is unknown too
        return key


def quant_in_name(text: str) -> str | None:
    """The quantization a file or tag name carries (`model-Q5_K_M.gguf`, `8b-instruct-q8_0`), if any known one."""
    for match in _IN_NAME.finditer(text):
        try:
            return normalize_quant(match.group(1))
        except QuantizationError:
            continue
    return None


def estimate_size_bytes(parameter_count: int, quant: str) -> int:
    """Weights-only file size estimate: parameters x bits per weight / 8."""
    if parameter_count <= 0:
        raise ValueError("parameter_count must be > 0")
    return int(parameter_count * BITS_PER_WEIGHT[normalize_quant(quant)] / 8)
