"""The backend callers behind /v1/ (Ollama through the `ollama` client, OpenAI-compatible servers through aiohttp, the
fallback over the bus), one interface, OpenAI-shaped output; every failure is a `BackendError` that says how the call
ended."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import httpx
import ollama

from contracts.fallback import ChatMessage, GenerateChunk, GenerateEnd, GenerateRequest
from contracts.router import CallOutcome
from contracts.rpc import RpcError
from services.gateway import openai_wire as wire
from services.runtime.rpc import Rpc


class BackendError(Exception):
    """A failed backend call: its outcome as the router counts it, the backend's HTTP status when it answered."""

    def __init__(self, outcome: CallOutcome, message: str, status: int | None = None, retry_after: str | None = None):
        super().__init__(message)
        self.outcome: CallOutcome = outcome
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Worth the next backend: the backend is down, busy or broken, or lacks the model (a stale route).
        Any other 4xx is the request's fault and would fail everywhere."""
        return self.status is None or self.status >= 500 or self.status in (404, 408, 429)


@dataclass(frozen=True)
class ChatCall:
    """One chat request, backend-independent: OpenAI messages, the route's merged options (Ollama's names)."""

    client_model: str  # what the client asked for: every answer names it
    messages: list[dict[str, Any]]
    options: Mapping[str, Any]
    include_usage: bool = False
    passthrough: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=wire.completion_id)
    created: int = field(default_factory=wire.now)


class Backend(Protocol):
    """What the data plane needs of a backend kind; `base_url` and `model` name one backend and its model."""

    async def complete(self, base_url: str, model: str, call: ChatCall) -> dict[str, Any]:
        """The whole answer as an OpenAI chat completion."""
        ...

    def stream(self, base_url: str, model: str, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        """OpenAI chunks as the backend produces them; closing the iterator closes the backend request."""
        ...

    async def embed(self, base_url: str, model: str, texts: list[str]) -> tuple[list[list[float]], int]:
        """One vector per text, and the prompt tokens the backend counted."""
        ...


def _http_failure(exc: Exception) -> BackendError:
    if isinstance(exc, httpx.ConnectError | aiohttp.ClientConnectorError | ConnectionError):
        return BackendError("connect_refused", f"cannot connect: {exc}")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return BackendError("timeout", f"timed out: {type(exc).__name__}")
    return BackendError("error", f"{type(exc).__name__}: {exc}")


def _status_failure(status: int, message: str, retry_after: str | None = None) -> BackendError:
    return BackendError("rate_limited" if status == 429 else "error", message, status, retry_after)


class OllamaBackend:
    """Ollama's own API: /api/chat with `options.num_ctx` always sent (its /v1 cannot take it), /api/embed."""

    def __init__(self, timeout: httpx.Timeout, max_hosts: int = 256):
        self.timeout = timeout
        self.max_hosts = max_hosts
        self._clients: OrderedDict[str, ollama.AsyncClient] = OrderedDict()

    def _client(self, base_url: str) -> ollama.AsyncClient:
        # One client (one connection pool) per Ollama host, the least recently used dropped past `max_hosts`.
        client = self._clients.get(base_url)
        if client is None:
            client = self._clients[base_url] = ollama.AsyncClient(host=base_url, timeout=self.timeout)
            while len(self._clients) > self.max_hosts:
                self._clients.popitem(last=False)
        self._clients.move_to_end(base_url)
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()  # type: ignore[no-untyped-call]
        self._clients.clear()

    async def complete(self, base_url: str, model: str, call: ChatCall) -> dict[str, Any]:
        try:
            got = await self._client(base_url).chat(
                model=model, messages=wire.ollama_messages(call.messages), options=dict(call.options), stream=False
            )
        except ollama.ResponseError as exc:
            raise _status_failure(exc.status_code, exc.error) from None
        except (httpx.HTTPError, ConnectionError) as exc:
            raise _http_failure(exc) from None
        use = wire.usage(got.prompt_eval_count or 0, got.eval_count or 0)
        return wire.completion(call.id, call.created, call.client_model, got.message.content or "",
                               wire.finish_reason(got.done_reason), use)  # fmt: skip

    async def stream(self, base_url: str, model: str, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        args = (call.id, call.created, call.client_model)
        try:
            parts = await self._client(base_url).chat(
                model=model, messages=wire.ollama_messages(call.messages), options=dict(call.options), stream=True
            )
            first = True
            async for part in parts:
                if first:  # OpenAI's first chunk carries the role alone
                    yield wire.chunk(*args, {"role": "assistant", "content": ""})
                    first = False
                if part.message.content:
                    yield wire.chunk(*args, {"content": part.message.content})
                if part.done:
                    yield wire.chunk(*args, {}, wire.finish_reason(part.done_reason))
                    if call.include_usage:
                        yield wire.usage_chunk(*args, wire.usage(part.prompt_eval_count or 0, part.eval_count or 0))
                    return
        except ollama.ResponseError as exc:
            raise _status_failure(exc.status_code, exc.error) from None
        except (httpx.HTTPError, ConnectionError) as exc:
            raise _http_failure(exc) from None
        raise BackendError("error", "the Ollama stream ended without its final `done` line")

    async def embed(self, base_url: str, model: str, texts: list[str]) -> tuple[list[list[float]], int]:
        try:
            got = await self._client(base_url).embed(model=model, input=texts)
        except ollama.ResponseError as exc:
            raise _status_failure(exc.status_code, exc.error) from None
        except (httpx.HTTPError, ConnectionError) as exc:
            raise _http_failure(exc) from None
        return [list(v) for v in got.embeddings], got.prompt_eval_count or 0


#: A stream that says `[DONE]` before any choice finished was cut short by the backend, not completed.
_CUT_SHORT = (
    "the backend ended its stream before any finish_reason (cut short; llama-cpp-python's server does this to a "
    "stream whenever another request arrives unless it runs with `--interrupt_requests False`)"
)


class OpenAIBackend:
    """An OpenAI-compatible server (llama.cpp, vLLM, SGLang…) through one aiohttp session (one connection pool for every
    backend); streams are passed on line by line as they arrive, with `model` rewritten to what the client asked.

    aiohttp, not httpx, on this path (docs/gateway.md "Backend HTTP client"): a small completion costs the gateway
    about a fifth of the client CPU (`python -m scripts.bench.http_client`), and it sends a request's headers and body
    in one write where httpcore makes two; both count in every /v1/ request's added latency."""

    def __init__(
        self, *, connect_timeout_s: float, read_timeout_s: float, max_connections: int, keep_alive_s: float = 4.0
    ):
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self.max_connections = max_connections
        #: An idle connection is reused for this long only: less than the servers' own idle close (uvicorn, so vLLM
        #: and llama-cpp-python, 5 s; llama.cpp's server 5 s), so that a request never goes out on a connection the
        #: server is closing (it would fail and count against the backend).
        self.keep_alive_s = keep_alive_s
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        """Made on first use, inside the running loop (an aiohttp session belongs to its loop)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=0, keepalive_timeout=self.keep_alive_s
            )
            # `read_bufsize`: a server-sent line may be long (a whole answer in one chunk). No proxy: backends are on
            # the fleet's own network, and reading the proxy variables costs ~0.25 ms of CPU per request.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, read_bufsize=1 << 20, trust_env=False
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _body(self, model: str, call: ChatCall, stream: bool) -> dict[str, Any]:
        body = {**call.passthrough, **wire.openai_options(call.options), "model": model, "messages": call.messages,
                "stream": stream}  # fmt: skip
        if stream and call.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    @staticmethod
    async def _refusal(response: aiohttp.ClientResponse) -> BackendError:
        raw = (await response.read()).decode(errors="replace")
        try:
            message = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = raw[:500] or response.reason or ""
        return _status_failure(response.status, str(message), response.headers.get("retry-after"))

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` as JSON; the answer's JSON document, or the `BackendError` of a refusal or a failure."""
        try:
            async with self._http().post(url, data=json.dumps(body), headers=_JSON) as response:
                if response.status >= 400:
                    raise await self._refusal(response)
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _http_failure(exc) from None
        try:
            doc: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise BackendError("error", f"the backend's answer is not JSON: {exc}", response.status) from None
        return doc

    async def complete(self, base_url: str, model: str, call: ChatCall) -> dict[str, Any]:
        doc = await self._post(f"{base_url}/chat/completions", self._body(model, call, False))
        doc["model"] = call.client_model
        return doc

    async def stream(self, base_url: str, model: str, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        body = json.dumps(self._body(model, call, True))
        try:
            response = await self._http().post(f"{base_url}/chat/completions", data=body, headers=_JSON)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _http_failure(exc) from None
        ended = False
        try:
            if response.status >= 400:
                raise await self._refusal(response)
            finished = False
            async for raw in response.content:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, comments, `event:` lines
                data = line[5:].strip()
                if data == "[DONE]":
                    if not finished:
                        raise BackendError("error", _CUT_SHORT)
                    ended = True
                    return
                try:
                    item = json.loads(data)
                except ValueError:
                    raise BackendError("error", f"the backend sent a chunk that is not JSON: {data[:200]}") from None
                if "error" in item:
                    error = item["error"]
                    message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
                    raise BackendError("error", message)
                item["model"] = call.client_model
                finished = finished or any(c.get("finish_reason") for c in item.get("choices") or ())
                yield item
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _http_failure(exc) from None
        finally:
            # A stream read to its end gives the connection back; one left early (the client went away, an error)
            # is closed, which ends the backend's request (it sees the connection drop).
            if ended:
                response.release()
            else:
                response.close()
        raise BackendError("error", "the stream ended without `data: [DONE]`")

    async def embed(self, base_url: str, model: str, texts: list[str]) -> tuple[list[list[float]], int]:
        doc = await self._post(f"{base_url}/embeddings", {"model": model, "input": texts})
        rows = sorted(doc.get("data") or [], key=lambda d: d.get("index", 0))
        return [list(r["embedding"]) for r in rows], int((doc.get("usage") or {}).get("prompt_tokens") or 0)


_JSON = {"Content-Type": "application/json"}


#: The key a backend puts in its first chunk (or its completion) to name itself in `x-modelfleet-backend` when the
#: route could not (the fallback replica that answered); the gateway takes it out before the client sees the body.
BACKEND_LABEL = "x_modelfleet_backend"


class FallbackBackend:
    """The inference-fallback service over the request/reply seam (`rpc.fallback.generate.v1`, streamed): its
    chunks become OpenAI chunks; `model` is the role whose slot answers. Leaving the stream cancels generation."""

    def __init__(self, rpc: Rpc, timeout_s: float):
        self.rpc = rpc
        self.timeout_s = timeout_s

    def _request(self, model: str, call: ChatCall) -> GenerateRequest:
        messages = [
            ChatMessage(role=m["role"] if m["role"] in ("system", "user", "assistant", "tool") else "user",
                        content=m["content"])
            for m in wire.ollama_messages(call.messages)
        ]  # fmt: skip
        options = {k: v for k, v in call.options.items() if k != "num_ctx"}
        adapter = call.passthrough.get("adapter")  # the chat body's `adapter` (validated there)
        return GenerateRequest(role=model, model_ref=model, messages=messages, options=options, adapter=adapter)

    async def _frames(self, model: str, call: ChatCall) -> AsyncIterator[GenerateChunk | GenerateEnd]:
        frames = self.rpc.stream(self._request(model, call), timeout_s=self.timeout_s)
        try:
            async for frame in frames:
                yield frame
        except RpcError as exc:
            outcome: CallOutcome = (
                "rate_limited" if exc.status == 429 else "connect_refused" if exc.code == "no_responders" else "error"
            )
            if exc.status == 504:
                outcome = "timeout"
            raise BackendError(
                outcome, f"the fallback: {exc.detail}", exc.status if exc.status != 503 else None
            ) from None
        finally:
            await frames.aclose()  # type: ignore[attr-defined]

    async def complete(self, base_url: str, model: str, call: ChatCall) -> dict[str, Any]:
        text: list[str] = []
        label = ""
        async for frame in self._frames(model, call):
            if isinstance(frame, GenerateChunk):
                text.append(frame.text)
                label = label or _label(frame.host_id, frame.slot)
            else:
                use = wire.usage(frame.prompt_tokens, frame.completion_tokens)
                doc = wire.completion(call.id, call.created, call.client_model, "".join(text),
                                      wire.finish_reason(frame.finish_reason), use)  # fmt: skip
                doc[BACKEND_LABEL] = _label(frame.host_id, frame.slot)
                return doc
        raise BackendError("error", "the fallback's stream ended without its end message")

    async def stream(self, base_url: str, model: str, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
        args = (call.id, call.created, call.client_model)
        first = True
        async for frame in self._frames(model, call):
            if isinstance(frame, GenerateChunk):
                if first:  # OpenAI's first chunk carries the role alone (and, for the gateway, who answers)
                    head = wire.chunk(*args, {"role": "assistant", "content": ""})
                    head[BACKEND_LABEL] = _label(frame.host_id, frame.slot)
                    yield head
                    first = False
                if frame.text:
                    yield wire.chunk(*args, {"content": frame.text})
                continue
            if first:
                head = wire.chunk(*args, {"role": "assistant", "content": ""})
                head[BACKEND_LABEL] = _label(frame.host_id, frame.slot)
                yield head
            yield wire.chunk(*args, {}, wire.finish_reason(frame.finish_reason))
            if call.include_usage:
                yield wire.usage_chunk(*args, wire.usage(frame.prompt_tokens, frame.completion_tokens))
            return
        raise BackendError("error", "the fallback's stream ended without its end message")

    async def embed(self, base_url: str, model: str, texts: list[str]) -> tuple[list[list[float]], int]:
        raise BackendError("error", "the fallback serves chat only, not embeddings", 501)


def _label(host_id: str | None, slot: str | None) -> str:
    return f"fallback {host_id or 'unknown'} {slot or 'unknown'}"
