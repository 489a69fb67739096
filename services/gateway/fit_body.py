"""The body of POST /api/v1/fit: a model shape a caller read from a GGUF header, held to what a header can give."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, ValidationInfo, field_validator

from contracts.vram import EstimateSettings, ModelShape

NonNegative = Annotated[int, Field(ge=0)]


class FitShape(ModelShape):
    """A model shape as a GGUF header gives it: a named architecture, no negative count or size, `block_count` entries
    in `head_count_kv` and `layer_bytes` (and in `swa_layers`, or none)."""

    # What `contracts.gguf_header.model_shape` gives from any header, held here and not in the bus contract (a
    # breaking change there): a shape outside it answered 200 with negative bytes before.
    architecture: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    head_count_kv: list[NonNegative] = Field(
        description="KV heads of each layer (0 for a layer without attention): `block_count` entries."
    )
    swa_layers: list[bool] = Field(
        default_factory=list, description="True where a layer uses the sliding window: none, or `block_count` entries."
    )
    tensor_types: dict[str, NonNegative] = Field(
        default_factory=dict, description="ggml type name -> number of tensors"
    )
    layer_bytes: list[NonNegative] = Field(description="Weight bytes of each block: `block_count` entries.")

    @field_validator("head_count_kv", "layer_bytes", "swa_layers")
    @classmethod
    def _one_per_block(cls, value: list[int] | list[bool], info: ValidationInfo) -> list[int] | list[bool]:
        blocks = info.data.get("block_count")
        if blocks is not None and len(value) != blocks and (value or info.field_name != "swa_layers"):
            raise ValueError(f"{len(value)} entries for {blocks} blocks (block_count): one per block")
        return value


class FitBody(BaseModel):
    """POST /api/v1/fit: a model shape the caller read from a GGUF header (modelfleet fit PATH does)."""

    model: str = Field(min_length=1, max_length=1024)
    shape: FitShape
    settings: EstimateSettings = Field(default_factory=EstimateSettings)
    host: str | None = Field(default=None, min_length=1, max_length=253)
