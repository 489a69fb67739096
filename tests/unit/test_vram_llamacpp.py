"""The estimator held against llama.cpp's own account of the same file (llama-cpp-python, verbose=True).

llama.cpp prints its buffer sizes to the C-level stderr, so each file is loaded in a child process whose
stderr is captured whole. Weights and KV cache must match within 1 %, the compute buffer within 25 %.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType

from contracts.gguf_header import model_shape
from contracts.vram import MIB, EstimateSettings, cpu_estimate
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import smollm2_path, write_tiny_llama

pytestmark = pytest.mark.unit

CONTEXTS = (256, 512, 2048, 4096, 8192)
#: llama.cpp prints MiB with two decimals: allow that rounding on top of the relative tolerance.
PRINT_ROUNDING_MIB = 0.006

_LOADER = """
import sys, llama_cpp
for n in sys.argv[2:]:
    print(f"=== n_ctx {n}", file=sys.stderr, flush=True)
    m = llama_cpp.Llama(sys.argv[1], n_ctx=int(n), n_gpu_layers=0, n_threads=1, verbose=True)
    m.close()
"""

_PATTERNS = {
    "weights": r"model buffer size =\s+([\d.]+) MiB",
    "kv": r"KV buffer size =\s+([\d.]+) MiB",
    "compute": r"compute buffer size =\s+([\d.]+) MiB",
    "output": r"output buffer size =\s+([\d.]+) MiB",
}


def llama_cpp_account(path: Path, contexts: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """n_ctx -> llama.cpp's reported MiB of each buffer, parsed from its verbose stderr."""
    run = subprocess.run(
        [sys.executable, "-c", _LOADER, str(path), *map(str, contexts)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = {}
    for block in run.stderr.split("=== n_ctx ")[1:]:
        n = int(block.split("\n", 1)[0])
        found = {k: re.search(p, block) for k, p in _PATTERNS.items()}
        assert all(found.values()), f"llama.cpp did not report every buffer for n_ctx {n}:\n{block[-2000:]}"
        out[n] = {k: float(m.group(1)) for k, m in found.items() if m}
    assert sorted(out) == sorted(contexts)
    return out


def within(ours_bytes: int, theirs_mib: float, rel: float) -> bool:
    ours = ours_bytes / MIB
    return abs(ours - theirs_mib) <= rel * theirs_mib + PRINT_ROUNDING_MIB


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("llamacpp")
    q8 = GGMLQuantizationType.Q8_0
    return [write_tiny_llama(d / "tiny-f16.gguf"), write_tiny_llama(d / "tiny-q8.gguf", matrix_type=q8)]


def _check(path: Path) -> None:
    shape = model_shape(read_file_header(path))
    for n, theirs in llama_cpp_account(path, CONTEXTS).items():
        e = cpu_estimate(shape, EstimateSettings(num_ctx=n))
        assert within(e.weights_bytes, theirs["weights"], 0.01), (path.name, n, e.weights_bytes / MIB, theirs)
        assert within(e.kv_cache_bytes, theirs["kv"], 0.01), (path.name, n, e.kv_cache_bytes / MIB, theirs)
        assert within(e.compute_bytes, theirs["compute"], 0.25), (path.name, n, e.compute_bytes / MIB, theirs)
        assert within(e.output_bytes, theirs["output"], 0.01), (path.name, n, e.output_bytes / MIB, theirs)


def test_tiny_models_match_llama_cpp(tiny_files: list[Path]) -> None:
    for path in tiny_files:
        _check(path)


def test_smollm2_matches_llama_cpp() -> None:
    _check(smollm2_path())


def test_kv_cache_grows_with_context_as_llama_cpp_says(tiny_files: list[Path]) -> None:
    """Not only close at each point: the estimate and llama.cpp agree the KV cache is linear in n_ctx."""
    account = llama_cpp_account(tiny_files[0], (1024, 4096))
    assert account[4096]["kv"] == pytest.approx(4 * account[1024]["kv"], rel=0.01)
