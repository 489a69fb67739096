"""The one parser of model references every service shares; docs/model-references.md is its table."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from contracts.provisioner import Source, pinned_ollama_name
from contracts.quantization import QuantizationError, normalize_gguf_tag

#: What the reference is: an Ollama name, a GGUF repo that Ollama serves, a Hugging Face repo, a models-dir file.
RefKind = Literal["ollama", "hf_gguf", "hf", "local"]
#: What the provisioner does to have it: Ollama pulls it, it imports a pinned GGUF, it fetches a pinned checkpoint.
Provision = Literal["ollama_pull", "gguf_import", "checkpoint"]

MAX_LENGTH = 512
_SEG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_OLLAMA_NAME = re.compile(rf"^(?:{_SEG}/)?{_SEG}$")
# a registry host is told apart from a namespace the way Docker and Ollama do it: it has a dot or a port
_REGISTRY_HOST = re.compile(
    r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::[0-9]{1,5})?|[A-Za-z0-9-]+:[0-9]{1,5}|localhost)$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_REPO = re.compile(rf"^{_SEG}/{_SEG}$")
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$")
# Ollama's own prefixes stay an Ollama pull of the GGUF; a browser URL without a quant names the repository
_GGUF_PREFIXES = ("hf.co/", "huggingface.co/")
_URL_PREFIXES = ("https://huggingface.co/", "https://hf.co/", "http://huggingface.co/", "http://hf.co/")


class ModelRefError(ValueError):
    """A model reference that cannot be parsed; the message names the part at fault."""


class ModelRef(BaseModel):
    """One parsed reference. `canonical` is the spelling every service stores and compares."""

    model_config = ConfigDict(frozen=True)

    kind: RefKind
    name: str = ""  # ollama: [host/][namespace/]model, without the tag
    tag: str | None = None  # ollama tag
    repo: str | None = None  # hf / hf_gguf: user/repo
    quant: str | None = None  # hf_gguf: quantization (table spelling, or a repo's build variant upper-cased)
    revision: str | None = None  # hf: branch, tag or commit of a checkpoint; hf_gguf: of a pinned import
    path: str | None = None  # local: file path relative to the models directory

    @property
    def canonical(self) -> str:
        if self.kind == "ollama":
            return f"{self.name}:{self.tag}" if self.tag else self.name
        if self.kind == "hf_gguf":
            base = f"hf.co/{self.repo}:{self.quant}" if self.quant else f"hf.co/{self.repo}"
            return f"{base}@{self.revision}" if self.revision else base
        if self.kind == "hf":
            return f"{self.repo}@{self.revision}" if self.revision else str(self.repo)
        return f"local:{self.path}"

    @property
    def provider(self) -> str:
        """The provider that serves this reference by default."""
        return {"ollama": "ollama", "hf_gguf": "ollama", "hf": "huggingface", "local": "local"}[self.kind]

    @property
    def pinned(self) -> bool:
        return self.revision is not None

    @property
    def ollama_name(self) -> str | None:
        """The name the model has on an Ollama host once provisioned; None where Ollama does not hold it."""
        if self.kind == "ollama":
            return with_default_tag(self.canonical)
        if self.kind != "hf_gguf":
            return None
        if self.revision is not None:
            assert self.repo and self.quant  # the parser refuses a pinned import without its quant
            return pinned_ollama_name(self.repo, self.quant, self.revision)
        return f"hf.co/{self.repo}:{self.quant or 'latest'}"

    @property
    def provision(self) -> Provision | None:
        """How the provisioner obtains it; None for an unpinned repository and a local file (nothing to fetch)."""
        if self.kind == "ollama" or (self.kind == "hf_gguf" and self.revision is None):
            return "ollama_pull"
        if self.kind == "hf_gguf":
            return "gguf_import"
        if self.kind == "hf" and self.revision is not None:
            return "checkpoint"
        return None

    @property
    def source(self) -> Source | None:
        """The inventory source of what the provisioner makes of it."""
        if self.kind == "local":
            return "local"
        if self.provision == "ollama_pull":
            return "custom_hf" if self.kind == "hf_gguf" else "curated"
        return None if self.provision is None else "pinned_hf"


def with_default_tag(name: str) -> str:
    """Ollama's rule for a name it holds: without a tag (after the last `/`) it means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _check_repo(repo: str, text: str) -> str:
    if not _REPO.match(repo) or ".." in repo or "--" in repo:
        raise ModelRefError(f"{text!r}: repository {repo!r} must be <user>/<repo> of letters, digits, '.', '_', '-'")
    return repo


def _check_revision(revision: str, text: str) -> str:
    if not _REVISION.match(revision) or ".." in revision:
        raise ModelRefError(f"{text!r}: revision {revision!r} is not a valid branch, tag or commit")
    return revision


def _check_local(path: str, text: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if not path or path.startswith("/") or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise ModelRefError(f"{text!r}: local file {path!r} must be a relative path without '..' or empty parts")
    return path


def _quant(quant: str, text: str) -> str | None:
    if quant.lower() == "latest":  # how Ollama lists `hf.co/u/r` once pulled: its default quant
        return None
    try:
        return normalize_gguf_tag(quant)
    except QuantizationError as exc:
        raise ModelRefError(f"{text!r}: {exc}") from exc


def _hugging_face(rest: str, raw: str, *, url: bool) -> ModelRef:
    """`user/repo[:quant][@revision]` after an hf.co prefix; a URL without a quant is the repository itself."""
    rest, at, revision = rest.strip("/").partition("@")
    repo, colon, quant = rest.partition(":")
    repo = _check_repo(repo, raw)
    rev = _check_revision(revision, raw) if at else None
    if url and not colon:
        return ModelRef(kind="hf", repo=repo, revision=rev)
    q = _quant(quant, raw) if colon else None
    if rev is not None and q is None:
        raise ModelRefError(
            f"{raw!r}: a pinned import names its quantization: hf.co/{repo}:<quant>@{revision} (e.g. Q4_K_M)"
        )
    return ModelRef(kind="hf_gguf", repo=repo, quant=q, revision=rev)


def _ollama(raw: str) -> ModelRef:
    head, slash, last = raw.rpartition("/")
    model, colon, tag = last.partition(":")
    name = f"{head}{slash}{model}"
    parts = name.split("/")
    if len(parts) == 3 and _REGISTRY_HOST.match(parts[0]):
        if not _OLLAMA_NAME.match("/".join(parts[1:])):
            raise ModelRefError(f"{raw!r}: model name {name!r} must be <registry host>/<namespace>/<model>")
    elif len(parts) == 2 and not colon:
        return ModelRef(kind="hf", repo=_check_repo(name, raw))
    elif len(parts) > 2:
        raise ModelRefError(
            f"{raw!r}: {name!r} has too many '/': a repository is <user>/<repo>, "
            "an Ollama name [<registry host>/][<namespace>/]<model>"
        )
    elif not _OLLAMA_NAME.match(name):
        raise ModelRefError(f"{raw!r}: model name {name!r} must be letters, digits, '.', '_', '-' (one '/' at most)")
    if colon and not _TAG.match(tag):
        raise ModelRefError(f"{raw!r}: tag {tag!r} must be letters, digits, '.', '_', '-'")
    return ModelRef(kind="ollama", name=name, tag=tag or None)


def parse_model_ref(text: str) -> ModelRef:
    """Parse one reference by the table in docs/model-references.md; the error names the part at fault."""
    raw = text.strip()
    if not raw or len(raw) > MAX_LENGTH:
        shown = text if len(text) <= 80 else f"{text[:60]}..."
        raise ModelRefError(f"model reference {shown!r} must be 1 to {MAX_LENGTH} characters")
    lower = raw.lower()
    if lower.startswith("local:"):
        return ModelRef(kind="local", path=_check_local(raw[len("local:") :], raw))
    for prefix in _URL_PREFIXES:
        if lower.startswith(prefix):
            return _hugging_face(raw[len(prefix) :], raw, url=True)
    for prefix in _GGUF_PREFIXES:
        if lower.startswith(prefix):
            return _hugging_face(raw[len(prefix) :], raw, url=False)
    if "@" in raw:
        repo, _, revision = raw.partition("@")
        _check_revision(revision, raw)
        if ":" in repo:
            raise ModelRefError(
                f"{raw!r}: revision after a tag: an Ollama name {repo!r} takes no revision "
                "(a pinned GGUF import is hf.co/<user>/<repo>:<quant>@<revision>)"
            )
        return ModelRef(kind="hf", repo=_check_repo(repo, raw), revision=revision)
    return _ollama(raw)
