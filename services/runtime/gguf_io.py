"""The IO side of GGUF header reading: the first bytes of a local file, or an HTTP Range of a remote one.

The parsing is contracts.gguf_header's (pure); this only feeds it bytes until it stops asking for more.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from contracts.gguf_header import GgufError, GgufHeader, NeedMoreBytes, next_read_size, parse_header
from services.runtime.egress import EgressPolicy, EgressTransport

#: The first read; most headers (tokenizer included) fit in 8 MiB, a 256k vocabulary in ~16 MiB.
FIRST_READ = 4 << 20


def read_file_header(path: str | os.PathLike[str], first_read: int = FIRST_READ) -> GgufHeader:
    """Parse the header of a local GGUF file, reading only as many bytes as the header takes."""
    p = Path(path)
    if not p.is_file():
        raise GgufError(f"path {str(p)!r} is not a file")
    size = p.stat().st_size
    want = min(first_read, size)
    with p.open("rb") as f:
        while True:
            f.seek(0)
            buf = f.read(want)
            try:
                return parse_header(buf)
            except NeedMoreBytes as exc:
                if want >= size:
                    raise GgufError(f"{p}: file ends inside the GGUF header (needs {exc.needed} bytes)") from exc
                want = min(size, next_read_size(want, exc.needed))


async def _range(client: httpx.AsyncClient, url: str, n: int, headers: dict[str, str]) -> tuple[bytes, int | None]:
    """The first `n` bytes (a server that ignores Range is read only that far) and the total size if known."""
    async with client.stream("GET", url, headers={**headers, "Range": f"bytes=0-{n - 1}"}) as r:
        if r.status_code not in (200, 206):
            raise GgufError(f"GET {url} answered {r.status_code}")
        total = None
        if r.status_code == 206 and "/" in r.headers.get("content-range", ""):
            tail = r.headers["content-range"].rsplit("/", 1)[1]
            total = int(tail) if tail.isdigit() else None
        elif r.status_code == 200 and r.headers.get("content-length", "").isdigit():
            total = int(r.headers["content-length"])
        chunks, got = [], 0
        async for chunk in r.aiter_bytes():
            chunks.append(chunk)
            got += len(chunk)
            if got >= n:
                break
        return b"".join(chunks)[:n], total


async def read_url_header(
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    headers: dict[str, str] | None = None,
    first_read: int = FIRST_READ,
    egress: EgressPolicy | None = None,
) -> tuple[GgufHeader, int | None]:
    """Parse a remote GGUF's header through HTTP Range requests (a Hugging Face `resolve` URL follows its CDN
    redirect). Returns the header and the file size when the server tells it.

    Without `client`, every request and redirect hop goes through the egress policy (`egress`, default the
    process's): a refused destination raises `EgressDenied` before any connection is made to it."""
    own = client is None
    c = client or httpx.AsyncClient(follow_redirects=True, timeout=30.0, transport=EgressTransport(egress))
    want = first_read
    try:
        while True:
            buf, total = await _range(c, url, want, headers or {})
            try:
                return parse_header(buf), total
            except NeedMoreBytes as exc:
                if len(buf) < want:
                    raise GgufError(f"{url}: file ends inside the GGUF header (needs {exc.needed} bytes)") from exc
                want = next_read_size(want, exc.needed)
    except httpx.HTTPError as exc:
        raise GgufError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    finally:
        if own:
            await c.aclose()
