"""The chat body's `adapter` field, from the OpenAI request to the fallback's `GenerateRequest` (the translation
only; tests/integration/test_fallback_service.py runs adapters for real)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway import openai_wire as wire
from services.gateway.backends import ChatCall, FallbackBackend

pytestmark = pytest.mark.unit


def _request(body: dict[str, object]) -> tuple[wire.ChatCompletionRequest, ChatCall]:
    chat = wire.ChatCompletionRequest.model_validate(body)
    call = ChatCall(client_model=chat.model, messages=[m.model_dump(exclude_none=True) for m in chat.messages],
                    options={"temperature": 0}, passthrough=chat.passthrough())  # fmt: skip
    return chat, call


def test_the_adapter_named_in_the_chat_body_reaches_the_fallback() -> None:
    messages = [{"role": "user", "content": "hi"}]
    chat, call = _request({"model": "coding", "messages": messages, "adapter": "support", "logprobs": True})
    assert chat.adapter == "support" and call.passthrough == {"logprobs": True, "adapter": "support"}
    req = FallbackBackend(rpc=None, timeout_s=1)._request("coding", call)  # type: ignore[arg-type]
    assert (req.role, req.adapter, req.options) == ("coding", "support", {"temperature": 0})

    _, plain = _request({"model": "coding", "messages": messages})
    assert FallbackBackend(rpc=None, timeout_s=1)._request("coding", plain).adapter is None  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="adapter"):
        wire.ChatCompletionRequest.model_validate({"model": "coding", "messages": messages, "adapter": ""})
