"""Architecture figures in the curated library: a shape like a GGUF header's, the same estimate, the method named."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from contracts.advice import library_candidate
from contracts.architecture import ModelArchitecture, rescale_shape, shape_from_architecture
from contracts.catalog import ModelDoc, ModelSources, QuantizationDoc
from contracts.fit import HostCapacity, fit_report, gguf_source_url, library_shapes
from contracts.gguf_header import model_shape
from contracts.vram import (
    GIB,
    EstimateSettings,
    cpu_estimate,
    estimate,
)
from services.catalog.library import load_library
from services.gateway.hosts_routes import catalog_sizing
from services.runtime.egress import default_policy
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_shapes import write_sparse_gguf

pytestmark = pytest.mark.unit

LIBRARY = load_library()
MODELS = {m.id: m for m in LIBRARY.models}
SIZED = [m for m in LIBRARY.models if m.architecture is not None and m.architecture.kind != "diffusion"]
SETTINGS = [
    EstimateSettings(num_ctx=2048),
    EstimateSettings(num_ctx=8192, parallel=2, cache_type="q8_0"),
    EstimateSettings(num_ctx=40960),
    EstimateSettings(num_ctx=131072, flash_attention=True),
]


def _arch(model_id: str) -> ModelArchitecture:
    arch = MODELS[model_id].architecture
    assert arch is not None
    return arch


def test_every_curated_model_carries_its_published_figures() -> None:
    for m in LIBRARY.models:
        a = m.architecture
        assert a is not None, f"{m.id} has no [models.architecture]"
        assert a.source.startswith("https://huggingface.co/") and "config.json" in a.source, m.id
        if a.kind == "diffusion":
            assert library_shapes(m) == {}
            continue
        # every quantization it lists gets a shape: the same figures, its own file size
        assert set(library_shapes(m)) == {q.name for q in m.quantizations}, m.id
        if a.kind == "decoder" and m.parameter_count and "vision" not in m.capabilities:
            # the figures add up to the parameter count the model card states (within 2 %)
            embd = a.vocab_size * a.embedding_length * (1 if a.tied_embeddings else 2)
            total = a.block_count * a.block_parameters() + embd
            assert abs(total / m.parameter_count - 1) < 0.02, (m.id, total, m.parameter_count)


@pytest.mark.parametrize("model_id", [m.id for m in SIZED])
def test_library_shape_estimate_equals_the_gguf_header_estimate(model_id: str, tmp_path: Path) -> None:
    """A GGUF header written from the same figures (sparse file): its estimate, and the library's from the
    file's size, agree within 2 % (KV cache and compute buffer exactly) at every context."""
    arch = _arch(model_id)
    path = write_sparse_gguf(tmp_path / f"{model_id}.gguf", arch)
    size = path.stat().st_size
    header = model_shape(read_file_header(path), size)
    library = shape_from_architecture(arch, size, "Q4_K_M")
    assert (library.block_count, library.head_count_kv, library.swa_layers) == (
        header.block_count,
        header.head_count_kv,
        header.swa_layers,
    )
    for s in SETTINGS:
        h, lib = estimate(header, s), estimate(library, s)
        assert lib.kv_cache_bytes == h.kv_cache_bytes and lib.compute_bytes == h.compute_bytes, (model_id, s)
        assert abs(lib.total_bytes / h.total_bytes - 1) < 0.02, (model_id, s, lib.total_bytes, h.total_bytes)
        assert abs(cpu_estimate(library, s).total_bytes / cpu_estimate(header, s).total_bytes - 1) < 0.02
        assert estimate(library, s, 10).gpu_layers == estimate(header, s, 10).gpu_layers == 10


def test_qwen3_30b_a3b_kv_cache_at_40960_is_the_exact_figure() -> None:
    """The issue's figure: 48 layers x 4 KV heads x 128 x 2 (K and V) x 2 bytes per token, at 40,960 tokens."""
    exact = 48 * 4 * 128 * 2 * 2 * 40960
    assert exact / GIB == 3.75
    doc = MODELS["qwen3-30b-a3b"]
    s = EstimateSettings(num_ctx=40960)
    report = fit_report(
        doc.id, "catalog", s, [], shape=library_shapes(doc)["Q4_K_M"], size_bytes=18_600_000_000, quant="Q4_K_M",
        quants=[(q.name, q.size_bytes) for q in doc.quantizations], quant_shapes=library_shapes(doc), method="shape",
    )  # fmt: skip
    assert report.method == "shape" and not report.simple
    assert abs(report.kv_cache_bytes / exact - 1) < 0.02
    assert report.compute_bytes > 0 and report.overhead_bytes > 0
    assert report.total_bytes == report.weights_bytes + report.kv_cache_bytes + report.compute_bytes + (
        report.overhead_bytes
    )
    # the context matters now: at 2048 tokens the KV cache is 20 times smaller
    short = estimate(library_shapes(doc)["Q4_K_M"], EstimateSettings(num_ctx=2048))
    assert short.kv_cache_bytes * 20 == report.kv_cache_bytes
    # weights per quantization come from its listed file size: Q8_0 is the bigger file
    q4, q8 = (report.quants[i].needed_bytes for i in range(2))
    assert q8 - q4 == pytest.approx(
        estimate(library_shapes(doc)["Q8_0"], s).weights_bytes - report.weights_bytes, rel=1e-6
    )


def test_encoders_have_no_kv_cache_and_no_logits() -> None:
    doc = MODELS["nomic-embed-text"]
    shape = library_shapes(doc)["F16"]
    e = estimate(shape, EstimateSettings(num_ctx=8192))
    assert e.kv_cache_bytes == 0
    assert e.compute_bytes < 512 * 8192 * 12 * 4 + 512 * 8192 * 4 + 6 * 512 * 768 * 4 + 1  # the attention bound
    assert shape.output_bytes < shape.input_bytes  # no output matrix, and the embedding is not duplicated


def test_diffusion_models_keep_the_file_size_form() -> None:
    flux = MODELS["flux.1-dev"]
    assert flux.architecture is not None and flux.architecture.kind == "diffusion"
    with pytest.raises(ValueError, match="diffusion"):
        shape_from_architecture(flux.architecture, 1000)
    sizing = asyncio.run(catalog_sizing(flux, None))
    assert sizing.method == "file-size" and sizing.shapes == {} and "diffusion" in sizing.warnings[0]


def test_bad_figures_are_named() -> None:
    base = _arch("qwen3-8b").model_dump()
    with pytest.raises(ValueError, match="head_count_kv has 3 entries for 36 layers"):
        ModelArchitecture.model_validate({**base, "head_count_kv": [8, 8, 8]})
    with pytest.raises(ValueError, match="expert_used_count"):
        ModelArchitecture.model_validate({**base, "expert_count": 8, "expert_feed_forward_length": 768})
    with pytest.raises(ValueError, match="feed_forward_length is required"):
        ModelArchitecture.model_validate({**base, "feed_forward_length": 0})


def test_a_typo_in_the_library_file_fails_loudly(tmp_path: Path) -> None:
    from services.catalog.library import LIBRARY_FILE

    text = LIBRARY_FILE.read_text(encoding="utf-8").replace("block_count = 48", "block_cont = 48", 1)
    broken = tmp_path / "library.toml"
    broken.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"qwen3-30b-a3b.*unknown keys \['block_cont'\]"):
        load_library(broken)


def test_old_payloads_without_figures_stay_valid_and_fall_back_to_the_file_size() -> None:
    old = {"id": "someone/model", "display_name": "m", "quantizations": [{"name": "Q4_K_M", "size_bytes": 4 * GIB}]}
    doc = ModelDoc.model_validate(old)
    assert doc.architecture is None and library_shapes(doc) == {}
    sizing = asyncio.run(catalog_sizing(doc, None))
    assert sizing.method == "file-size" and "no architecture figures and no GGUF file" in sizing.warnings[0]
    report = fit_report(doc.id, "catalog", EstimateSettings(), [], size_bytes=4 * GIB, quant="Q4_K_M")
    assert report.method == "file-size" and report.simple
    candidate = library_candidate(doc.model_copy(update={"parameter_count": 7_000_000_000}))
    assert candidate is not None and candidate[2] is None


def test_gguf_source_urls() -> None:
    doc = MODELS["qwen3-8b"]
    assert gguf_source_url(doc, "Q8_0") == "https://huggingface.co/Qwen/Qwen3-8B-GGUF/resolve/main/Qwen3-8B-Q8_0.gguf"
    assert gguf_source_url(doc, None, "http://mirror.lan/") == (
        "http://mirror.lan/Qwen/Qwen3-8B-GGUF/resolve/main/Qwen3-8B-Q4_K_M.gguf"
    )
    assert gguf_source_url(MODELS["flux.1-dev"], "BF16") is None  # safetensors: no GGUF header to read
    pinned = ModelDoc(
        id="x", display_name="x", sources=ModelSources(hf_repo="o/r", hf_revision="abc", hf_file="m.gguf")
    )
    assert gguf_source_url(pinned, None, "https://hf.example") == "https://hf.example/o/r/resolve/abc/m.gguf"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path, list[str]]]:
    """A hub stand-in serving one sparse GGUF (qwen3-8b's figures) at its resolve URL, with Range support."""
    path = write_sparse_gguf(tmp_path / "Qwen3-8B-Q4_K_M.gguf", _arch("qwen3-8b"))
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8 << 20)
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            asked.append(self.path)
            if not self.path.endswith("/resolve/main/Qwen3-8B-Q4_K_M.gguf"):
                self.send_error(404)
                return
            a, b = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
            body = head[a : b + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/{size}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MODELFLEET_EGRESS_ALLOW", "127.0.0.1")  # the process's policy, read again below
    default_policy.cache_clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", path, asked
    finally:
        server.shutdown()
        server.server_close()
        monkeypatch.undo()
        default_policy.cache_clear()


def test_an_imported_model_is_sized_from_its_gguf_header_read_by_range(hub: tuple[str, Path, list[str]]) -> None:
    endpoint, path, asked = hub
    size = path.stat().st_size
    imported = ModelDoc(
        id="someone/qwen3-8b-gguf", display_name="imported", origin="imported",
        quantizations=[
            QuantizationDoc(name="Q4_K_M", file="Qwen3-8B-Q4_K_M.gguf", size_bytes=size),
            QuantizationDoc(name="Q8_0", file="Qwen3-8B-Q8_0.gguf", size_bytes=2 * size),
        ],
        sources=ModelSources(hf_repo="Qwen/Qwen3-8B-GGUF", hf_file="Qwen3-8B-Q4_K_M.gguf"),
    )  # fmt: skip
    sizing = asyncio.run(catalog_sizing(imported, None, endpoint))
    assert sizing.method == "header" and sizing.warnings == []
    assert asked and all("Qwen3-8B-Q4_K_M.gguf" in p for p in asked)
    expected = model_shape(read_file_header(path), size)
    assert sizing.shapes["Q4_K_M"] == expected
    assert sizing.shapes["Q8_0"] == rescale_shape(expected, 2 * size, "Q8_0")
    s = EstimateSettings(num_ctx=32768)
    hosts = [HostCapacity(host_id="h", gpus_free=[12 * GIB], gpu_indexes=[0])]
    report = fit_report(
        imported.id, "catalog", s, hosts, shape=sizing.shapes["Q4_K_M"], size_bytes=size, quant="Q4_K_M",
        quants=sizing.sizes, quant_shapes=sizing.shapes, method=sizing.method,
    )  # fmt: skip
    assert report.method == "header" and report.kv_cache_bytes == 36 * 8 * 128 * 2 * 2 * 32768
    assert report.best_quant == {"h": "Q4_K_M"}  # Q8_0 at twice the size does not fit 12 GiB with that context
    # a second sizing reads nothing: the header is cached by URL
    before = len(asked)
    asyncio.run(catalog_sizing(imported, "Q4_K_M", endpoint))
    assert len(asked) == before
    # the library's own figures give the same estimate within 2 %
    library = shape_from_architecture(_arch("qwen3-8b"), size, "Q4_K_M")
    assert abs(estimate(library, s).total_bytes / report.total_bytes - 1) < 0.02


def test_an_unreadable_header_falls_back_to_the_file_size_and_says_why(hub: tuple[str, Path, list[str]]) -> None:
    endpoint, _, _ = hub
    missing = ModelDoc(
        id="someone/absent", display_name="absent", origin="imported",
        quantizations=[QuantizationDoc(name="Q4_K_M", file="absent.gguf", size_bytes=GIB)],
        sources=ModelSources(hf_repo="someone/absent"),
    )  # fmt: skip
    sizing = asyncio.run(catalog_sizing(missing, None, endpoint))
    assert sizing.method == "file-size" and sizing.shapes == {}
    assert "GGUF header of someone/absent unreadable" in sizing.warnings[0] and "404" in sizing.warnings[0]


def test_an_imported_local_gguf_is_sized_from_its_header_on_the_gateways_host(tmp_path: Path) -> None:
    path = write_sparse_gguf(tmp_path / "phi.gguf", _arch("phi4-mini-3.8b"))
    local = ModelDoc(
        id="local-phi", display_name="local-phi", provider="local", origin="imported",
        quantizations=[QuantizationDoc(name="Q4_K_M", file="phi.gguf", size_bytes=path.stat().st_size)],
        sources=ModelSources(local_path=str(path)),
    )  # fmt: skip
    sizing = asyncio.run(catalog_sizing(local, None))
    assert sizing.method == "header" and sizing.shapes["Q4_K_M"] == model_shape(
        read_file_header(path), path.stat().st_size
    )
    gone = local.model_copy(update={"sources": ModelSources(local_path=str(tmp_path / "gone.gguf"))})
    fallback = asyncio.run(catalog_sizing(gone, None))
    assert fallback.method == "file-size" and "no architecture figures and no GGUF file" in fallback.warnings[0]
