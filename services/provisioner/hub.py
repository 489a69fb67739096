"""Hugging Face hub access through `huggingface_hub`: refs, GGUF listings, and pinned, verified, resumable downloads.

`huggingface_hub` deletes partial files and never checks sha256, so the download loop here is the project's own:
it appends to `<file>.partial`, resumes with `Range` from its size after a restart, hashes in the same pass
(continuing over the bytes already on disk), compares with the hub's LFS sha256, and quarantines a mismatch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

from services.provisioner import domain

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]


class VerificationFailed(RuntimeError):
    def __init__(self, message: str, quarantined: Path):
        super().__init__(message)
        self.quarantined = quarantined


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class Pinned:
    repo_id: str
    revision: str
    commit: str
    kind: domain.RevisionKind


@dataclass(frozen=True)
class Downloaded:
    path: Path
    sha256: str
    size: int
    commit: str
    fetched_bytes: int


class HubClient:
    """One hub endpoint (`HF_ENDPOINT`) and token (`HF_TOKEN`, never logged). Blocking: call it in a thread."""

    def __init__(self, endpoint: str, token: str | None, models_dir: Path, quarantine_dir: Path):
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.api = HfApi(endpoint=self.endpoint, token=token or False)
        self.models_dir = models_dir
        self.quarantine_dir = quarantine_dir

    def __repr__(self) -> str:
        return f"HubClient(endpoint={self.endpoint!r}, token={'set' if self._token else 'none'})"

    def pin(self, repo_id: str, revision: str, *, allow_unpinned: bool = False) -> Pinned:
        """Resolve `revision` to a commit; a branch is refused unless `allow_unpinned`."""
        refs = self.api.list_repo_refs(repo_id)
        tags = {r.name: r.target_commit for r in refs.tags}
        branches = {r.name: r.target_commit for r in refs.branches}
        kind = domain.classify_revision(revision, tags, branches)
        domain.require_pinned(revision, kind, allow_unpinned=allow_unpinned)
        commit = revision if kind == "commit" else (tags.get(revision) or branches[revision])
        if kind == "commit":
            commit = self.api.model_info(repo_id, revision=revision).sha or revision
        return Pinned(repo_id, revision, commit, kind)

    def files(self, repo_id: str, commit: str) -> dict[str, RemoteFile]:
        out: dict[str, RemoteFile] = {}
        for entry in self.api.list_repo_tree(repo_id, revision=commit, recursive=True):
            size = getattr(entry, "size", None)
            if size is None:
                continue  # a folder
            lfs = getattr(entry, "lfs", None)
            out[entry.path] = RemoteFile(entry.path, int(size), lfs.sha256 if lfs is not None else None)
        return out

    def target(self, repo_id: str, commit: str, file_name: str) -> Path:
        rel = domain.safe_relative_path(file_name)
        root = (self.models_dir / repo_id / commit).resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise domain.BadReference(f"file name {file_name!r} climbs out of the models directory")
        return path

    def download(self, repo_id: str, commit: str, file: RemoteFile, progress: Progress | None = None) -> Downloaded:
        """Fetch `file` at `commit` into the models dir, verified; resumes a `.partial` left by an earlier run."""
        dest = self.target(repo_id, commit, file.path)
        if dest.exists() and dest.stat().st_size == file.size:
            digest = _sha256_of(dest)
            if file.sha256 is None or digest == file.sha256:
                return Downloaded(dest, digest, file.size, commit, 0)
            dest.unlink()
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        hasher = hashlib.sha256()
        have = partial.stat().st_size if partial.exists() else 0
        if have > file.size:
            partial.unlink()
            have = 0
        if have:
            _hash_file(partial, hasher)
            log.info("resuming %s/%s at byte %d of %d", repo_id, file.path, have, file.size)
        url = hf_hub_url(repo_id, file.path, revision=commit, endpoint=self.endpoint)
        meta = get_hf_file_metadata(url, token=self._token or False, endpoint=self.endpoint)
        if meta.commit_hash and meta.commit_hash != commit:
            raise domain.BadReference(f"hub answered commit {meta.commit_hash} for {commit}")
        expected = file.sha256 or meta.etag
        sink = _HashingSink(partial, hasher, have, file.size, progress)
        try:
            if have < file.size:
                headers = build_hf_headers(token=self._token or False)
                http_get(
                    meta.location, cast(BinaryIO, sink), resume_size=have, headers=headers, expected_size=file.size
                )
        finally:
            sink.close()
        digest = sink.hasher.hexdigest()
        if file.sha256 is not None and digest != expected:
            quarantined = self.quarantine(partial, digest)
            raise VerificationFailed(
                f"sha256 mismatch for {repo_id}/{file.path}@{commit}: hub says {expected}, got {digest}; "
                f"quarantined at {quarantined}",
                quarantined,
            )
        os.replace(partial, dest)
        return Downloaded(dest, digest, file.size, commit, sink.fetched)

    def quarantine(self, path: Path, digest: str) -> Path:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / f"{digest[:16]}-{path.name.removesuffix('.partial')}"
        shutil.move(str(path), target)
        return target

    def fetch_checkpoint(self, pinned: Pinned, progress: Progress | None = None) -> tuple[Path, list[Downloaded]]:
        """Every file of a safetensors checkpoint at a pinned commit, each verified; returns its folder."""
        files = self.files(pinned.repo_id, pinned.commit)
        if not any(p.endswith(".safetensors") for p in files):
            raise domain.BadReference(f"{pinned.repo_id}@{pinned.revision} has no .safetensors files")
        wanted = [f for p, f in sorted(files.items()) if p.endswith((".safetensors", ".json", ".model", ".txt"))]
        total = sum(f.size for f in wanted)
        done = 0
        got: list[Downloaded] = []
        for f in wanted:
            base = done

            def step(n: int, _t: int | None, base: int = base) -> None:
                if progress is not None:
                    progress(base + n, total)

            got.append(self.download(pinned.repo_id, pinned.commit, f, step))
            done += f.size
        return self.target(pinned.repo_id, pinned.commit, "x").parent, got


class _HashingSink:
    """The file object `http_get` writes to: appends to the partial file and hashes in the same pass."""

    def __init__(self, path: Path, hasher: hashlib._Hash, have: int, total: int, progress: Progress | None):
        self._file = path.open("r+b" if have else "wb", buffering=0)
        self._file.seek(have)
        self.hasher = hasher
        self._lock = threading.Lock()
        self.position = have
        self.fetched = 0
        self.total = total
        self.progress = progress

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        n = self._file.write(data) or 0
        self.position += n
        self.fetched += n
        if self.progress is not None:
            self.progress(self.position, self.total)
        return n

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        # http_get rewinds only when a server ignored Range: start over, hash included.
        if offset != self.position:
            if offset != 0:
                raise OSError(f"cannot rewind a verified download to byte {offset}")
            self._file.seek(0)
            self.position = 0
            self.hasher = hashlib.sha256()
        return self.position

    def truncate(self, size: int | None = None) -> int:
        return self._file.truncate(self.position if size is None else size)

    def close(self) -> None:
        self._file.close()


def _hash_file(path: Path, hasher: hashlib._Hash) -> None:
    with path.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            hasher.update(chunk)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    _hash_file(path, h)
    return h.hexdigest()
