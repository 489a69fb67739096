"""Published architecture figures of a model (its config.json) and the ModelShape they give with a file size (pure).

The catalog's library carries them per curated model; `shape_from_architecture` builds the shape the GGUF-header
path (contracts.gguf_header.model_shape) would, so contracts.vram.estimate sizes a model without its file.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from contracts.vram import ModelShape, swa_layers


class ModelArchitecture(BaseModel):
    """A model's published architecture figures (its config.json), enough to build the ModelShape the estimator
    uses without a GGUF header: the catalog's library carries one per curated model (`[models.architecture]`).

    The weights come from a quantization's file size (`shape_from_architecture`), split over the blocks, the
    token embedding and the output layer in proportion to their parameter counts."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    architecture: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="llama.cpp's architecture name (general.architecture of its GGUF): llama, qwen3moe, gemma3, ..."
    )
    kind: Annotated[str, StringConstraints(pattern=r"^(decoder|encoder|diffusion)$")] = Field(
        default="decoder",
        description="decoder (a KV cache per token), encoder (embeddings/rerankers: no KV cache), diffusion "
        "(image models: the estimator's shape does not apply, sized from the file)",
    )
    source: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        description="where the figures come from (the model's config.json / model card URL)"
    )
    block_count: int = Field(ge=1, description="num_hidden_layers")
    embedding_length: int = Field(ge=1, description="hidden_size")
    head_count: int = Field(ge=1, description="num_attention_heads")
    head_count_kv: int | list[int] = Field(description="num_key_value_heads (per layer when it varies)")
    key_length: int = Field(ge=1, description="head_dim of the keys")
    value_length: int = Field(ge=1, description="head_dim of the values")
    vocab_size: int = Field(ge=0, description="0 only for a diffusion model")
    feed_forward_length: int = Field(default=0, ge=0, description="intermediate_size of a dense FFN")
    ffn_gated: bool = Field(default=True, description="gate + up + down matrices (SwiGLU/GeGLU); False: up + down")
    expert_count: int = Field(default=0, ge=0, description="experts per MoE layer (0: dense)")
    expert_used_count: int = Field(default=0, ge=0, description="experts active per token")
    expert_feed_forward_length: int = Field(default=0, ge=0, description="moe_intermediate_size")
    moe_every_n_layers: int = Field(default=1, ge=1, description="every n-th layer has experts, the others a dense FFN")
    sliding_window: int = Field(default=0, ge=0, description="tokens a sliding-window layer attends to (0: none)")
    sliding_window_pattern: int | list[bool] | None = Field(
        default=None, description="period of the SWA layers (every n-th is global), or per layer; None: llama.cpp's"
    )
    context_length: int = Field(default=0, ge=0, description="the context it was trained for")
    tied_embeddings: bool = Field(default=False, description="the output layer reuses the token embedding")

    @model_validator(mode="after")
    def _consistent(self) -> ModelArchitecture:
        if isinstance(self.head_count_kv, list) and len(self.head_count_kv) != self.block_count:
            raise ValueError(f"head_count_kv has {len(self.head_count_kv)} entries for {self.block_count} layers")
        if self.expert_count and not (0 < self.expert_used_count <= self.expert_count):
            raise ValueError(f"expert_used_count must be 1..expert_count ({self.expert_count})")
        if self.expert_count and not self.expert_feed_forward_length:
            raise ValueError("expert_feed_forward_length is required with expert_count")
        if not self.expert_count and not self.feed_forward_length and self.kind != "diffusion":
            raise ValueError("feed_forward_length is required for a dense model")
        if not self.vocab_size and self.kind != "diffusion":
            raise ValueError("vocab_size must be >= 1 (0 only for a diffusion model)")
        return self

    def kv_heads(self) -> list[int]:
        heads = self.head_count_kv
        return list(heads) if isinstance(heads, list) else [heads] * self.block_count

    def block_parameters(self) -> int:
        """Parameters of one block (attention + FFN or experts + router + norms); per-layer KV heads averaged."""
        e = self.embedding_length
        kv = sum(self.kv_heads()) / self.block_count
        attn = e * self.head_count * self.key_length + e * kv * (self.key_length + self.value_length)
        attn += self.head_count * self.value_length * e
        mats = 3 if self.ffn_gated else 2
        ffn: float = mats * e * self.feed_forward_length
        if self.expert_count:
            moe = mats * e * self.expert_feed_forward_length * self.expert_count + e * self.expert_count
            ffn = (moe + (self.moe_every_n_layers - 1) * ffn) / self.moe_every_n_layers
        return int(attn + ffn + 2 * e)


def shape_from_architecture(arch: ModelArchitecture, file_size_bytes: int, quant: str | None = None) -> ModelShape:
    """The ModelShape the GGUF-header path would give, from published figures and one quantization's file size.

    The file's bytes are shared out in proportion to parameters: each block, the token embedding (kept on the
    CPU) and the output layer (the embedding again when tied, as llama.cpp duplicates it onto the GPU). A diffusion
    model has no such shape (ValueError)."""
    if arch.kind == "diffusion":
        raise ValueError(f"{arch.architecture} is a diffusion model: the estimator's shape does not apply")
    if file_size_bytes <= 0:
        raise ValueError(f"file_size_bytes must be > 0, got {file_size_bytes}")
    n, e = arch.block_count, arch.embedding_length
    block = arch.block_parameters()
    embd = arch.vocab_size * e
    # an encoder has no output matrix (it returns embeddings); a tied decoder reuses the token embedding
    tied = arch.tied_embeddings and arch.kind == "decoder"
    output = e + (0 if tied or arch.kind == "encoder" else embd)
    per_param = file_size_bytes / (n * block + embd + output)
    input_bytes = int(embd * per_param)
    output_bytes = int(output * per_param)
    blocks = file_size_bytes - input_bytes - output_bytes
    layer_bytes = [blocks // n] * n
    layer_bytes[-1] += blocks - sum(layer_bytes)
    if tied:
        output_bytes += input_bytes
    return ModelShape(
        architecture=arch.architecture, block_count=n, context_length=arch.context_length, embedding_length=e,
        feed_forward_length=arch.feed_forward_length, head_count=arch.head_count, head_count_kv=arch.kv_heads(),
        key_length=arch.key_length, value_length=arch.value_length, sliding_window=arch.sliding_window,
        swa_layers=swa_layers(arch.architecture, n, arch.sliding_window, arch.sliding_window_pattern),
        expert_count=arch.expert_count, expert_used_count=arch.expert_used_count,
        expert_feed_forward_length=arch.expert_feed_forward_length, vocab_size=arch.vocab_size, file_type=quant,
        layer_bytes=layer_bytes, input_bytes=input_bytes, output_bytes=output_bytes, weights_bytes=file_size_bytes,
        file_size_bytes=file_size_bytes,
    )  # fmt: skip


def rescale_shape(shape: ModelShape, file_size_bytes: int, quant: str | None = None) -> ModelShape:
    """The same model at another quantization: every weight figure scaled by the ratio of the file sizes."""
    base = shape.file_size_bytes or shape.weights_bytes
    if base <= 0 or file_size_bytes <= 0:
        raise ValueError("rescale_shape needs both file sizes")
    r = file_size_bytes / base
    return shape.model_copy(
        update={
            "layer_bytes": [int(b * r) for b in shape.layer_bytes], "input_bytes": int(shape.input_bytes * r),
            "output_bytes": int(shape.output_bytes * r), "weights_bytes": int(shape.weights_bytes * r),
            "file_size_bytes": file_size_bytes, "file_type": quant or shape.file_type, "tensor_types": {},
        }
    )  # fmt: skip
