"""The web UI's way to the REST API: the very routes the CLI calls, asked in-process with the signed-in token as
`Authorization: Bearer`, so every page goes through the same auth, validation and errors as the API itself.

`forward` streams the answer (server-sent events of a provision, a streamed chat); `call` collects it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

Message = MutableMapping[str, Any]
#: Request headers passed on to the API (the rest, cookies included, stay with the UI).
PASSED_REQUEST_HEADERS = (b"content-type", b"accept", b"traceparent", b"tracestate")


@dataclass
class Streamed:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[bytes]

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == wanted), None)


@dataclass
class ApiAnswer:
    status: int
    headers: dict[str, str]
    content: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.content) if self.content else None

    @property
    def detail(self) -> str:
        """The API's error message: `detail` (control plane) or `error.message` (OpenAI shape), else the body."""
        try:
            body = self.json()
        except ValueError:
            return self.content.decode("utf-8", "replace")[:500]
        if isinstance(body, dict):
            if isinstance(body.get("detail"), str):
                return str(body["detail"])
            err = body.get("error")
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                return str(err["message"])
        return json.dumps(body)[:500]


async def forward(
    request: Request, method: str, path: str, token: str, *, query: str = "", body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Streamed:  # fmt: skip
    """Run `method path?query` through the gateway app itself with `token`; the answer's body is streamed."""
    passed = [(k, v) for k, v in (headers or []) if k.lower() in PASSED_REQUEST_HEADERS]
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method.upper(), "scheme": request.url.scheme, "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": query.encode(), "client": request.scope.get("client"),
        "server": request.scope.get("server"),
        "headers": [*passed, (b"authorization", f"Bearer {token}".encode()), (b"host", b"modelfleet-ui")],
    }  # fmt: skip
    if "state" in request.scope:
        scope["state"] = dict(request.scope["state"])
    queue: asyncio.Queue[Message | None] = asyncio.Queue()
    left = asyncio.Event()
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await queue.put(message)

    async def run() -> None:
        try:
            await request.app(scope, receive, send)
        finally:
            await queue.put(None)

    task = asyncio.create_task(run())
    start = await queue.get()
    if start is None or start["type"] != "http.response.start":
        left.set()
        await asyncio.gather(task, return_exceptions=True)
        return Streamed(502, [(b"content-type", b"application/json")], _once(b'{"detail": "the API gave no answer"}'))

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                message = await queue.get()
                if message is None:
                    return
                if message["type"] == "http.response.body":
                    if message.get("body"):
                        yield bytes(message["body"])
                    if not message.get("more_body", False):
                        return
        finally:
            left.set()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return Streamed(int(start["status"]), list(start.get("headers", [])), chunks())


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def call(
    request: Request, method: str, path: str, token: str, *, params: dict[str, Any] | None = None,
    json_body: Any = None,
) -> ApiAnswer:  # fmt: skip
    """`forward`, collected: for the pages rendered on the server."""
    query = urlencode({k: v for k, v in (params or {}).items() if v is not None and v != ""}, doseq=True)
    headers = [(b"accept", b"application/json")]
    body = b""
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.append((b"content-type", b"application/json"))
    streamed = await forward(request, method, path, token, query=query, body=body, headers=headers)
    content = b"".join([c async for c in streamed.body])
    names = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in streamed.headers}
    return ApiAnswer(streamed.status, names, content)
