"""Writes the gateway's OpenAPI document to `docs/api/openapi.json` (`--check`: exit 1 if it drifted).

    python -m scripts.gen_openapi          # regenerate
    python -m scripts.gen_openapi --check  # what the drift test and CI run

Building the app connects to nothing: the bus connects in the FastAPI lifespan, which is never entered here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.generated_docs import ROOT, doc_environment, render, write_or_check

OPENAPI_PATH = ROOT / "docs" / "api" / "openapi.json"
COMMAND = "python -m scripts.gen_openapi"


def openapi_text() -> str:
    """The OpenAPI document of `build_app(GatewaySettings())`, rendered stably."""
    with doc_environment():
        from services.gateway.app import build_app
        from services.gateway.settings import GatewaySettings

        app = build_app(GatewaySettings())
        return render(app.openapi())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Write docs/api/openapi.json from the gateway.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the committed file drifted")
    args = parser.parse_args(argv)
    files: dict[Path, str] = {OPENAPI_PATH: openapi_text()}
    return write_or_check(files, check=args.check, command=COMMAND)


if __name__ == "__main__":
    sys.exit(main())
