"""Model files a probe finds in its host's model directories (`MODELFLEET_MODEL_DIRS`); the catalog's view of them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints

from contracts.envelope import Contract, Envelope, HostId
from contracts.rpc import RpcRequest
from contracts.vram import ModelShape

Path = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Text = Annotated[str, StringConstraints(max_length=1024)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: The file kinds discovery looks for: `.gguf` (header read) and `.bin` (a GGUF under another name is read too).
LocalFormat = Literal["gguf", "bin"]
#: At most this many files travel in one event (sorted by path; the rest are counted in `truncated`), so a report
#: with every file's shape stays well under NATS's 1 MiB message limit.
MAX_REPORTED_FILES = 256


class LocalModelFile(Contract):
    """One `.gguf` / `.bin` file under a model directory, as its host's probe saw it."""

    ref: Annotated[str, StringConstraints(min_length=7, max_length=512)] = Field(
        description="Its model reference: `local:<path relative to its model directory>` (docs/model-references.md)"
    )
    path: Path = Field(description="Absolute path on the host (through a symlink: the link's path)")
    model_dir: Path = Field(description="The MODELFLEET_MODEL_DIRS entry it was found under")
    format: LocalFormat
    size_bytes: int = Field(ge=0)
    mtime: datetime
    sha256: Sha256 | None = Field(default=None, description="null while the probe is still hashing the file")
    symlink_target: Path | None = Field(default=None, description="Where a symlinked file points")
    architecture: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="general.architecture of its GGUF header"
    )
    quant: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        default=None, description="The header's general.file_type as a quantization name (Q4_K_M, F16, ...)"
    )
    context_length: int | None = Field(default=None, ge=0, description="<arch>.context_length of the header")
    shape: ModelShape | None = Field(default=None, description="The header's sizing view (what `fit` needs)")
    error: Text | None = Field(
        default=None, description="Why the file could not be read, hashed or parsed (the rest is what was known)"
    )
    shadowed_by: Path | None = Field(
        default=None,
        description="An earlier model directory has a file with the same relative path: that one is `ref` (PATH-like)",
    )


class LocalModelDir(Contract):
    path: Path
    error: Text | None = Field(default=None, description="Why the directory could not be scanned (missing, ...)")
    files: int = Field(default=0, ge=0)


class LocalModelsScanned(Envelope):
    """A host's model files, all of them (a file missing from the list is gone). Published when the listing
    changes (a file added, removed, changed, or hashed) and at least every `MODELFLEET_PROBE_LOCAL_MODELS_REPORT_S`."""

    SUBJECT = "evt.hardware.local_models.scanned.v1"

    host_id: HostId
    model_dirs: list[LocalModelDir] = Field(default_factory=list)
    files: list[LocalModelFile] = Field(default_factory=list)
    hashing: int = Field(default=0, ge=0, description="Files whose sha256 is still being computed")
    truncated: int = Field(default=0, ge=0, description=f"Files left out beyond {MAX_REPORTED_FILES}")
    report_s: float | None = Field(default=None, gt=0, description="The longest gap between two reports")


class LocalModelDoc(Contract):
    """One `local:` model of one host, as the catalog lists it."""

    host_id: HostId
    file: LocalModelFile
    reported_at: AwareDatetime = Field(description="When the host's probe last reported it")


class LocalModelsReply(Contract):
    models: list[LocalModelDoc] = Field(default_factory=list)
    hosts: list[HostId] = Field(default_factory=list, description="Hosts whose reports are current")


class LocalModelsRequest(RpcRequest[LocalModelsReply]):
    """The `local:` models the catalog knows of, from probes' current reports; every filter given must hold."""

    SUBJECT = "rpc.catalog.local_models.list.v1"

    host: HostId | None = None
    ref: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        default=None, description="Only this reference (`local:<path>`)"
    )
    sha256: Sha256 | None = None
