"""A host id that is stable across restarts: configured, or minted once and kept in the state dir."""

from __future__ import annotations

import re
import secrets
import socket
from pathlib import Path

_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def validate_host_id(value: str) -> str:
    if not _VALID.match(value):
        raise ValueError(
            f"host id {value!r} must be 1-63 characters of letters, digits, '_' or '-' (it is a subject token)"
        )
    return value


def stable_host_id(state_dir: Path, configured: str | None = None) -> str:
    if configured:
        return validate_host_id(configured)
    path = state_dir / "host-id"
    try:
        return validate_host_id(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    base = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]).strip("-_")[:48] or "host"
    host_id = f"{base}-{secrets.token_hex(3)}"
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(host_id + "\n")
    tmp.replace(path)
    return host_id
