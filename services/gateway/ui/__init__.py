"""The gateway's web UI under /ui/ (docs/web-ui.md): server-rendered pages on top of the REST API."""

from __future__ import annotations

from pathlib import Path

from starlette.staticfiles import StaticFiles

from services.gateway.ui.routes import PageAnswer, page_answer, router

STATIC_DIR = Path(__file__).parent / "static"


def static_files() -> StaticFiles:
    """The UI's own scripts and styles and the vendored libraries (static/vendor/VENDORED.md), at /ui/static."""
    return StaticFiles(directory=STATIC_DIR)


__all__ = ["STATIC_DIR", "PageAnswer", "page_answer", "router", "static_files"]
