"""Inference-fallback contracts: local PyTorch slots that keep a role answering while its backends are down.

A slot is one loaded checkpoint, keyed by the source it was loaded from (a role's `fallback` entry, or the role's own
GGUF). Generation is a stream over the request/reply seam: `GenerateChunk` deltas, then a `GenerateEnd` with the
token counts and the finish reason (docs/fallback.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from contracts.envelope import Contract, Envelope, HostId
from contracts.rpc import RpcRequest, StreamRequest

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(max_length=4096)]
RepoId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: Where a slot's weights came from: an explicit path, a pinned Hugging Face checkpoint, or the role's own GGUF.
SourceKind = Literal["path", "repo", "gguf"]
#: How a slot runs: Unsloth 4-bit on CUDA, plain torch on CUDA, or torch on the CPU.
SlotPath = Literal["unsloth_cuda", "torch_cuda", "torch_cpu"]
FinishReason = Literal["stop", "length", "cancelled"]


class FallbackSpec(Contract):
    """A manifest entry's `fallback` object: exactly one of `path` (a `.gguf` file or a checkpoint directory on the
    fallback's host) or `repo` + `revision` (a checkpoint the provisioner fetches and verifies)."""

    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    repo: RepoId | None = None
    revision: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    max_seq_length: int | None = Field(default=None, ge=16, le=1_048_576)

    @model_validator(mode="after")
    def _one_source(self) -> FallbackSpec:
        if (self.path is None) == (self.repo is None):
            raise ValueError("give exactly one of path, repo")
        if self.repo is not None and self.revision is None:
            raise ValueError("repo needs a revision (a commit or a tag): a fallback is pinned")
        return self


class ChatMessage(Contract):
    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str, StringConstraints(max_length=1_000_000)]


class GenerateChunk(Contract):
    """One delta of generated text. The first chunk names the replica's host and the slot that answers."""

    text: str
    tokens: int = Field(default=0, ge=0, description="Tokens this delta decodes.")
    host_id: HostId | None = None
    slot: Name | None = None


class GenerateEnd(Contract):
    """The stream's end message: what answered and the counts an OpenAI `usage` needs."""

    host_id: HostId
    slot: Name
    model: Name = Field(description="What the slot loaded: the source, as `modelfleet backends` shows it.")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    finish_reason: FinishReason
    path: SlotPath
    adapter: Name | None = None


class GenerateRequest(StreamRequest[GenerateChunk, GenerateEnd]):
    """Generate from the slot of `role` (or of `model_ref`), with the parameters the router merged.

    `options` carries the catalog's parameter names (`temperature`, `top_p`, `top_k`, `repeat_penalty`, `seed`,
    `num_predict`, `stop`); `max_tokens`, when given, wins over `num_predict`.
    """

    SUBJECT = "rpc.fallback.generate.v1"

    role: Name | None = None
    model_ref: Name
    messages: list[ChatMessage] = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    adapter: Name | None = Field(default=None, description="A LoRA adapter of the registry, for this role's base.")


class SlotInfo(Contract):
    """One slot as its replica holds it (health replies, `GET /api/v1/backends`)."""

    key: Name = Field(description="The role (or model reference) the slot serves.")
    source: Text = Field(description="What it loads: `path /m.gguf`, `repo org/name@rev`, `gguf <blob path>`.")
    source_kind: SourceKind
    state: Literal["fetching", "loading", "ready", "failed"] = Field(
        description="`fetching`: a `fallback.repo` checkpoint the provisioner is fetching; then `loading`, `ready`."
    )
    path: SlotPath
    dtype: Name
    max_seq_length: int = Field(ge=1)
    memory_bytes: int = Field(default=0, ge=0)
    in_flight: int = Field(default=0, ge=0)
    concurrency: int = Field(ge=1)
    load_s: float | None = Field(default=None, ge=0)
    idle_s: float = Field(default=0, ge=0)
    expires_in_s: float | None = Field(default=None, ge=0, description="Idle expiry, once its role has recovered.")
    adapter: Name | None = None
    error: Text | None = None


class FallbackAdvertised(Envelope):
    """Each fallback replica, every few seconds: that it is alive, its slots, its budget, and the source each
    watched role's slot would load (the router ends every chain in a live fallback and shows the source)."""

    SUBJECT = "evt.fallback.advertised.v1"

    instance_id: Name
    device: Name
    memory_budget_bytes: int = Field(ge=0)
    memory_used_bytes: int = Field(ge=0)
    slots: list[SlotInfo] = Field(default_factory=list)
    sources: dict[str, Text] = Field(default_factory=dict, description="role -> the source its slot would load.")
    interval_s: float = Field(gt=0, description="The next advertisement is due within this.")


class SlotsReply(Contract):
    host_id: HostId
    instance_id: Name
    device: Name
    memory_budget_bytes: int = Field(ge=0)
    memory_used_bytes: int = Field(ge=0)
    slots: list[SlotInfo] = Field(default_factory=list)
    sources: dict[str, Text] = Field(default_factory=dict)


class SlotsRequest(RpcRequest[SlotsReply]):
    """Every replica answers (no queue group): its slots and each role's source."""

    SUBJECT = "rpc.fallback.slots.v1"


class SlotLoaded(Envelope):
    SUBJECT = "evt.fallback.slot.loaded.v1"

    model: Name
    device: Name
    memory_bytes: int = Field(ge=0)
    # Added with the slot manager (optional, so the major version holds):
    key: Name | None = None
    source: Text | None = None
    load_s: float | None = Field(default=None, ge=0)
    path: SlotPath | None = None


class SlotEvicted(Envelope):
    SUBJECT = "evt.fallback.slot.evicted.v1"

    model: Name
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    # Added with the slot manager (optional, so the major version holds):
    key: Name | None = None
    memory_bytes: int | None = Field(default=None, ge=0)


class AdapterManifest(Contract):
    """One LoRA adapter of the registry folder (`<name>.json`): the adapter directory and its sha256."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    base_model: Name = Field(description="The model reference (or role) whose slot the adapter applies to.")
    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    sha256: Sha256 = Field(description="Of the adapter's weights file (`adapter_model.safetensors`).")


class AdapterUpdated(Envelope):
    """An adapter manifest was added, changed or removed: every replica loads the same version."""

    SUBJECT = "evt.fallback.adapter.updated.v1"

    name: Name
    change: Literal["added", "changed", "removed"]
    manifest: AdapterManifest | None = None
