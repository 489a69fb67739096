"""Header read time of the project's GGUF reader vs gguf.GGUFReader, on a 4 GiB sparse GGUF and on SmolLM2-135M.

    python -m scripts.bench.gguf_header

The last line is one JSON object: header_ms / baseline_ms / speedup for the sparse file (goal < 50 ms, >= 50x),
and the same figures for SmolLM2 under smollm2_*.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gguf import GGMLQuantizationType, GGUFReader

from contracts.gguf_header import model_shape
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import SHAPE_7B, smollm2_path, write_sparse_llama


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def measure(path: Path, runs: int, baseline_runs: int) -> dict[str, float]:
    ours = median_ms(lambda: model_shape(read_file_header(path)), runs)
    base = median_ms(lambda: GGUFReader(path), baseline_runs)
    return {"header_ms": ours, "baseline_ms": base, "speedup": round(base / ours, 1)}


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        sparse = write_sparse_llama(Path(d) / "7b-q5_0.gguf", SHAPE_7B, GGMLQuantizationType.Q5_0)
        size = sparse.stat().st_size
        s = measure(sparse, runs=30, baseline_runs=3)
        print(f"sparse 7B ({size / 2**30:.2f} GiB): ours {s['header_ms']} ms, GGUFReader {s['baseline_ms']} ms")
    smol = smollm2_path()
    m = measure(smol, runs=30, baseline_runs=3)
    print(f"SmolLM2-135M: ours {m['header_ms']} ms, GGUFReader {m['baseline_ms']} ms")
    result = {
        **s, "file_gib": round(size / 2**30, 2),
        "smollm2_header_ms": m["header_ms"], "smollm2_baseline_ms": m["baseline_ms"], "smollm2_speedup": m["speedup"],
        "goal": {"header_ms_below": 50, "speedup_at_least": 50},
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
