"""The least an HTTP proxy can be: the floor `gateway_overhead` measures the gateway against, in the same run.

    python -m scripts.bench.bare_proxy --port PORT --target http://127.0.0.1:8000/v1/chat/completions

Every POST is sent on (anything else is a 405), body as is, to `--target` and answered with the target's status,
content type and body. It runs on what the gateway runs on (uvicorn on the same event loop, httptools, one aiohttp
session, keep-alive as the gateway's) and does nothing else: no validation, auth, route, measurements, middlewares or
streaming. What it adds to a direct request is what one more HTTP hop costs this machine at that moment; what the
gateway adds beyond it is the gateway's own doing.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn
from starlette.types import Receive, Scope, Send

from services.gateway.settings import GatewaySettings
from services.runtime.service import event_loop


class BareProxy:
    """A raw ASGI app passing each request's body to one URL."""

    def __init__(self, target: str):
        self.target = target
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 405, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if self._session is None:  # made inside the running loop, as the gateway makes its own
            connector = aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=4.0)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        async with self._session.post(self.target, data=body, headers={"Content-Type": "application/json"}) as answer:
            payload = await answer.read()
            content_type = answer.headers.get("Content-Type", "application/json").encode()
            status = answer.status
        headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.bare_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="the URL every POST is sent on to")
    args = parser.parse_args()
    uvicorn.run(
        BareProxy(args.target),
        host="127.0.0.1",
        port=args.port,
        loop=event_loop(),
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=GatewaySettings.model_fields["keep_alive_s"].default,
    )


if __name__ == "__main__":
    main()
