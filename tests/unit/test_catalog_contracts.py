"""Model references, the quantization table and generation parameters: the pure functions every service shares."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.catalog import profile_type_number, system_profile_id
from contracts.model_ref import ModelRefError, parse_model_ref
from contracts.parameters import LAYERS, SPECS, ParameterError, merge_parameters, validate_parameters
from contracts.quantization import ORDER, QuantizationError, estimate_size_bytes, normalize_quant, quant_in_name

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "kind", "canonical", "provider"),
    [
        ("qwen3:8b", "ollama", "qwen3:8b", "ollama"),
        ("qwen3:30b-a3b", "ollama", "qwen3:30b-a3b", "ollama"),
        ("nomic-embed-text", "ollama", "nomic-embed-text", "ollama"),
        ("library/llama3.2:3b-instruct-q4_K_M", "ollama", "library/llama3.2:3b-instruct-q4_K_M", "ollama"),
        (
            "hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:q4_k_m",
            "hf_gguf",
            "hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M",
            "ollama",
        ),
        (
            "hf.co/mradermacher/Llama-3.3-70B-Instruct-GGUF",
            "hf_gguf",
            "hf.co/mradermacher/Llama-3.3-70B-Instruct-GGUF",
            "ollama",
        ),
        (
            "https://huggingface.co/mradermacher/Llama-3.3-70B-Instruct-GGUF",
            "hf",
            "mradermacher/Llama-3.3-70B-Instruct-GGUF",
            "huggingface",
        ),
        ("deepseek-ai/Janus-Pro-1B", "hf", "deepseek-ai/Janus-Pro-1B", "huggingface"),
        ("Qwen/Qwen3-8B@v1.0", "hf", "Qwen/Qwen3-8B@v1.0", "huggingface"),
        (
            "Qwen/Qwen3-8B@0123456789abcdef0123456789abcdef01234567",
            "hf",
            "Qwen/Qwen3-8B@0123456789abcdef0123456789abcdef01234567",
            "huggingface",
        ),
        ("local:models/tinyllama.Q4_K_M.gguf", "local", "local:models/tinyllama.Q4_K_M.gguf", "local"),
    ],
)
def test_model_references_parse_to_their_canonical_spelling(text, kind, canonical, provider):
    ref = parse_model_ref(text)
    assert (ref.kind, ref.canonical, ref.provider) == (kind, canonical, provider)
    assert parse_model_ref(ref.canonical) == ref  # canonical is a fixed point


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "1 to 512"),
        ("local:../../etc/passwd", "'..'"),
        ("local:/etc/passwd", "relative"),
        ("hf.co/only-one-part:Q4_K_M", "repository"),
        ("hf.co/a/b:Q9_X", "unknown quantization"),
        ("org/repo@../../x", "revision"),
        ("bad name:tag", "model name"),
        ("qwen3:bad tag", "tag"),
        ("a/b/c", "repository"),
    ],
)
def test_bad_model_references_name_the_part_at_fault(text, names):
    with pytest.raises(ModelRefError, match=names.replace("(", r"\(")):
        parse_model_ref(text)


def test_quantization_table():
    assert normalize_quant("q4_k_m") == normalize_quant("Q4-K-M") == "Q4_K_M"
    assert normalize_quant("fp16") == "F16"
    with pytest.raises(QuantizationError, match="Q7_Z"):
        normalize_quant("Q7_Z")
    assert quant_in_name("Qwen3-8B-Q5_K_M.gguf") == "Q5_K_M"
    assert quant_in_name("llama3.2:3b-instruct-q8_0") == "Q8_0"
    assert quant_in_name("model.safetensors") is None
    assert ORDER.index("Q2_K") < ORDER.index("Q4_K_M") < ORDER.index("Q8_0") < ORDER.index("F16")
    assert 4.5e9 < estimate_size_bytes(8_000_000_000, "Q4_K_M") < 5.0e9


def test_profile_types_and_fixed_ids():
    assert str(system_profile_id(1)) == "00000000-0000-0000-0000-000000000001"
    assert str(system_profile_id(19)) == "00000000-0000-0000-0000-000000000019"
    assert profile_type_number("Research Plan") == profile_type_number("research_plan") == profile_type_number(11) == 11
    with pytest.raises(ValueError, match="unknown profile type"):
        profile_type_number(20)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.01}, "top_p"),
        ({"num_ctx": 0}, "num_ctx"),
        ({"num_ctx": 4096.5}, "num_ctx"),
        ({"top_k": "forty"}, "top_k"),
        ({"seed": True}, "seed"),
        ({"stop": [1, 2]}, "stop"),
        ({"temprature": 0.5}, "temprature"),
        ({"min_p": float("nan")}, "min_p"),
    ],
)
def test_out_of_range_parameters_are_refused_naming_layer_and_field(params, field):
    with pytest.raises(ParameterError) as info:
        validate_parameters(params, "profile")
    assert info.value.field == field and info.value.layer == "profile"
    assert f"'{field}'" in str(info.value) and str(info.value).startswith("profile: ")


def test_aliases_and_normalisation():
    assert validate_parameters({"max_tokens": 512, "stop": "</s>", "temperature": 1, "num_ctx": 8192.0}) == {
        "num_predict": 512, "stop": ["</s>"], "temperature": 1.0, "num_ctx": 8192,
    }  # fmt: skip
    assert validate_parameters({"temperature": None}) == {}


# --- precedence: global < model < profile < user < request, as a property ---------------------------------------------

_VALUES = {
    "temperature": st.floats(0, 2, allow_nan=False),
    "top_p": st.floats(0, 1, allow_nan=False),
    "top_k": st.integers(0, 200),
    "num_ctx": st.integers(1, 131072),
    "seed": st.integers(-1, 2**31),
    "stop": st.lists(st.text(min_size=1, max_size=5), max_size=3),
}
_LAYER = st.fixed_dictionaries({}, optional=_VALUES)


@given(st.lists(_LAYER, min_size=len(LAYERS), max_size=len(LAYERS)))
def test_merge_takes_each_parameter_from_the_highest_layer_that_sets_it(layers):
    merged = merge_parameters(list(zip(LAYERS, layers, strict=True)))
    for name in _VALUES:
        setters = [layer[name] for layer in layers if name in layer]
        if setters:
            expected = setters[-1]
            assert merged[name] == (float(expected) if SPECS[name].kind is float else expected)
        else:
            assert name not in merged
