"""What a role's slot loads, found on this host: the manifest's `fallback` (a path, or a pinned checkpoint the
provisioner fetched), else the role's own GGUF (a pinned import in the provisioner's models directory, a `local:` file
there, or a blob of this host's Ollama store). Every refusal is an `RpcError` naming the field and what to do."""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from contracts.fallback import FallbackSpec, SourceKind
from contracts.model_ref import ModelRef, ModelRefError, parse_model_ref, with_default_tag
from contracts.rpc import RpcError
from services.runtime.gguf_io import read_file_header

#: The media type of a model's weights layer in an Ollama manifest.
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_REGISTRY = "registry.ollama.ai"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_WEIGHTS = (".safetensors", ".bin")
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class SourceError(RpcError):
    """No loadable source for a slot: 404 when it is not on this host, 422 when the entry cannot name one."""


class NotFetched(SourceError):
    """A `fallback: {repo, revision}` the models directory does not hold yet (or a tag not pinned yet): the service
    asks the provisioner for it. `placeholder` is the source the slot shows while it is fetched."""

    def __init__(self, status: int, detail: str, *, field: str, spec: FallbackSpec, placeholder: Source) -> None:
        super().__init__(status, detail, code="not_fetched", field=field)
        self.spec, self.placeholder = spec, placeholder


@dataclass(frozen=True)
class Source:
    """One loadable thing: a `.gguf` file (any name: Ollama blobs have none) or a checkpoint directory."""

    kind: SourceKind
    location: Path
    gguf: bool
    description: str
    max_seq_length: int | None = None

    def parameter_count(self) -> int:
        """From the GGUF's tensor table, or the safetensors headers; 0 when unknown (`.bin` checkpoints)."""
        if self.gguf:
            return sum(t.n_elements for t in read_file_header(self.location).tensors)
        return sum(_safetensors_elements(p) for p in sorted(self.location.glob("*.safetensors")))

    def estimate_bytes(self, dtype: str) -> int:
        """What the slot will take once loaded in `dtype`: its parameters de-quantized, plus 10% for buffers and
        activations; the on-disk size when the parameter count is unknown."""
        params = self.parameter_count()
        if params:
            return int(params * _DTYPE_BYTES.get(dtype, 4) * 1.1)
        files = [self.location] if self.gguf else [p for p in self.location.iterdir() if p.suffix in _WEIGHTS]
        return int(sum(p.stat().st_size for p in files) * 1.1)


@dataclass(frozen=True)
class SourceFinder:
    """Finds a role's source on this host. `models_dir` is the provisioner's (`<repo>/<commit>/<file>`),
    `ollama_models` the host's Ollama store (`$OLLAMA_MODELS`, default ~/.ollama/models)."""

    models_dir: Path
    ollama_models: Path
    #: `repo@tag` -> the commit the provisioner pinned it to (learnt from its fetches; asked again after a restart)
    pins: dict[str, str] = field(default_factory=dict)

    def find(self, model_ref: str, provider: str = "ollama", fallback: FallbackSpec | None = None) -> Source:
        """The source of a role's slot: its `fallback` when the manifest gives one, else its own GGUF."""
        if fallback is not None:
            return self._path(fallback) if fallback.path is not None else self._repo(fallback)
        return self._own(model_ref, provider)

    # --- the manifest's fallback -----------------------------------------------------------------------------------

    def _path(self, spec: FallbackSpec) -> Source:
        assert spec.path is not None
        path = Path(spec.path).expanduser()
        if not path.is_absolute():
            raise SourceError(422, f"fallback.path: {spec.path!r} must be an absolute path", field="fallback.path")
        if path.is_file():
            _readable(path, "fallback.path")
            return Source("path", path, True, f"path {path}", spec.max_seq_length)
        if path.is_dir():
            _checkpoint_dir(path, "fallback.path")
            return Source("path", path, False, f"path {path}", spec.max_seq_length)
        raise SourceError(404, f"fallback.path: {path} does not exist on this host", field="fallback.path")

    def _repo(self, spec: FallbackSpec) -> Source:
        """`<models dir>/<repo>/<commit>/`; a tag reads the commit the provisioner pinned it to (`pins`). Not there
        yet: `NotFetched`, which the service answers by asking the provisioner (fetch.py)."""
        assert spec.repo is not None and spec.revision is not None
        commit = spec.revision if _COMMIT.match(spec.revision) else self.pins.get(f"{spec.repo}@{spec.revision}")
        description = f"repo {spec.repo}@{spec.revision}"
        folder = self.models_dir / spec.repo / (commit or spec.revision)
        if commit is not None and folder.is_dir():
            _checkpoint_dir(folder, "fallback.repo")
            return Source("repo", folder, False, description, spec.max_seq_length)
        where = f"{folder} is missing" if commit is not None else "a tag is pinned to its commit by the provisioner"
        raise NotFetched(
            404,
            f"fallback.repo: {spec.repo}@{spec.revision} is not fetched on this host ({where}): the provisioner "
            f"fetches it (`modelfleet provision --models {spec.repo}@{spec.revision}`)",
            field="fallback.repo",
            spec=spec,
            placeholder=Source("repo", folder, False, description, spec.max_seq_length),
        )

    # --- the role's own GGUF ---------------------------------------------------------------------------------------

    def _own(self, model_ref: str, provider: str) -> Source:
        if provider == "openai" and Path(model_ref).is_absolute():  # llama.cpp servers list their GGUF's path
            path = Path(model_ref)
            if path.is_file() and path.suffix == ".gguf":
                _readable(path, "model_ref")
                return Source("gguf", path, True, f"gguf {path} (openai id)")
        try:
            ref = parse_model_ref(model_ref)
        except ModelRefError as exc:
            raise SourceError(
                404, f"model_ref: {model_ref!r} has no GGUF this host can read ({exc}); give the role a `fallback`",
                field="model_ref",
            ) from None  # fmt: skip
        tried: list[str] = []
        for candidate in self._candidates(ref, tried):
            if candidate.is_file():
                _readable(candidate, "model_ref")
                return Source("gguf", candidate, True, f"gguf {candidate} ({_origin(ref)})")
        raise SourceError(
            404,
            f"model_ref: no GGUF of {ref.canonical!r} on this host (looked in: {'; '.join(tried) or 'nowhere'}); "
            "give the role a `fallback` in the manifest",
            field="model_ref",
        )

    def _candidates(self, ref: ModelRef, tried: list[str]) -> list[Path]:
        found: list[Path] = []
        if ref.kind == "local" and ref.path:
            tried.append(str(self.models_dir / ref.path))
            found.append(self.models_dir / ref.path)
        if ref.kind == "hf_gguf" and ref.repo and ref.quant and ref.revision:
            tried.append(f"{self.models_dir / ref.repo}/*/*{ref.quant}*.gguf")
            found.extend(self._pinned(ref.repo, ref.quant, ref.revision))
        if ref.ollama_name is not None:
            manifest = self._ollama_manifest(ref.ollama_name)
            tried.append(str(manifest))
            blob = _ollama_blob(manifest, self.ollama_models)
            if blob is not None:
                found.append(blob)
        return found

    def _pinned(self, repo: str, quant: str, revision: str) -> list[Path]:
        """The provisioner's `<models dir>/<repo>/<commit>/<file with the quant>.gguf`; a tag revision matches the
        only commit folder holding that quant (two or more: ambiguous, none taken)."""
        root = self.models_dir / repo
        folders = [root / revision] if _COMMIT.match(revision) else sorted(p for p in root.glob("*") if p.is_dir())
        want = quant.upper().replace("-", "_")
        matches = [
            f
            for folder in folders
            for f in sorted(folder.glob("*.gguf"))
            if want in f.name.upper().replace("-", "_") and not re.search(r"-\d{5}-of-\d{5}", f.name)
        ]
        return matches if len(matches) == 1 else []

    def _ollama_manifest(self, ollama_name: str) -> Path:
        name, _, tag = with_default_tag(ollama_name).rpartition(":")
        parts = name.split("/")
        if len(parts) == 1:
            parts = [OLLAMA_REGISTRY, "library", *parts]
        elif "." not in parts[0] and ":" not in parts[0] and parts[0] != "localhost":
            parts = [OLLAMA_REGISTRY, *parts]
        return self.ollama_models.joinpath("manifests", *parts, tag)


def _origin(ref: ModelRef) -> str:
    if ref.kind == "local":
        return ref.canonical
    if ref.kind == "hf_gguf" and ref.revision:
        return f"pinned {ref.canonical}"
    return f"ollama {ref.ollama_name or ref.canonical}"


def _ollama_blob(manifest: Path, store: Path) -> Path | None:
    """The weights blob an Ollama manifest names (`blobs/sha256-<hex>`), or None when there is no such manifest."""
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    for layer in layers if isinstance(layers, list) else []:
        digest = layer.get("digest", "") if isinstance(layer, dict) else ""
        if layer.get("mediaType") == OLLAMA_MODEL_LAYER and re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            return store / "blobs" / digest.replace(":", "-")
    return None


def _readable(path: Path, field: str) -> None:
    if not os.access(path, os.R_OK):
        raise SourceError(403, f"{field}: {path} is not readable by this process (uid {os.getuid()})", field=field)


def _checkpoint_dir(path: Path, field: str) -> None:
    _readable(path, field)
    if not (path / "config.json").is_file():
        raise SourceError(422, f"{field}: {path} is not a checkpoint: it has no config.json", field=field)
    if not any(p.suffix in _WEIGHTS for p in path.iterdir()):
        raise SourceError(422, f"{field}: {path} has no weights (*.safetensors or *.bin)", field=field)


def _safetensors_elements(path: Path) -> int:
    """Elements of every tensor a safetensors file declares (its JSON header), without reading the data."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in info.get("shape", []):
            n *= int(dim)
        total += n
    return total
