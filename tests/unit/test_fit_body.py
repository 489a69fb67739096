"""POST /api/v1/fit's body (services/gateway/fit_body.py): a shape read from a real GGUF header passes as it is; a
shape no header can give (a per-layer list of the wrong length, a negative count) is refused naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.gguf_header import model_shape
from services.gateway.fit_body import FitBody
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import write_tiny_llama

pytestmark = pytest.mark.unit


def _header_shape(tmp_path: Path) -> dict[str, object]:
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    return model_shape(read_file_header(str(path)), path.stat().st_size).model_dump(mode="json")


def test_a_shape_read_from_a_header_is_taken_as_it_is(tmp_path: Path) -> None:
    shape = _header_shape(tmp_path)
    body = FitBody.model_validate({"model": "tiny", "shape": shape})
    assert body.shape.model_dump(mode="json") == shape


@pytest.mark.parametrize(
    ("field", "value", "loc", "says"),
    [
        ("layer_bytes", "drop-one", ("shape", "layer_bytes"), "entries for 4 blocks"),
        ("head_count_kv", "add-one", ("shape", "head_count_kv"), "entries for 4 blocks"),
        ("swa_layers", [True], ("shape", "swa_layers"), "1 entries for 4 blocks"),
        ("layer_bytes", "negative-first", ("shape", "layer_bytes", 0), "greater than or equal to 0"),
        ("tensor_types", {"q4_K": -1}, ("shape", "tensor_types", "q4_K"), "greater than or equal to 0"),
        ("architecture", "", ("shape", "architecture"), "at least 1 character"),
    ],
)
def test_a_shape_no_header_gives_is_refused_naming_the_field(
    tmp_path: Path, field: str, value: object, loc: tuple[object, ...], says: str
) -> None:
    shape = _header_shape(tmp_path)
    current = shape[field]
    assert isinstance(current, list | dict | str)
    if value == "drop-one":
        value = list(current)[:-1]
    elif value == "add-one":
        value = [*current, 0]
    elif value == "negative-first":
        value = [-1, *list(current)[1:]]
    with pytest.raises(ValidationError) as caught:
        FitBody.model_validate({"model": "tiny", "shape": {**shape, field: value}})
    (error,) = caught.value.errors()
    assert error["loc"] == loc and says in error["msg"], error


def test_no_sliding_window_list_at_all_is_taken(tmp_path: Path) -> None:
    shape = {**_header_shape(tmp_path), "swa_layers": []}
    assert FitBody.model_validate({"model": "tiny", "shape": shape}).shape.swa_layers == []
