"""What lands on `dlq.<original subject>` when a message can never be processed."""

from __future__ import annotations

from typing import Annotated

from pydantic import Base64Bytes, Field, StringConstraints

from contracts.envelope import Envelope


class DeadLetter(Envelope):
    """Published on `dlq.<original_subject>` (stream DLQ); `raw` keeps the exact bytes received."""

    original_subject: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    consumer: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=8000)]
    raw: Base64Bytes
    headers: dict[str, str] = Field(default_factory=dict)
    delivery_attempts: int = Field(default=1, ge=1)
