"""Model reference parsing every service shares: `qwen3:8b`, `hf.co/{user}/{repo}:{quant}`, `repo@rev`, `local:file`."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from contracts.quantization import QuantizationError, normalize_quant

RefKind = Literal["ollama", "hf_gguf", "hf", "local"]

_SEG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_OLLAMA_NAME = re.compile(rf"^(?:{_SEG}/)?{_SEG}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_REPO = re.compile(rf"^{_SEG}/{_SEG}$")
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$")
_HF_HOSTS = ("hf.co/", "huggingface.co/", "https://huggingface.co/", "https://hf.co/", "http://huggingface.co/")


class ModelRefError(ValueError):
    """A model reference that cannot be parsed; the message names the part at fault."""


class ModelRef(BaseModel):
    """One parsed reference. `canonical` is the spelling every service stores and compares."""

    model_config = ConfigDict(frozen=True)

    kind: RefKind
    name: str = ""  # ollama: name without tag
    tag: str | None = None  # ollama tag
    repo: str | None = None  # hf / hf_gguf: user/repo
    quant: str | None = None  # hf_gguf: quantization
    revision: str | None = None  # hf: branch, tag or commit
    path: str | None = None  # local: file path

    @property
    def canonical(self) -> str:
        if self.kind == "ollama":
            return f"{self.name}:{self.tag}" if self.tag else self.name
        if self.kind == "hf_gguf":
            return f"hf.co/{self.repo}:{self.quant}" if self.quant else f"hf.co/{self.repo}"
        if self.kind == "hf":
            return f"{self.repo}@{self.revision}" if self.revision else str(self.repo)
        return f"local:{self.path}"

    @property
    def provider(self) -> str:
        """The provider that serves this reference by default."""
        return {"ollama": "ollama", "hf_gguf": "ollama", "hf": "huggingface", "local": "local"}[self.kind]


def _check_repo(repo: str, text: str) -> str:
    if not _REPO.match(repo) or ".." in repo or "--" in repo:
        raise ModelRefError(f"{text!r}: repository {repo!r} must be <user>/<repo> of letters, digits, '.', '_', '-'")
    return repo


def _check_local(path: str, text: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if not path or path.startswith("/") or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise ModelRefError(f"{text!r}: local file {path!r} must be a relative path without '..' or empty parts")
    return path


def parse_model_ref(text: str) -> ModelRef:
    """Parse one reference; `org/model` (no tag) is a Hugging Face repo, `name[:tag]` an Ollama model."""
    raw = text.strip()
    if not raw or len(raw) > 512:
        raise ModelRefError(f"model reference {text!r} must be 1 to 512 characters")
    if raw.startswith("local:"):
        return ModelRef(kind="local", path=_check_local(raw[len("local:") :], raw))
    for host in _HF_HOSTS:
        if raw.lower().startswith(host):
            rest = raw[len(host) :].strip("/")
            repo, _, quant = rest.partition(":")
            repo = _check_repo(repo, raw)
            if host.startswith("http") and not quant:
                return ModelRef(kind="hf", repo=repo)
            try:
                return ModelRef(kind="hf_gguf", repo=repo, quant=normalize_quant(quant) if quant else None)
            except QuantizationError as exc:
                raise ModelRefError(f"{raw!r}: {exc}") from exc
    if "@" in raw:
        repo, _, revision = raw.partition("@")
        if not _REVISION.match(revision) or ".." in revision:
            raise ModelRefError(f"{raw!r}: revision {revision!r} is not a valid branch, tag or commit")
        return ModelRef(kind="hf", repo=_check_repo(repo, raw), revision=revision)
    name, sep, tag = raw.partition(":")
    if "/" in name and not sep:
        return ModelRef(kind="hf", repo=_check_repo(name, raw))
    if not _OLLAMA_NAME.match(name):
        raise ModelRefError(f"{raw!r}: model name {name!r} must be letters, digits, '.', '_', '-' (one '/' at most)")
    if sep and not _TAG.match(tag):
        raise ModelRefError(f"{raw!r}: tag {tag!r} must be letters, digits, '.', '_', '-'")
    return ModelRef(kind="ollama", name=name, tag=tag or None)
