"""Provisioner decisions, free of IO: what a reference needs, revision pinning, safe paths, progress, fit, plans."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from contracts import vram
from contracts.architecture import ModelArchitecture, shape_from_architecture
from contracts.model_ref import ModelRef, ModelRefError, Provision, with_default_tag
from contracts.provisioner import ProvisionCommand

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
QUANT = re.compile(r"(?i)(?:^|[-_.])((?:IQ|Q)[0-9](?:_[A-Z0-9]+)*|F16|BF16|F32)(?=\.gguf$|[-_.])")


class BadReference(ModelRefError):
    """A model reference, revision or file path that cannot be provisioned as written. A kind of ModelRefError, so
    one `except ModelRefError` catches a reference the parser refuses and one the provisioner cannot fetch."""


def describe(cmd: ProvisionCommand) -> str:
    """A one-line, human summary of what was asked, for progress events and the audit trail."""
    roles = ", ".join(cmd.roles) or "all roles of the active profile set"
    hosts = ", ".join(cmd.hosts) or "every host with a reachable Ollama"
    models = f"; models {', '.join(cmd.models)}" if cmd.models else ""
    return f"roles {roles}{models} on {hosts}{' (forced)' if cmd.force else ''}"


def provision_of(ref: ModelRef) -> Provision:
    """How `ref` is provisioned; a reference with nothing to fetch as written is refused, naming the fix."""
    if ref.provision is not None:
        return ref.provision
    if ref.kind == "local":
        raise BadReference(f"model {ref.canonical!r}: a local file is read from the models directory, not provisioned")
    raise BadReference(
        f"model {ref.canonical!r}: a Hugging Face repository at its default branch is not pullable as written; "
        f"pin it ({ref.repo}@<commit>) or, for an Ollama namespaced model, give its tag ({ref.repo}:latest)"
    )


def local_ollama_name(relative_path: str, sha256: str) -> str:
    """The name a `local:` file gets in a host's Ollama: `local/<file stem>:<first 12 hex of its sha256>`, the stem
    lower-cased with anything but letters, digits, '.', '_', '-' made '-'. The tag keeps two different files of the
    same name apart, and one file registered twice under one name."""
    stem = PurePosixPath(relative_path.replace("\\", "/")).name
    stem = stem[: -len(PurePosixPath(stem).suffix)] if PurePosixPath(stem).suffix else stem
    clean = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:80] or "model"
    return f"local/{clean}:{sha256[:12]}"


def normalize_ollama(name: str) -> str:
    """The name Ollama holds `name` under (no tag means `:latest`), for names read from a host or typed by hand."""
    return with_default_tag(name)


def quantization_of(file_name: str) -> str | None:
    match = QUANT.search(PurePosixPath(file_name).name)
    return match.group(1).upper() if match else None


RevisionKind = Literal["commit", "tag", "branch"]


def classify_revision(revision: str, tags: dict[str, str], branches: dict[str, str]) -> RevisionKind:
    """A 40-hex commit sha, a tag, or a branch; anything else is not a revision of this repo."""
    if COMMIT_SHA.match(revision):
        return "commit"
    if revision in tags:
        return "tag"
    if revision in branches:
        return "branch"
    raise BadReference(f"revision {revision!r}: no such commit, tag or branch")


def require_pinned(revision: str, kind: RevisionKind, *, allow_unpinned: bool) -> None:
    """A branch moves under you; only an explicit opt-in (or the automated update check) may use one."""
    if kind == "branch" and not allow_unpinned:
        raise BadReference(
            f"revision {revision!r} is a branch and can change; pin a commit sha or a tag, or pass --allow-unpinned"
        )


def safe_relative_path(file_name: str) -> PurePosixPath:
    """A repo file path that stays inside the folder it is written to; `../../x.gguf` and `/etc/x` are refused."""
    if not file_name or "\\" in file_name or "\x00" in file_name:
        raise BadReference(f"file name {file_name!r}: empty, or has a backslash or NUL")
    path = PurePosixPath(file_name)
    if path.is_absolute() or any(part in ("..", ".", "") for part in file_name.split("/")):
        raise BadReference(f"file name {file_name!r} climbs out of the models directory")
    return path


def select_quant_file(files: dict[str, int], quant: str) -> str:
    """The single GGUF file of `quant` among `files` (name -> size); split or missing files are refused."""
    wanted = quant.upper()
    matches = [n for n in files if n.lower().endswith(".gguf") and quantization_of(n) == wanted]
    if not matches:
        known = sorted({q for n in files if (q := quantization_of(n))})
        raise BadReference(f"quant {quant!r}: no such GGUF file in the repo (has: {', '.join(known) or 'none'})")
    if len(matches) > 1:
        raise BadReference(
            f"quant {quant!r}: several files match ({', '.join(sorted(matches))}); split GGUFs are not supported"
        )
    return matches[0]


# --- progress -----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    done: int
    total: int | None
    rate_bytes_per_s: float | None
    eta_s: float | None


@dataclass
class TransferMeter:
    """Bytes done of a transfer; `snapshot(now)` gives rate (over the last interval) and ETA."""

    started: float
    total: int | None = None
    done: int = 0
    _last_t: float | None = None
    _last_done: int = 0
    _rate: float | None = None

    def snapshot(self, now: float) -> Snapshot:
        since, before = (self._last_t, self._last_done) if self._last_t is not None else (self.started, 0)
        if now > since:
            instant = (self.done - before) / (now - since)
            self._rate = instant if self._rate is None else 0.5 * self._rate + 0.5 * instant
        self._last_t, self._last_done = now, self.done
        eta = None
        if self.total is not None and self._rate:
            eta = max(0.0, (self.total - self.done) / self._rate)
        return Snapshot(self.done, self.total, self._rate, eta)


@dataclass
class LayerMeter:
    """Ollama reports per-layer `completed`/`total`; a download's bytes are their sums."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)

    def update(self, digest: str, completed: int | None, total: int | None) -> tuple[int, int]:
        if total:
            self.layers[digest] = (completed or 0, total)
        done = sum(c for c, _ in self.layers.values())
        return done, sum(t for _, t in self.layers.values())


class ProgressGate:
    """At most one progress event per `interval_s` per download."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.last: float | None = None

    def wait_s(self, now: float) -> float:
        return 0.0 if self.last is None else max(0.0, self.last + self.interval_s - now)

    def mark(self, now: float) -> None:
        self.last = now


# --- VRAM fit -----------------------------------------------------------------------------------

MIB = 1024 * 1024


def estimate_vram_bytes(file_size: int, context_tokens: int) -> int:
    """The fleet's simple estimate (contracts.vram): file × 1.2 + context/1000 MiB + 500 MiB of overhead."""
    return vram.simple_estimate(file_size, context_tokens).total_bytes


#: How a quantization's need was estimated: from the library's architecture figures and the file's size (`shape`,
#: the estimate `modelfleet fit` makes), or from the file size alone (`file-size`, the simple form).
Sizing = Literal["shape", "file-size"]


def estimate_need(
    file_size: int, context_tokens: int, architecture: ModelArchitecture | None = None, quant: str | None = None
) -> tuple[int, Sizing]:
    """The bytes a GGUF of `file_size` needs at `context_tokens`, and how that was found: with the catalog's
    architecture figures (not a diffusion model's) the full estimate (weights + KV cache + compute + overhead),
    the one `fit` gives; else the simple file-size form."""
    if architecture is not None and architecture.kind != "diffusion" and file_size > 0:
        shape = shape_from_architecture(architecture, file_size, quant)
        settings = vram.EstimateSettings(num_ctx=max(1, context_tokens))
        return vram.estimate(shape, settings).total_bytes, "shape"
    return estimate_vram_bytes(file_size, context_tokens), "file-size"


class FitClass:
    """Names how well `need` bytes fit a host with `free` bytes of GPU memory (the fleet's rule, plus no_gpu)."""

    def classify(self, need: int, free: int) -> str:
        if free <= 0:
            return "no_gpu"
        return vram.fit_class(need, free).value


# --- decisions ----------------------------------------------------------------------------------


def skip_reason(*, auto_download: bool, skip_downloads: bool, provider: str) -> str | None:
    """Why a missing model is not downloaded, or None when it should be."""
    if provider not in ("ollama", "hf", "huggingface", "pytorch", "transformers", "local"):
        return f"provider {provider!r} is not provisioned by modelfleet"
    if skip_downloads:
        return "SKIP_MODEL_DOWNLOADS is set"
    if not auto_download:
        return "auto_download is false for this role"
    return None


def update_due(last_check: float | None, now: float, interval_s: float) -> bool:
    return last_check is None or now - last_check >= interval_s


# --- Ollama registry ----------------------------------------------------------------------------

OLLAMA_REGISTRY_HOST = "registry.ollama.ai"
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?$")


@dataclass(frozen=True)
class RegistryRef:
    """Where a registry keeps one Ollama model's manifest: `{registry}/v2/{namespace}/{model}/manifests/{tag}`."""

    registry: str
    namespace: str
    model: str
    tag: str

    @property
    def manifest_url(self) -> str:
        return f"{self.registry.rstrip('/')}/v2/{self.namespace}/{self.model}/manifests/{self.tag}"


class NotInRegistry(ValueError):
    """An installed model that no Ollama registry serves (a Hugging Face pass-through, a local creation...)."""


def registry_ref(ollama_name: str, default_registry: str) -> RegistryRef:
    """Ollama's name rule, `[host/][namespace/]model[:tag]`: bare names live in `library`, no tag means `latest`,
    and a name without a host is served by `default_registry` (registry.ollama.ai unless configured)."""
    name, _, tag = ollama_name.rpartition(":") if ":" in ollama_name.rsplit("/", 1)[-1] else (ollama_name, "", "")
    parts = name.split("/")
    host_ok = len(parts) < 3 or _HOST.match(parts[0])
    path = parts[1:] if len(parts) == 3 else parts
    if (
        len(parts) > 3
        or not host_ok
        or not all(_NAME_PART.match(p) for p in path)
        or (tag and not _NAME_PART.match(tag))
    ):
        raise NotInRegistry(f"{ollama_name!r} is not an Ollama registry name ([host/][namespace/]model[:tag])")
    host = parts[0] if len(parts) == 3 else None
    if host is not None and host.lower() in ("hf.co", "huggingface.co"):
        raise NotInRegistry(f"{ollama_name!r} is a Hugging Face pass-through (hf.co), not an Ollama-registry model")
    namespace = parts[-2] if len(parts) >= 2 else "library"
    registry = default_registry if host is None or host == OLLAMA_REGISTRY_HOST else f"https://{host}"
    return RegistryRef(registry, namespace, parts[-1], tag or "latest")


def as_digest(value: str) -> str:
    """`sha256:<hex>`, from Ollama's bare hex digest or a registry's prefixed one."""
    hexdigest = value.removeprefix("sha256:").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ValueError(f"digest {value!r} is not a sha256")
    return f"sha256:{hexdigest}"


def update_pending(installed_digest: str | None, remote_digest: str | None) -> bool:
    """A registry digest differs from the installed one (both known and both sha256)."""
    if not installed_digest or not remote_digest:
        return False
    try:
        return as_digest(installed_digest) != as_digest(remote_digest)
    except ValueError:
        return False  # a digest that is not a sha256 proves nothing either way
