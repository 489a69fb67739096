"""The OpenAI wire format of /v1/: request models, answer and chunk builders, and pure translations (no IO)."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Request fields that travel to the router as options (Ollama's names: the router and the catalog merge those).
_OPTION_NAMES = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
#: Route options an OpenAI-compatible backend takes, by their OpenAI name. top_k, min_p and repeat_penalty are
#: extensions llama.cpp and vLLM accept; num_ctx and Ollama's runtime options have no OpenAI counterpart.
_OPENAI_OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop", "num_predict": "max_tokens",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty", "top_k": "top_k",
    "min_p": "min_p", "repeat_penalty": "repeat_penalty",
}  # fmt: skip
DONE = b"data: [DONE]\n\n"


class ChatMessage(BaseModel):
    """One message; content parts other than text (images) are passed to OpenAI-compatible backends only."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request. Fields not named here are passed to OpenAI-compatible backends as given."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256, description="A role (`coding`, `role:coding`), a profile id "
                       "or a model name.", examples=["coding"])  # fmt: skip
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None
    adapter: str | None = Field(default=None, min_length=1, max_length=256, description="A LoRA adapter of the "
                                "fallback's registry for this role: applied when the fallback answers, not by HTTP "
                                "backends (docs/fallback.md, LoRA adapters).")  # fmt: skip

    def route_options(self) -> dict[str, Any]:
        """The request's sampling fields as route options (the top layer of the merge), by Ollama's names."""
        options = {name: getattr(self, name) for name in _OPTION_NAMES if getattr(self, name) is not None}
        if isinstance(options.get("stop"), str):
            options["stop"] = [options["stop"]]
        limit = self.max_completion_tokens or self.max_tokens
        if limit is not None:
            options["num_predict"] = limit
        return options

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def passthrough(self) -> dict[str, Any]:
        """The fields this model does not name (tools, response_format, logprobs…), for OpenAI-compatible backends,
        and `adapter`, which the fallback's backend reads from there."""
        extra = dict(self.model_extra or {})
        if self.adapter is not None:
            extra["adapter"] = self.adapter
        return extra


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256, examples=["embedding"])
    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not taken).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# --- documentation models (answers are built as dicts on the hot path) ------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    code: str | None = Field(default=None, examples=["no_backend"])
    param: str | None = Field(default=None, description="The request field at fault, when one is.")


class OpenAIError(BaseModel):
    """Every 4xx/5xx under /v1/, as OpenAI words it."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "modelfleet"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- requests to backends -----------------------------------------------------------------------------------------


def estimate_prompt_tokens(messages: Sequence[ChatMessage], system_prompt: str = "") -> int:
    """About four characters a token plus a few per message: what the router sizes num_ctx from."""
    chars = len(system_prompt) + sum(len(text_of(m.content)) for m in messages)
    return chars // 4 + 4 * (len(messages) + 1)


def text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")


def with_system_prompt(messages: Sequence[ChatMessage], system_prompt: str) -> list[dict[str, Any]]:
    """OpenAI-shaped messages; the role's system prompt goes first unless the client sent its own."""
    out = [m.model_dump(exclude_none=True) for m in messages]
    if system_prompt and not any(m.role in ("system", "developer") for m in messages):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def ollama_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's /api/chat messages: text content only (`developer` is a system message there)."""
    out = []
    for m in messages:
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": text_of(m.get("content"))})
    return out


def openai_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The route's merged options (Ollama's names) as fields of an OpenAI-compatible request."""
    return {_OPENAI_OPTIONS[k]: v for k, v in options.items() if k in _OPENAI_OPTIONS}


# --- answers --------------------------------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_reason(done_reason: str | None) -> str:
    """Ollama's `done_reason` (`stop`, `length`, `load`…) as OpenAI's finish_reason."""
    return "length" if done_reason == "length" else "stop"


def completion(
    id_: str, created: int, model: str, content: str, finish: str, use: dict[str, int] | None
) -> dict[str, Any]:
    return {
        "id": id_, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish,
                     "logprobs": None}],
        "usage": use, "system_fingerprint": None,
    }  # fmt: skip


def chunk(id_: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }  # fmt: skip


def usage_chunk(id_: str, created: int, model: str, use: dict[str, int]) -> dict[str, Any]:
    """The last chunk when `stream_options.include_usage`: no choices, the totals."""
    return {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": use}  # fmt: skip


class UsageTally:
    """Watches a stream's chunks; makes the usage chunk when the backend sends none (llama-cpp-python's server)."""

    def __init__(self, prompt_estimate: int):
        self.prompt_estimate = prompt_estimate
        self.content_chunks = 0
        self.seen = False
        #: The backend's own usage, when one of its chunks carried it.
        self.usage: Mapping[str, Any] = {}
        self.id = ""
        self.created = 0
        self.model = ""

    def observe(self, item: Mapping[str, Any]) -> None:
        if item.get("usage"):
            self.seen = True
            self.usage = item["usage"]
        self.id, self.created, self.model = item.get("id", self.id), item.get("created", self.created), \
            item.get("model", self.model)  # fmt: skip
        for choice in item.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                self.content_chunks += 1  # one token a chunk: how llama.cpp and vLLM stream

    def counts(self) -> tuple[int, int]:
        """Prompt and completion tokens: the backend's count when it sent one, else the estimate and the chunks."""
        if self.seen:
            return int(self.usage.get("prompt_tokens") or 0), int(self.usage.get("completion_tokens") or 0)
        return self.prompt_estimate, self.content_chunks

    def final(self) -> dict[str, Any] | None:
        if self.seen:
            return None
        return usage_chunk(self.id, self.created, self.model, usage(self.prompt_estimate, self.content_chunks))


def sse(doc: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


# --- errors, models, embeddings ---------------------------------------------------------------------------------------


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "code": code, "param": param}}


def model_list(ids: Iterable[str]) -> dict[str, Any]:
    """Roles first, then models, each once, in OpenAI's list format."""
    seen: dict[str, None] = dict.fromkeys(ids)
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "modelfleet"}
                                       for i in seen]}  # fmt: skip


def embedding_list(vectors: Sequence[Sequence[float]], model: str, prompt_tokens: int, encoding: str) -> dict[str, Any]:
    def encoded(v: Sequence[float]) -> list[float] | str:
        # base64 is what the official client asks for by default: little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if encoding == "base64" else list(v)

    return {
        "object": "list", "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }  # fmt: skip
