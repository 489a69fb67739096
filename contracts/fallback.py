"""Inference-fallback contracts: local PyTorch slots that answer while Ollama is down."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from contracts.envelope import Contract, Envelope
from contracts.rpc import RpcRequest

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ChatMessage(Contract):
    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str, StringConstraints(max_length=1_000_000)]


class GenerateReply(Contract):
    model: Name
    content: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class GenerateRequest(RpcRequest[GenerateReply]):
    SUBJECT = "rpc.fallback.generate.v1"

    model: Name
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.7, ge=0, le=2)


class SlotLoaded(Envelope):
    SUBJECT = "evt.fallback.slot.loaded.v1"

    model: Name
    device: Name
    memory_bytes: int = Field(ge=0)


class SlotEvicted(Envelope):
    SUBJECT = "evt.fallback.slot.evicted.v1"

    model: Name
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
