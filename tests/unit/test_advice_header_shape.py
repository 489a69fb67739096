"""Recommendations for an imported model with no architecture figures: sized from the GGUF header's shape the fleet
knows for its local file (contracts/advice.py), scaled to the chosen quantization; else the file-size form."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.advice import advise_host, library_candidate
from contracts.architecture import rescale_shape
from contracts.catalog import ModelDoc
from contracts.fit import HostCapacity, fit_on_host
from contracts.gguf_header import model_shape
from contracts.vram import EstimateSettings
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import write_tiny_llama

pytestmark = pytest.mark.unit

GIB = 1 << 30
CTX = EstimateSettings(num_ctx=8192)


def imported(path: Path, quants: list[dict[str, object]]) -> ModelDoc:
    return ModelDoc.model_validate({
        "id": "acme/tiny", "display_name": "tiny", "origin": "imported", "parameter_count": 1_000_000_000,
        "quantizations": quants, "sources": {"local_path": str(path)},
    })  # fmt: skip


def test_an_imported_model_is_sized_from_its_local_header(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    header = model_shape(read_file_header(path), path.stat().st_size)
    size = path.stat().st_size

    same = library_candidate(imported(path, [{"name": header.file_type or "F32", "size_bytes": size}]), header)
    assert same is not None and (same.method, same.shape, same.size) == ("header", header, size)

    two = [{"name": "Q4_K_M", "size_bytes": size // 4}, {"name": "Q8_0", "size_bytes": size // 2}]
    other = library_candidate(imported(path, two), header)
    assert other is not None and (other.quant, other.method) == ("Q4_K_M", "header")
    assert other.shape == rescale_shape(header, size // 4, "Q4_K_M")

    no_sizes = library_candidate(imported(path, []), header)  # the header's file is the one size known
    assert no_sizes is not None and no_sizes.size == size and no_sizes.method == "header"

    plain = library_candidate(imported(path, [{"name": "Q4_K_M", "size_bytes": size}]))
    assert plain is not None and (plain.shape, plain.method) == (None, "file-size")

    cap = HostCapacity(host_id="h", gpus_free=[8 * GIB], gpu_indexes=[0], ram_available=16 * GIB)
    advice = advise_host(cap, [same], CTX)
    assert advice.placement is not None and advice.placement.method == "header"
    assert advice.placement.fit == fit_on_host("h", header, CTX, gpus_free=[8 * GIB], ram_available=16 * GIB,
                                               gpu_indexes=[0], file_size_bytes=size)  # fmt: skip
