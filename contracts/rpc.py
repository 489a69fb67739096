"""The request/reply seam's wire types: requests that name their reply, one typed error, and streamed replies."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import Field, StringConstraints

from contracts.envelope import Contract

ReplyT = TypeVar("ReplyT", bound=Contract)
ChunkT = TypeVar("ChunkT", bound=Contract)
EndT = TypeVar("EndT", bound=Contract)

#: Header naming the frame: on every error reply and every stream frame but data chunks (which carry no header).
RPC_HEADER = "Mf-Rpc"
#: Header a stream request carries: how many chunks the responder may send before it waits for more credit.
WINDOW_HEADER = "Mf-Rpc-Window"


class Frame(StrEnum):
    """Values of the `Mf-Rpc` header."""

    ERROR = "error"  # a failed request/reply (the body is an ErrorReply)
    START = "start"  # responder -> caller: the stream is accepted; its reply subject is where control goes
    END = "end"  # responder -> caller: the last frame of a stream (the body is a StreamEnd)
    CREDIT = "credit"  # caller -> responder: more chunks may be sent (the body is a Credit)
    CANCEL = "cancel"  # caller -> responder: stop now


#: The stable machine code of each status, when the raiser names none.
CODE_FOR_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal",
    502: "upstream_failed",
    503: "unavailable",
    504: "timeout",
}

Code = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class ErrorBody(Contract):
    """What went wrong: an HTTP-like status, a stable machine code, and a detail naming the field at fault."""

    status: int = Field(ge=400, le=599, description="HTTP-like: 4xx the request is at fault, 5xx the service.")
    code: Code = Field(description="Stable machine code (`not_found`, `invalid_request`, …); safe to branch on.")
    detail: Annotated[str, StringConstraints(max_length=8000)] = Field(description="For people; names the field.")
    field: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        default=None, description="Dotted path of the field at fault (`profile.name`), when one is."
    )


class ErrorReply(Contract):
    """The reply of any `rpc.*` hop that fails: `{"error": {...}}`, with header `Mf-Rpc: error`."""

    error: ErrorBody


class RpcError(Exception):
    """A typed failure of a request/reply hop. Raise it (or a subclass) in a handler; `ask()` raises it back."""

    def __init__(self, status: int, detail: object, *, code: str | None = None, field: str | None = None):
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.code = code or CODE_FOR_STATUS.get(status, "internal" if status >= 500 else "bad_request")
        self.field = field

    @property
    def body(self) -> ErrorBody:
        return ErrorBody(status=self.status, code=self.code, detail=str(self.detail)[:8000], field=self.field)

    @classmethod
    def from_body(cls, body: ErrorBody) -> RpcError:
        return cls(body.status, body.detail, code=body.code, field=body.field)

    def __repr__(self) -> str:
        return f"RpcError({self.status}, {self.code!r}, {str(self.detail)!r}, field={self.field!r})"


def _generic_args(cls: type[Any], origin: type[Any]) -> tuple[Any, ...]:
    """The arguments `cls` gave `origin[...]` among its bases (pydantic records them on the parametrised base)."""
    for base in cls.__mro__:
        meta = getattr(base, "__pydantic_generic_metadata__", None)
        if meta and meta.get("origin") is origin and meta.get("args"):
            return tuple(meta["args"])
    return ()


class RpcRequest(Contract, Generic[ReplyT]):
    """A request on an `rpc.*` subject that answers one `ReplyT`: `class ResolveRequest(RpcRequest[ResolveReply])`.

    The subject, the request and its reply are declared in one place; `REPLY` is read from the type argument.
    """

    REPLY: ClassVar[type[Contract]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        args = _generic_args(cls, RpcRequest)
        if args and isinstance(args[0], type):
            cls.REPLY = args[0]


class StreamRequest(Contract, Generic[ChunkT, EndT]):
    """A request answered by a stream: `ChunkT` messages in order, then one end frame (`StreamEnd[EndT]`)."""

    CHUNK: ClassVar[type[Contract]]
    END: ClassVar[type[Contract]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        args = _generic_args(cls, StreamRequest)
        if len(args) == 2 and all(isinstance(a, type) for a in args):
            cls.CHUNK, cls.END = args


class StreamEnd(Contract):
    """The last frame of a stream: how many chunks were sent, then the totals or the error (exactly one)."""

    chunks: int = Field(ge=0, description="Chunks sent before this frame; the caller checks it received them all.")
    totals: dict[str, Any] | None = Field(default=None, description="The end message (`EndT`), when it succeeded.")
    error: ErrorBody | None = None


class Credit(Contract):
    """Client → responder on a stream's control subject: `grant` more chunks may be sent (back-pressure)."""

    grant: int = Field(ge=1)
