"""Hugging Face hub access through `huggingface_hub`: refs, GGUF listings, and pinned, verified, resumable downloads.

`huggingface_hub` resolves the file (revision, commit, LFS sha256, CDN location) and gives the HTTP session, but it
deletes partial files and never checks sha256, so the body loop is the project's own: it appends to `<file>.partial`,
resumes with `Range` from its size after a restart, hashes in the same pass (continuing over the bytes already on
disk), compares with the hub's LFS sha256, and quarantines a mismatch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore2._sync.http11 as _http11
import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status  # type: ignore[attr-defined]
from huggingface_hub.utils._http import hf_request_event_hook, set_client_factory

from services.provisioner import domain
from services.provisioner.metrics import DOWNLOADED, VERIFICATION_FAILURES
from services.runtime.egress import EgressPolicy, SyncEgressTransport

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]


class Cancelled(Exception):
    """Raised from a progress callback to stop a download; the partial file stays for a later resume."""


class HubUnreachable(ConnectionError):
    """The hub endpoint took no connection within the connect bound (503) or did not answer in time (504); the
    message names the endpoint."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


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


class _BoundedClient(httpx2.Client):
    """huggingface_hub passes `timeout=None` on some calls (its pagination: the file listing), which would lift every
    bound for that request: None means the client's own timeout here."""

    def build_request(self, method: str, url: httpx2.URL | str, **kwargs: Any) -> httpx2.Request:
        if "timeout" in kwargs and kwargs["timeout"] is None:
            kwargs["timeout"] = self.timeout
        return super().build_request(method, url, **kwargs)


class HubClient:
    """One hub endpoint (`HF_ENDPOINT`) and token (`HF_TOKEN`, never logged). Blocking: call it in a thread."""

    def __init__(
        self,
        endpoint: str,
        token: str | None,
        models_dir: Path,
        quarantine_dir: Path,
        egress: EgressPolicy | None = None,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
    ):
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        # huggingface_hub's own client has no timeout at all (an unreachable hub held a listing for the OS's TCP
        # timeout, minutes): every hub API call connects within `connect_timeout_s` and hears within `read_timeout_s`.
        timeout = httpx2.Timeout(read_timeout_s, connect=connect_timeout_s)
        set_client_factory(
            lambda: _BoundedClient(
                event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True, timeout=timeout
            )
        )
        # httpcore2 reads the socket 64 KiB at a time; 256 KiB cuts the per-read Python work and GIL hand-offs that
        # slow the receive/hash/write pipeline (measured: ~470 -> ~650 MiB/s on 2 cores). Only the read size changes.
        _http11.HTTP11Connection.READ_NUM_BYTES = max(_http11.HTTP11Connection.READ_NUM_BYTES, 256 * 1024)
        self.api = HfApi(endpoint=self.endpoint, token=token or False)
        self.models_dir = models_dir
        self.quarantine_dir = quarantine_dir
        # The body comes from wherever the hub's answer points (its CDN): that origin, and every redirect from it,
        # goes through the egress policy (resolved, checked, pinned); the hub's own API is the configured endpoint.
        self._bodies = httpx2.Client(follow_redirects=True, timeout=None, transport=SyncEgressTransport(egress))

    def __repr__(self) -> str:
        return f"HubClient(endpoint={self.endpoint!r}, token={'set' if self._token else 'none'})"

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """A hub API call: no connection, or no answer in time, is `HubUnreachable` naming the endpoint."""
        try:
            yield
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
            message = f"the Hugging Face hub at {self.endpoint} is unreachable: no connection within "
            raise HubUnreachable(message + f"{self.connect_timeout_s:g}s ({type(exc).__name__})", 503) from exc
        except httpx2.TimeoutException as exc:
            message = f"the Hugging Face hub at {self.endpoint} did not answer within {self.read_timeout_s:g}s"
            raise HubUnreachable(message + f" ({type(exc).__name__})", 504) from exc

    def pin(self, repo_id: str, revision: str, *, allow_unpinned: bool = False) -> Pinned:
        """Resolve `revision` to a commit; a branch is refused unless `allow_unpinned`."""
        with self._reaching():
            return self._pin(repo_id, revision, allow_unpinned=allow_unpinned)

    def _pin(self, repo_id: str, revision: str, *, allow_unpinned: bool) -> Pinned:
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
        with self._reaching():
            return self._files(repo_id, commit)

    def _files(self, repo_id: str, commit: str) -> dict[str, RemoteFile]:
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
        pipeline = _Pipeline(partial, have, hasher)
        fetched = 0
        try:
            if have < file.size:
                fetched = self._stream(meta.location, pipeline, have, file.size, progress)
        finally:
            # a failed transfer's bytes came over the network too
            DOWNLOADED.add(pipeline.received, {"modelfleet.transfer.source": "hub"})
            pipeline.close()
        digest = pipeline.hasher.hexdigest()
        if file.sha256 is not None and digest != expected:
            VERIFICATION_FAILURES.add(1, {"modelfleet.verification.stage": "download"})
            quarantined = self.quarantine(partial, digest)
            raise VerificationFailed(
                f"sha256 mismatch for {repo_id}/{file.path}@{commit}: hub says {expected}, got {digest}; "
                f"quarantined at {quarantined}",
                quarantined,
            )
        os.replace(partial, dest)
        return Downloaded(dest, digest, file.size, commit, fetched)

    def _stream(self, url: str, pipeline: _Pipeline, have: int, size: int, progress: Progress | None) -> int:
        """GET `url` from byte `have` (Range), feeding the pipeline; transient faults resume where the bytes stopped."""
        headers = build_hf_headers(token=self._token or False)
        headers["Accept-Encoding"] = "identity"
        session = self._bodies
        position, fetched, retries = have, 0, 0
        while position < size:
            ask = dict(headers, Range=f"bytes={position}-") if position else headers
            try:
                with session.stream("GET", url, headers=ask, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                    if response.status_code >= 400:
                        response.read()
                    hf_raise_for_status(response)
                    if position and response.status_code == 200:
                        pipeline.restart()
                        position = 0
                    for piece in response.iter_raw():
                        pipeline.feed(piece)
                        position += len(piece)
                        fetched += len(piece)
                        retries = 0
                        if progress is not None:
                            progress(position, size)
                if position < size:
                    raise httpx2.RemoteProtocolError(f"body ended at byte {position} of {size}")
            except (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError, httpx2.ReadError) as exc:
                retries += 1
                if retries > 5:
                    raise OSError(f"download of {url.split('?')[0]} failed at byte {position}: {exc}") from exc
                log.warning("download interrupted at byte %d (%s); resuming", position, exc)
                time.sleep(min(0.2 * 2**retries, 5.0))
        if position > size:
            raise OSError(f"the hub sent {position} bytes for a file of {size}")
        return fetched

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
        # `.jinja`: transformers 5 writes the chat template beside tokenizer_config.json, not in it
        suffixes = (".safetensors", ".json", ".model", ".txt", ".jinja")
        wanted = [f for p, f in sorted(files.items()) if p.endswith(suffixes)]
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


class _Pipeline:
    """Writes and hashes what the receiving thread hands over, each in its own thread (hashlib and os.writev release
    the GIL), so receiving, hashing and writing overlap. The file only ever holds a contiguous prefix of the body."""

    GROUP = 1024 * 1024  # small groups stay in cache and spare the allocator: measurably faster than 4 MiB

    def __init__(self, path: Path, have: int, hasher: hashlib._Hash):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, have)
        os.lseek(self.fd, have, os.SEEK_SET)
        self.hasher = hasher
        self.error: BaseException | None = None
        self.received = 0  # bytes fed, over restarts too: what came over the network
        self._pending: list[bytes] = []
        self._size = 0
        self._queues: list[queue.Queue[list[bytes] | None]] = [queue.Queue(maxsize=4), queue.Queue(maxsize=4)]
        self._threads: list[threading.Thread] = []
        self._start_threads()

    def _hash(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.hasher.update(piece)

    def _write(self, pieces: list[bytes]) -> None:
        os.writev(self.fd, pieces)

    def _drain(self, q: queue.Queue[list[bytes] | None], work: Callable[[list[bytes]], None]) -> None:
        while (pieces := q.get()) is not None:
            if self.error is None:
                try:
                    work(pieces)
                except BaseException as exc:
                    self.error = exc

    def feed(self, piece: bytes) -> None:
        self.received += len(piece)
        self._pending.append(piece)
        self._size += len(piece)
        if self._size >= self.GROUP:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            for q in self._queues:
                q.put(self._pending)
            self._pending, self._size = [], 0
        if self.error is not None:
            raise self.error

    def restart(self) -> None:
        """The server ignored Range and sent the whole body: start the file and the hash over."""
        self.close(keep_open=True)
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.hasher = hashlib.sha256()
        self._start_threads()

    def _start_threads(self) -> None:
        self._threads = [
            threading.Thread(target=self._drain, args=(self._queues[0], self._hash), daemon=True),
            threading.Thread(target=self._drain, args=(self._queues[1], self._write), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def close(self, keep_open: bool = False) -> None:
        try:
            self.flush()
        finally:
            for q in self._queues:
                q.put(None)
            for t in self._threads:
                t.join()
            if not keep_open:
                os.close(self.fd)
        if self.error is not None:
            raise self.error


def _hash_file(path: Path, hasher: hashlib._Hash) -> None:
    with path.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            hasher.update(chunk)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    _hash_file(path, h)
    return h.hexdigest()
