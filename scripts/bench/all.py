"""Run every benchmark under scripts/bench/ and write docs/benchmarks.md from what that run measured.

    python -m scripts.bench.all                       # every benchmark, full size (minutes), writes docs/benchmarks.md
    python -m scripts.bench.all --quick               # every benchmark at a small size (a smoke run, noisier)
    python -m scripts.bench.all --only probe_sample --only rpc --output /tmp/bench.md --raw /tmp/bench.json
    python -m scripts.bench.all --clean               # the committed HEAD, exported to a temporary folder

Each benchmark is its own process (`python -m scripts.bench.<name>`); it measures its figure next to a baseline in
the same run and prints one JSON object as its last line. This script reads that line, and the table it writes
holds, for each row: the figure, the baseline, the ratio figure / baseline, the goal and whether this run met it,
on the machine described at the top of the file (CPU, cores, memory, load average before and after). Nothing in the
table is typed by hand: a benchmark that fails is written as failed, with the end of its error output.
`--raw` also keeps every benchmark's whole JSON object; the run id in both files ties them to one run.
`--clean` runs the benchmarks from `git archive HEAD` in a temporary folder, so uncommitted work in a shared checkout
(another change half made) neither breaks nor colours the figures; the table names the commit.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
#: Modules of scripts/bench/ that are not benchmarks.
NOT_BENCHMARKS = frozenset({"__init__", "all", "baseline", "bare_proxy"})  # helpers the benchmarks use

Figures = dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One line of the table: `figure` (and `baseline`) are keys of the benchmark's JSON object."""

    what: str
    figure: str
    unit: str
    baseline: str | None = None
    baseline_is: str = ""
    goal: str = ""
    met: Callable[[Figures], bool] | None = None


@dataclass(frozen=True)
class Bench:
    name: str
    rows: tuple[Row, ...]
    quick_args: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    timeout_s: float = 1800.0
    #: `scripts.bench.<module>` when it is not `name` (the same benchmark run again with other `args`)
    module: str | None = None


def _f(figures: Figures, key: str) -> float:
    return float(figures[key])


def _gateway_rows(where: str) -> tuple[Row, ...]:
    """The gateway_overhead rows; `where` names the deployment measured when it is not the default."""
    return (
        Row(
            f"gateway /v1/ chat completion, {where}sequential p50",
            "gateway_p50_ms",
            "ms",
            "direct_p50_ms",
            "the same request straight to llama.cpp's server",
            "added p50 <= 2 ms",
            lambda f: _f(f, "added_p50_ms") <= 2,
        ),
        Row(
            f"gateway /v1/ chat completion, {where}sequential p50, next to the least a proxy does",
            "gateway_p50_ms",
            "ms",
            "bare_p50_ms",
            "the same request through a bare proxy, scripts.bench.bare_proxy",
        ),
        Row(
            f"gateway /v1/ chat completions, {where}32 clients",
            "rps",
            "req/s",
            "direct_rps",
            "the same requests straight to llama.cpp's server",
            "ratio >= 0.8",
            lambda f: _f(f, "rps_over_direct") >= 0.8,
        ),
    )


BENCHES: tuple[Bench, ...] = (
    Bench(
        "probe_sample",
        (
            Row(
                "probe: CPU time of one sample (no Ollama)",
                "cpu_ms",
                "ms",
                "baseline_cpu_ms",
                "psutil reads alone (HostStats.read())",
                "< 5 ms",
                lambda f: _f(f, "cpu_ms") < 5,
            ),
            Row(
                "probe: CPU time of one sample with Ollama /api/ps + /api/version",
                "cpu_ms_ollama",
                "ms",
                "baseline_cpu_ms",
                "psutil reads alone (HostStats.read())",
                "< 5 ms",
                lambda f: _f(f, "cpu_ms_ollama") < 5,
            ),
        ),
    ),
    Bench(
        "gguf_header",
        (
            Row(
                "GGUF header read, 4 GiB sparse file",
                "header_ms",
                "ms",
                "baseline_ms",
                "gguf.GGUFReader",
                "< 50 ms and >= 50x faster than the baseline",
                lambda f: _f(f, "header_ms") < 50 and _f(f, "speedup") >= 50,
            ),
            Row("GGUF header read, SmolLM2-135M", "smollm2_header_ms", "ms", "smollm2_baseline_ms", "gguf.GGUFReader"),
        ),
    ),
    Bench(
        "download",
        (
            Row(
                "provisioner hub download + sha256",
                "mib_s",
                "MiB/s",
                "same_work_mib_s",
                "curl | tee FILE | sha256sum (same work)",
                "ratio >= 0.9",
                lambda f: _f(f, "ratio_same_work") >= 0.9,
            ),
            Row(
                "provisioner hub download + sha256 vs fetch only",
                "mib_s",
                "MiB/s",
                "baseline_mib_s",
                "curl -o FILE (no hashing)",
            ),
        ),
        quick_args=("--size-mib", "64", "--rounds", "1"),
    ),
    Bench(
        "provision_present",
        (
            Row(
                "provision of a present model, command to result, p50",
                "p50_ms",
                "ms",
                "baseline_p50_ms",
                "raw NATS request/reply to an echo process",
                "p50 <= 10 ms",
                lambda f: _f(f, "p50_ms") <= 10,
            ),
        ),
        quick_args=("--requests", "50", "--warmup", "10"),
    ),
    Bench(
        "resolve",
        (
            Row(
                "rpc.catalog.resolve.v1 round trip, p50 (1,000 profiles)",
                "p50_ms",
                "ms",
                "baseline_p50_ms",
                "raw NATS request/reply to an echo process",
                "p50 <= 2 ms and ratio <= 4",
                lambda f: _f(f, "p50_ms") <= 2 and _f(f, "p50_ms") / _f(f, "baseline_p50_ms") <= 4,
            ),
        ),
        quick_args=("--profiles", "100", "--models", "20", "--requests", "200", "--warmup", "50"),
    ),
    Bench(
        "route",
        (
            Row(
                "router decision on 1,000 hosts, p99",
                "decide_p99_us",
                "us",
                goal="<= 100 us",
                met=lambda f: _f(f, "decide_p99_us") <= 100,
            ),
            Row("router decision, model loaded nowhere, p99", "decide_cold_p99_us", "us"),
            Row(
                "rpc.router.route.v1 round trip, p50",
                "route_p50_ms",
                "ms",
                "raw_p50_ms",
                "raw NATS request/reply to an echo process",
                "ratio <= 1.5",
                lambda f: _f(f, "route_p50_ms") / _f(f, "raw_p50_ms") <= 1.5,
            ),
        ),
        quick_args=("--hosts", "100", "--decisions", "2000", "--requests", "200"),
    ),
    Bench(
        "rpc",
        (
            Row(
                "bus seam ask, p50",
                "ask_p50_ms",
                "ms",
                "raw_p50_ms",
                "bare nats-py request/reply",
                "ratio <= 1.3",
                lambda f: _f(f, "ask_p50_ms") / _f(f, "raw_p50_ms") <= 1.3,
            ),
            Row(
                "bus seam ask inside a trace, p50",
                "ask_traced_p50_ms",
                "ms",
                "raw_p50_ms",
                "bare nats-py request/reply",
            ),
            Row(
                "bus seam stream",
                "stream_chunks_per_s",
                "chunks/s",
                "raw_chunks_per_s",
                "bare nats-py publishing to an inbox",
                "ratio >= 0.5",
                lambda f: _f(f, "stream_chunks_per_s") / _f(f, "raw_chunks_per_s") >= 0.5,
            ),
        ),
        quick_args=("--requests", "200", "--chunks", "1000"),
    ),
    Bench(
        "ingest",
        (
            Row(
                "router ingest of gpu.sampled events",
                "router_events_per_s",
                "events/s",
                "raw_events_per_s",
                "nats-py JetStream push subscription, acked",
                ">= 5,000 events/s",
                lambda f: _f(f, "router_events_per_s") >= 5000,
            ),
        ),
        quick_args=("--events", "2000", "--hosts", "50"),
    ),
    Bench(
        "gateway_overhead",
        _gateway_rows(""),
        quick_args=("--requests", "40", "--clients", "8", "--concurrent-requests", "40"),
    ),
    Bench(
        "gateway_overhead_asking",
        _gateway_rows("every route asked over the bus (a role several backends serve), "),
        args=("--no-route-reuse",),
        quick_args=("--requests", "40", "--clients", "8", "--concurrent-requests", "40"),
        module="gateway_overhead",
    ),
    Bench(
        "gateway_overhead_local",
        _gateway_rows("router in the gateway's process, "),
        args=("--router", "local"),
        quick_args=("--requests", "40", "--clients", "8", "--concurrent-requests", "40"),
        module="gateway_overhead",
    ),
    Bench(
        "http_client",
        (
            Row(
                "gateway's backend client: CPU per small completion (`OpenAIBackend`, aiohttp)",
                "cpu_us",
                "us",
                "httpx_cpu_us",
                "httpx.AsyncClient, the same request (the client it replaced)",
                "ratio <= 0.5",
                lambda f: _f(f, "cpu_us") / _f(f, "httpx_cpu_us") <= 0.5,
            ),
        ),
        quick_args=("--requests", "400"),
    ),
    Bench(
        "fallback",
        (
            Row(
                "fallback generation through rpc.fallback.generate.v1 (SmolLM2-135M)",
                "tokens_per_s",
                "tokens/s",
                "raw_tokens_per_s",
                "transformers generate() in one process",
                "ratio >= 0.9",
                lambda f: _f(f, "tokens_per_s") / _f(f, "raw_tokens_per_s") >= 0.9,
            ),
            Row(
                "fallback cold slot load (SmolLM2-135M GGUF)",
                "cold_load_s",
                "s",
                "raw_load_s",
                "transformers from_pretrained of the same GGUF",
            ),
        ),
        quick_args=("--tokens", "16", "--runs", "1"),
    ),
    Bench(
        "local_models",
        (
            Row(
                "probe: sha256 of a local model file in its thread (page cache)",
                "hash_mib_s",
                "MiB/s",
                "baseline_mib_s",
                "hashlib in a plain loop, same reads",
                "ratio >= 0.9",
                lambda f: _f(f, "hash_mib_s") / _f(f, "baseline_mib_s") >= 0.9,
            ),
            Row(
                "probe: event-loop timer lateness while hashing",
                "loop_max_lag_ms",
                "ms",
                "idle_max_lag_ms",
                "the same timer, nothing hashing",
            ),
            Row("probe: walk of 200 cached local model files", "walk_ms", "ms"),
        ),
        quick_args=("--size-mib", "64"),
    ),
)


def benchmark_modules() -> list[str]:
    """Every benchmark module under scripts/bench/ (what `all` must run)."""
    here = Path(__file__).parent
    return sorted(p.stem for p in here.glob("*.py") if p.stem not in NOT_BENCHMARKS)


@dataclass
class Result:
    bench: Bench
    figures: Figures | None = None
    error: str | None = None
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)


def last_json(lines: list[str]) -> Any:
    """The JSON value the output ends with: its last line, or an indented object starting on an earlier line."""
    for start in range(len(lines) - 1, -1, -1):
        if start == len(lines) - 1 or lines[start].startswith("{"):
            try:
                return json.loads("\n".join(lines[start:]))
            except json.JSONDecodeError:
                continue
    return None


def run_bench(bench: Bench, *, quick: bool, python: str = sys.executable, source: Path = ROOT) -> Result:
    """The benchmark as its own process, run from `source`; its last stdout line is its JSON object."""
    args = (*bench.args, *bench.quick_args) if quick else bench.args
    command = [python, "-m", f"scripts.bench.{bench.module or bench.name}", *args]
    started = time.monotonic()
    result = Result(bench, command=command)
    try:
        done = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=bench.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        result.error = f"timed out after {bench.timeout_s:.0f} s"
        result.seconds = time.monotonic() - started
        return result
    result.seconds = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or lines or ["no output"])[-1]
        result.error = f"exit {done.returncode}: {tail[:300]}"
        return result
    figures = last_json(lines)
    if figures is None:
        result.error = f"last line is not JSON: {lines[-1][:200]}"
        return result
    if not isinstance(figures, dict):
        result.error = f"last line is not a JSON object: {lines[-1][:200]}"
        return result
    missing = sorted({k for r in bench.rows for k in (r.figure, r.baseline) if k and k not in figures})
    if missing:
        result.error = f"its JSON has no {', '.join(missing)}"
    result.figures = figures
    return result


def _load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def export_head(into: Path) -> str:
    """`git archive HEAD` unpacked into `into`; returns HEAD's short hash."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return head.stdout.strip()


def describe_machine(clean_commit: str | None = None) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError):
        memory = "n/a"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "scripts/bench"], cwd=ROOT, capture_output=True, text=True)
    if clean_commit is not None:
        source = f"{clean_commit} (committed HEAD, exported with --clean)"
    else:
        source = (commit.stdout.strip() or "n/a") + (
            " (scripts/bench/ had uncommitted changes)" if dirty.stdout.strip() else ""
        )
    return {
        "cpu": cpu,
        "logical cores": str(os.cpu_count()),
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "commit": source,
    }


def number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table_rows(result: Result) -> list[list[str]]:
    """The table's cells for one benchmark's rows, from its figures (or its failure)."""
    rows = []
    for row in result.bench.rows:
        name = f"{row.what} (`{result.bench.name}`)"
        if result.figures is None or row.figure not in result.figures:
            rows.append([name, f"failed: {result.error}", "", "", row.goal or "-", "-"])
            continue
        figure = _f(result.figures, row.figure)
        cells = [name, f"{number(figure)} {row.unit}"]
        if row.baseline and row.baseline in result.figures:
            base = _f(result.figures, row.baseline)
            cells += [f"{number(base)} {row.unit} ({row.baseline_is})", f"{figure / base:.3g}" if base else "-"]
        else:
            cells += ["-", "-"]
        if row.met is None:
            cells += [row.goal or "-", "-"]
        else:
            try:
                cells += [row.goal, "yes" if row.met(result.figures) else "**no**"]
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                cells += [row.goal, f"n/a ({type(exc).__name__})"]
        rows.append(cells)
    return rows


def render(
    results: Sequence[Result],
    *,
    machine: dict[str, str],
    run_id: str,
    started: datetime,
    finished: datetime,
    quick: bool,
    load: tuple[str, str],
) -> str:
    size = "quick (`--quick`: small sizes, a smoke run)" if quick else "full (each benchmark's default size)"
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m scripts.bench.all` from one run: every figure and its baseline were measured by that",
        "run, the baseline in the same process tree at the same time (see each `scripts/bench/<name>.py` for what it",
        "measures). Do not edit by hand: run it again.",
        "",
        f"- run id: `{run_id}`",
        f"- date (UTC): {started:%Y-%m-%d %H:%M} to {finished:%H:%M}",
        f"- size: {size}",
        *(f"- {key}: {value}" for key, value in machine.items()),
        f"- load average (1/5/15 min) before: {load[0]}; after: {load[1]}",
        "",
        "The machine may be shared with other work while the run goes (a 2-core build machine often is): figures",
        "and their baselines share that noise, so the ratio is the steadier column.",
        "",
        "| benchmark | figure | baseline | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for cells in table_rows(result):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Ratio is figure / baseline. Seconds per benchmark (wall, including its set-up):", ""]
    lines += [f"- `{r.bench.name}`: {r.seconds:.0f} s" + (f" (failed: {r.error})" if r.error else "") for r in results]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    names = [b.name for b in BENCHES]
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every benchmark")
    parser.add_argument("--only", action="append", choices=names, metavar="NAME", help=f"one of {', '.join(names)}")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown table (docs/benchmarks.md)")
    parser.add_argument("--raw", type=Path, help="also write every benchmark's JSON object here")
    parser.add_argument("--clean", action="store_true", help="run the committed HEAD from a temporary export")
    args = parser.parse_args(argv)
    missing = sorted(set(benchmark_modules()) - set(names))
    if missing:
        parser.error(f"scripts/bench/ has benchmarks this runner does not know: {', '.join(missing)}")
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    run_id = uuid.uuid4().hex[:12]
    export = Path(tempfile.mkdtemp(prefix="mf-bench-head-")) if args.clean else None
    clean_commit = export_head(export) if export else None
    started, load_before = datetime.now(UTC), _load_average()
    results = []
    try:
        for bench in chosen:
            print(f"running {bench.name} ...", file=sys.stderr, flush=True)
            result = run_bench(bench, quick=args.quick, source=export or ROOT)
            print(f"  {bench.name}: {result.error or 'done'} ({result.seconds:.0f} s)", file=sys.stderr, flush=True)
            results.append(result)
    finally:
        if export:
            shutil.rmtree(export, ignore_errors=True)
    finished = datetime.now(UTC)
    text = render(
        results,
        machine=describe_machine(clean_commit),
        run_id=run_id,
        started=started,
        finished=finished,
        quick=args.quick,
        load=(load_before, _load_average()),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    if args.raw:
        raw = {
            "run_id": run_id,
            "quick": args.quick,
            "results": {r.bench.name: {"figures": r.figures, "error": r.error, "seconds": r.seconds} for r in results},
        }
        args.raw.write_text(json.dumps(raw, indent=1))
    print(f"wrote {args.output} (run {run_id})", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
