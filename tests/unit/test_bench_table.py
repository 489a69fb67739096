"""`python -m scripts.bench.all` writes the benchmarks table from the run it makes, never from a snapshot.

One cheap benchmark (the probe sample: a few seconds) runs for real into a temporary file; every figure and baseline
in the table must be that run's (its raw JSON, tied to the table by the run id), and docs/benchmarks.md must be a
table this runner wrote.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scripts.bench import all as bench_all

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def table(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in rows]


def test_every_benchmark_under_scripts_bench_is_run() -> None:
    assert set(bench_all.benchmark_modules()) == {b.module or b.name for b in bench_all.BENCHES}
    assert len({b.name for b in bench_all.BENCHES}) == len(bench_all.BENCHES), "two benchmarks under one name"
    for bench in bench_all.BENCHES:
        assert bench.rows, bench.name
        assert any(r.met for r in bench.rows), f"{bench.name}: no row holds the figure to its goal"
        assert all(bool(r.baseline) == bool(r.baseline_is) for r in bench.rows), f"{bench.name}: baseline unnamed"
        assert all(bool(r.goal) == (r.met is not None) for r in bench.rows), f"{bench.name}: a goal without a check"


def test_the_table_holds_the_figures_of_the_run_it_made(tmp_path: Path) -> None:
    output, raw_path = tmp_path / "benchmarks.md", tmp_path / "raw.json"
    args = ["--clean", "--quick", "--only", "probe_sample", "--output", str(output), "--raw", str(raw_path)]
    code = bench_all.main(args)
    assert code == 0
    raw = json.loads(raw_path.read_text())
    text = output.read_text()
    assert f"run id: `{raw['run_id']}`" in text
    figures = raw["results"]["probe_sample"]["figures"]
    assert raw["results"]["probe_sample"]["error"] is None
    rows = table(text)
    (bench,) = [b for b in bench_all.BENCHES if b.name == "probe_sample"]
    assert len(rows) == len(bench.rows)
    for cells, row in zip(rows, bench.rows, strict=True):
        name, figure, baseline, ratio, goal, met = cells
        assert name.startswith(row.what)
        assert figure == f"{bench_all.number(float(figures[row.figure]))} {row.unit}"
        assert row.baseline is not None
        assert baseline.startswith(f"{bench_all.number(float(figures[row.baseline]))} {row.unit}")
        assert float(ratio) == pytest.approx(float(figures[row.figure]) / float(figures[row.baseline]), rel=1e-2)
        assert goal == row.goal and met in {"yes", "**no**"}
    assert "logical cores" in text and "load average" in text
    assert "(committed HEAD, exported with --clean)" in text  # it ran from an export of HEAD, not this checkout


def test_a_failing_benchmark_is_written_as_failed_not_dropped(tmp_path: Path) -> None:
    """A benchmark whose JSON lacks a figure, one that exits non-zero, one that prints no JSON: each is a failed row."""
    fake = tmp_path / "fake-python"
    row = bench_all.Row("x", "no_such_key", "ms", goal="< 1", met=lambda f: True)
    broken = bench_all.Bench("probe_sample", (row,))
    for script, error in (
        ("echo '{\"other\": 1}'", "its JSON has no no_such_key"),
        ("echo boom >&2; exit 3", "exit 3: boom"),
        ("echo 'not json'", "last line is not JSON: not json"),
    ):
        fake.write_text(f"#!/bin/sh\n{script}\n")
        fake.chmod(0o755)
        result = bench_all.run_bench(broken, quick=True, python=str(fake))
        assert result.error == error
        (cells,) = bench_all.table_rows(result)
        assert cells[1] == f"failed: {error}" and cells[5] == "-"
    fake.write_text("#!/bin/sh\necho 'progress line'\nprintf '{\\n  \"no_such_key\": 0.5\\n}\\n'\n")
    indented = bench_all.run_bench(broken, quick=True, python=str(fake))  # json.dumps(..., indent=2) is read too
    assert indented.error is None and indented.figures == {"no_such_key": 0.5}
    assert bench_all.table_rows(indented)[0][1:2] == ["0.5 ms"]


def test_docs_benchmarks_was_written_by_the_runner() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert re.search(r"^- run id: `[0-9a-f]{12}`$", text, re.M)
    assert "python -m scripts.bench.all" in text
    names = {b.name for b in bench_all.BENCHES}
    written = {m.group(1) for m in re.finditer(r"\(`(\w+)`\) \|", text)}
    assert written == names, f"docs/benchmarks.md lacks {names - written}"
