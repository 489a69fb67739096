"""Shared by the doc generators: build apps in a clean environment, render stable JSON, write or check a file."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: The values generated documents are built with, so they never depend on the machine that ran the script.
DOC_ENV = {
    "MODELFLEET_NATS_URL": "nats://127.0.0.1:4222",
    "MODELFLEET_DATABASE_URL": "postgresql+asyncpg://modelfleet@127.0.0.1:5432/modelfleet",
    "MODELFLEET_HOST_ID": "example-host",
    # Building an app to read its routes or subjects must not open its /metrics port.
    "MODELFLEET_METRICS_PORT": "0",
}


@contextmanager
def doc_environment() -> Iterator[None]:
    """Drop the caller's MODELFLEET_*/OTEL_* variables, use a throw-away state dir, restore everything after."""
    saved = dict(os.environ)
    # Each service build installs its tracer provider; only the first may become global, which is fine here.
    otel_log = logging.getLogger("opentelemetry.trace")
    saved_level = otel_log.level
    otel_log.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="modelfleet-docs-") as state_dir:
        try:
            for name in list(os.environ):
                if name.startswith(("MODELFLEET_", "OTEL_")):
                    del os.environ[name]
            os.environ.update(DOC_ENV, MODELFLEET_STATE_DIR=state_dir)
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            otel_log.setLevel(saved_level)


def render(document: Any) -> str:
    """Stable text: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def display(path: Path) -> str:
    """`path` relative to the repository when it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_or_check(files: dict[Path, str], *, check: bool, command: str) -> int:
    """Write `files` (path -> text), or with `check` report each one that differs and return 1."""
    stale = [path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    if check:
        for path in stale:
            print(f"{display(path)} is out of date with the code; run `{command}` and commit it", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], encoding="utf-8")
        print(f"wrote {display(path)}")
    if not stale:
        print("up to date")
    return 0
