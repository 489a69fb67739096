"""A protocol-faithful Hugging Face hub on loopback, for the real `huggingface_hub` client.

Speaks: `GET /api/models/{repo}/refs`, `/revision/{rev}`, `/tree/{rev}[/{path}]` (paged by `Link: rel="next"`),
`HEAD|GET /{repo}/resolve/{rev}/{path}` (`X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`, a 302 to a second
"CDN" origin for LFS files), `Range` → 206 on the CDN, and `X-Error-Code` errors. Repos are built at test time
with several commits and tags and true sha256 values; large files are generated on the fly (never stored).
Switches: `cut_after` (close the body after N bytes), `stall_after` (hold the body after N bytes until
`release()`), `corrupt` (flip one byte, same size), `error_status` (5xx on resolve/CDN), `rate_bytes_per_s`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

from tests.peers.servers import ClosingHTTPServer

_BLOCK = 1024 * 1024


@dataclass
class HubFile:
    """A file at one commit: small files hold bytes; generated ones are `seed`-derived blocks of `size` bytes."""

    path: str
    size: int
    sha256: str
    data: bytes | None = None
    seed: int = 0
    lfs: bool = False

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(f"{self.path}:{self.sha256}".encode()).hexdigest()

    def chunks(self, start: int, end: int) -> Any:
        """Yield the bytes of [start, end) in pieces of at most one block."""
        if self.data is not None:
            for at in range(start, end, _BLOCK):
                yield self.data[at : min(end, at + _BLOCK)]
            return
        block = _block(self.seed)
        at = start
        while at < end:
            offset = at % _BLOCK
            n = min(_BLOCK - offset, end - at)
            yield memoryview(block)[offset : offset + n]
            at += n


_blocks: dict[int, bytes] = {}


def _block(seed: int) -> bytes:
    if seed not in _blocks:
        out = bytearray()
        counter = 0
        while len(out) < _BLOCK:
            out += hashlib.sha512(f"{seed}:{counter}".encode()).digest()
            counter += 1
        _blocks[seed] = bytes(out[:_BLOCK])
    return _blocks[seed]


def small_file(path: str, data: bytes, *, lfs: bool | None = None) -> HubFile:
    is_lfs = path.endswith((".gguf", ".safetensors", ".bin")) if lfs is None else lfs
    return HubFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data, lfs=is_lfs)


def generated_file(path: str, size: int, seed: int = 1) -> HubFile:
    """A large LFS file whose bytes are generated when served; its sha256 is computed once, here."""
    digest = hashlib.sha256()
    for piece in HubFile(path, size, "", seed=seed).chunks(0, size):
        digest.update(piece)
    return HubFile(path=path, size=size, sha256=digest.hexdigest(), seed=seed, lfs=True)


@dataclass
class HubRepo:
    repo_id: str
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def commit(self, files: list[HubFile], *, branch: str = "main", replace: bool = False) -> str:
        """A new commit on `branch` with `files` added (or the tree replaced); returns its sha."""
        parent = self.branches.get(branch)
        tree = {} if replace or parent is None else dict(self.commits[parent])
        tree.update({f.path: f for f in files})
        sha = hashlib.sha1(f"{self.repo_id}:{parent}:{sorted(tree)}:{len(self.commits)}".encode()).hexdigest()
        self.commits[sha] = tree
        self.branches[branch] = sha
        return sha

    def tag(self, name: str, sha: str) -> None:
        self.tags[name] = sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.branches.get(revision) or self.tags.get(revision)


class HubPeer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, cdn_port: int = 0, page_size: int = 2):
        self.repos: dict[str, HubRepo] = {}
        self.page_size = page_size
        self.cut_after: int | None = None
        self.stall_after: int | None = None
        self.corrupt = False
        self.error_status: int | None = None
        self.rate_bytes_per_s: float | None = None
        self.served: Counter[str] = Counter()  # sha256 -> body bytes written
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._api = ClosingHTTPServer((host, port), _api_handler(self))
        self._cdn = ClosingHTTPServer((host, cdn_port), _cdn_handler(self))
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._api.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self) -> str:
        host, port = self._cdn.server_address[:2]
        return f"http://{host}:{port}"

    def repo(self, repo_id: str) -> HubRepo:
        return self.repos.setdefault(repo_id, HubRepo(repo_id))

    def blob(self, sha256: str) -> HubFile | None:
        for repo in self.repos.values():
            for tree in repo.commits.values():
                for f in tree.values():
                    if f.sha256 == sha256:
                        return f
        return None

    def release(self) -> None:
        """Let a stalled body go on (and stop stalling)."""
        self.stall_after = None
        self._release.set()

    def start(self) -> HubPeer:
        for server in (self._api, self._cdn):
            t = threading.Thread(target=server.serve_forever, name="hub-peer", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._release.set()
        for server in (self._api, self._cdn):
            server.stop()

    def __enter__(self) -> HubPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, doc: object = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if doc is None or self.command == "HEAD" else json.dumps(doc).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})


def _api_handler(peer: HubPeer) -> type[BaseHTTPRequestHandler]:
    class Api(_Base):
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlparse(self.path)
            peer.requests.append((self.command, url.path, self.headers.get("Range")))
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:2] == ["api", "models"] and len(parts) >= 5:
                return self._api(parts[2] + "/" + parts[3], parts[4:], parse_qs(url.query))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
            self._error(404, "EntryNotFound", f"no route for {url.path}")

        def _repo(self, repo_id: str) -> HubRepo | None:
            repo = peer.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return repo

        def _api(self, repo_id: str, rest: list[str], query: dict[str, list[str]]) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if rest == ["refs"]:

                def refs(kind: str, names: dict[str, str]) -> list[dict[str, str]]:
                    return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in names.items()]

                return self._send(200, {
                    "branches": refs("heads", repo.branches), "tags": refs("tags", repo.tags),
                    "converts": [], "pullRequests": [],
                })  # fmt: skip
            if len(rest) < 2 or rest[0] not in ("revision", "tree"):
                return self._error(404, "EntryNotFound", "unknown api route")
            sha = repo.resolve(rest[1])
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
            tree = repo.commits[sha]
            if rest[0] == "revision":
                siblings = [
                    {"rfilename": f.path, "size": f.size, "blobId": f.git_oid,
                     **({"lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134}} if f.lfs else {})}
                    for f in tree.values()
                ]  # fmt: skip
                return self._send(200, {
                    "_id": sha[:24], "id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                    "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": ["gguf"],
                    "siblings": siblings, "lastModified": "2026-01-01T00:00:00.000Z",
                })  # fmt: skip
            prefix = "/".join(rest[2:])
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            entries = _tree_entries(tree, prefix, recursive)
            cursor = int(query.get("cursor", ["0"])[0])
            page = entries[cursor : cursor + peer.page_size]
            headers = {}
            if cursor + peer.page_size < len(entries):
                nxt = f"{peer.url}{urlparse(self.path).path}?recursive={recursive}&cursor={cursor + peer.page_size}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._send(200, page, headers)

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            sha = repo.resolve(revision)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            f = repo.commits[sha].get(path)
            if f is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}")
            if peer.error_status is not None:
                return self._error(peer.error_status, "ServerError", "the hub is having a bad day")
            common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
            if f.lfs:
                common.update({
                    "Location": f"{peer.cdn_url}/blobs/{f.sha256}?filename={quote(path.rsplit('/', 1)[-1])}",
                    "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size), "ETag": f'"{f.git_oid}"',
                })  # fmt: skip
                return self._send(302, None, common)
            self.send_response(200)
            for k, v in {**common, "ETag": f'"{f.git_oid}"', "Content-Length": str(f.size)}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(f.data or b"")

    return Api


def _lfs(f: HubFile) -> dict[str, Any]:
    return {"lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134}} if f.lfs else {}


def _tree_entries(tree: dict[str, HubFile], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    base = prefix.rstrip("/") + "/" if prefix else ""
    files: list[dict[str, Any]] = []
    folders: set[str] = set()
    for path, f in sorted(tree.items()):
        if not path.startswith(base):
            continue
        rest = path[len(base) :]
        if "/" in rest:
            folders.add(base + rest.split("/", 1)[0])
            if not recursive:
                continue
        files.append({"type": "file", "oid": f.git_oid, "size": f.size, "path": path, **_lfs(f)})
    dirs = [
        {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
        for d in sorted(folders)
    ]
    return dirs + files


def _cdn_handler(peer: HubPeer) -> type[BaseHTTPRequestHandler]:
    class Cdn(_Base):
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlparse(self.path)
            peer.requests.append((self.command, url.path, self.headers.get("Range")))
            f = peer.blob(url.path.rsplit("/", 1)[-1])
            if f is None:
                return self._send(404, {"error": "NoSuchKey"})
            if peer.error_status is not None:
                return self._send(peer.error_status, {"error": "upstream unavailable"})
            start, end = 0, f.size
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                first, _, last = rng[6:].partition("-")
                start = int(first or 0)
                end = min(int(last) + 1, f.size) if last else f.size  # RFC 9110: an end past the file is clamped
                if first == "":  # a suffix range: the last N bytes
                    start, end = max(0, f.size - int(last)), f.size
                if start >= f.size:
                    return self._send(416, {"error": "range not satisfiable"}, {"Content-Range": f"bytes */{f.size}"})
            self.send_response(206 if rng else 200)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("ETag", f'"{f.sha256}"')
            self.send_header("Accept-Ranges", "bytes")
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
            self.end_headers()
            if self.command == "GET":
                self._body(f, start, end)

        def _body(self, f: HubFile, start: int, end: int) -> None:
            sent = start
            began = time.monotonic()
            # A response is cut as the switch stood when it began: a client that turns the switch off once it has
            # the bytes before the cut (as a resume test does) must not race this loop to its next chunk.
            cut_after = peer.cut_after
            try:
                for piece in f.chunks(start, end):
                    if peer.corrupt and sent <= f.size // 2 < sent + len(piece):
                        flipped = bytearray(piece)
                        flipped[f.size // 2 - sent] ^= 0xFF
                        piece = bytes(flipped)
                    if cut_after is not None and sent + len(piece) > cut_after:
                        piece = piece[: max(0, cut_after - sent)]
                        self.wfile.write(piece)
                        peer.served[f.sha256] += len(piece)
                        self.close_connection = True
                        return
                    if peer.stall_after is not None and sent + len(piece) > peer.stall_after:
                        head = piece[: max(0, peer.stall_after - sent)]
                        self.wfile.write(head)
                        peer.served[f.sha256] += len(head)
                        sent += len(head)
                        piece = piece[len(head) :]
                        peer.stalled.set()
                        peer._release.wait(120)
                    self.wfile.write(piece)
                    peer.served[f.sha256] += len(piece)
                    sent += len(piece)
                    if peer.rate_bytes_per_s:
                        ahead = (sent - start) / peer.rate_bytes_per_s - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Cdn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--repo", default="test/tiny-GGUF")
    parser.add_argument("--size-mib", type=int, default=64, help="size of the generated model.Q4_K_M.gguf")
    args = parser.parse_args()
    peer = HubPeer(port=args.port)
    repo = peer.repo(args.repo)
    sha = repo.commit([generated_file("model.Q4_K_M.gguf", args.size_mib * _BLOCK), small_file("README.md", b"hi")])
    repo.tag("v1", sha)
    peer.start()
    print(json.dumps({"url": peer.url, "repo": args.repo, "commit": sha}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        peer.stop()


if __name__ == "__main__":
    main()
