"""The envelope every message on the bus carries, and the base class of every contract."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts.subjects import validate_subject

ServiceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
HostId = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]


def _now() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """A frozen, validated message body. Consumers ignore fields they do not know."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)

    SUBJECT: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        subject = cls.__dict__.get("SUBJECT")
        if subject:
            validate_subject(subject)


class Envelope(Contract):
    """Facts and commands carry this envelope; `event_id` doubles as JetStream's `Nats-Msg-Id`."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=_now)
    producer: ServiceName
    host: HostId = Field(default_factory=socket.gethostname)
    correlation_id: uuid.UUID | None = Field(
        default=None, description="The request that caused this message, carried through every hop."
    )
