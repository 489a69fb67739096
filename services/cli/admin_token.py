"""The admin token of a fleet `modelfleet up` runs: the operator's MODELFLEET_ADMIN_TOKEN, else one it keeps.

Without a token the gateway would refuse every admin route, and the web UI (`/ui/`) could not be signed in to, so
`up` makes one on its first run: 32 random bytes in `<state dir>/admin-token`, readable by its owner only, reused
by every later run. The CLI on the same machine reads that file when no token is in its environment.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.runtime.settings import default_state_dir

FILE_NAME = "admin-token"


def token_file(state_dir: Path | None = None) -> Path:
    base = state_dir or Path(os.environ.get("MODELFLEET_STATE_DIR") or default_state_dir())
    return base.expanduser() / FILE_NAME


def ensure_admin_token(state_dir: Path) -> str:
    """The token kept in `state_dir`, made now (mode 0600, never overwritten) when there is none."""
    path = token_file(state_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        kept = path.read_text().strip()
        if not kept:
            raise ValueError(f"{path} is empty: delete it to make a new admin token") from None
        return kept
    made = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(made + "\n")
    return made


def kept_admin_token() -> str | None:
    """The token `up` keeps in this user's state dir, when it exists and is readable."""
    try:
        return token_file().read_text().strip() or None
    except OSError:
        return None
