"""A protocol-faithful Ollama server on loopback: stateful pulls, blobs, create, tags, show, ps, delete, chat, embed;
and the registry's manifest endpoint (`GET /v2/{namespace}/{model}/manifests/{tag}`), so the same peer is the
"upstream" an update check asks.

The real `ollama` client is driven against it. Switches: `pull_step_s` (slow pulls), `fail_pull_after`
(a mid-stream `{"error": ...}` line after that fraction of a layer, HTTP 200), `pull_http_error`
(the HTTP-status error channel), `publish_update(name)` (upstream publishes a new manifest for a model),
`registry_digest_header` (send `Docker-Content-Digest`, or leave the client to hash the body), `registry_error`,
`registry_delay_s`, `pull_gate` (a pull holds before it finishes until the gate is set); for inference:
`chat_word_delay_s` (a slow token stream), `chat_error` (an HTTP error on /api/chat and /api/embed), `chat_gate`
(a streamed chat sends its first word, then holds until the gate is set: a backend busy mid-answer).
/api/chat and /api/embed record each request body (`chat_requests`, `embed_requests`, so a test reads the `options`
sent), count the streams in progress (`chat_streaming`) and the streams the client cut (`chat_aborted`): a write
that fails, or, while held, the client's side of the connection closing (as Ollama's Go server cancels a request's
context when its connection closes).
A pulled model's `/api/tags` digest is the sha256 of the manifest the registry serves for it, as in Ollama.
Run standalone with `python -m tests.peers.ollama_server --port N`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.peers.servers import ClosingHTTPServer


def normalize(name: str) -> str:
    """Ollama's own rule: a name without a tag means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass
class LibraryModel:
    """A model the peer's 'registry' can serve to /api/pull."""

    name: str
    layers: list[tuple[str, int]]
    family: str = "llama"
    parameter_size: str = "1B"
    quantization: str = "Q4_K_M"
    context_length: int = 4096
    revision: int = 0

    def manifest(self) -> bytes:
        """The registry's manifest: a Docker v2 manifest whose layers are the model's blobs."""
        config = json.dumps({"model_format": "gguf", "model_family": self.family, "file_type": self.quantization})
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": "sha256:" + hashlib.sha256(config.encode()).hexdigest(), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPES[min(i, 1)], "digest": d, "size": n}
                       for i, (d, n) in enumerate(self.layers)],
        }  # fmt: skip
        return json.dumps(doc, indent=2).encode()

    @property
    def digest(self) -> str:
        """Hex sha256 of the manifest: what Ollama's /api/tags reports once this revision is pulled."""
        return hashlib.sha256(self.manifest()).hexdigest()


MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_TYPES = ("application/vnd.ollama.image.model", "application/vnd.ollama.image.params")


@dataclass
class InstalledModel:
    name: str
    size: int
    digest: str
    family: str
    parameter_size: str
    quantization: str
    context_length: int
    files: dict[str, str] = field(default_factory=dict)
    modified_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def entry(self) -> dict[str, Any]:
        details = {
            "parent_model": "", "format": "gguf", "family": self.family, "families": [self.family],
            "parameter_size": self.parameter_size, "quantization_level": self.quantization,
        }  # fmt: skip
        return {
            "name": self.name, "model": self.name, "modified_at": self.modified_at, "size": self.size,
            "digest": self.digest, "details": details,
        }  # fmt: skip


def library_model(name: str, size: int = 4 * 1024 * 1024, **kw: Any) -> LibraryModel:
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return LibraryModel(name=normalize(name), layers=[(digest, size), ("sha256:" + "0" * 64, 485)], **kw)


class OllamaPeer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, library: list[LibraryModel] | None = None):
        self.library: dict[str, LibraryModel] = {m.name: m for m in (library or [])}
        self.installed: dict[str, InstalledModel] = {}
        self.blobs: dict[str, int] = {}
        self.loaded: set[str] = set()
        self.pull_step_s = 0.0
        self.pull_steps = 8
        self.fail_pull_after: float | None = None
        self.pull_http_error: tuple[int, str] | None = None
        self.pull_gate: threading.Event | None = None
        self.registry_digest_header = True
        self.registry_error: tuple[int, str] | None = None
        self.registry_delay_s = 0.0  # a slow registry: each manifest answer waits this long
        self.registry_requests: list[tuple[str, str]] = []  # (path, Accept header) of each manifest request
        self.chat_word_delay_s = 0.0
        self.chat_error: tuple[int, str] | None = None
        self.chat_requests: list[dict[str, Any]] = []
        self.pull_requests: list[str] = []  # the model of each /api/pull, in order
        self.embed_requests: list[dict[str, Any]] = []
        self.chat_aborted = 0
        self.chat_gate: threading.Event | None = None
        self.chat_gate_timeout_s = 60.0
        self.chat_streaming = 0
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._server = ClosingHTTPServer((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, model: LibraryModel) -> None:
        self.library[model.name] = model

    def publish_update(self, name: str) -> str:
        """Upstream publishes a new revision of a library model (new weights, so a new manifest); its new digest."""
        with self.lock:
            model = self.library[normalize(name)]
            model.revision += 1
            weights = "sha256:" + hashlib.sha256(f"{model.name}#{model.revision}".encode()).hexdigest()
            model.layers = [(weights, model.layers[0][1]), *model.layers[1:]]
            return model.digest

    def install(self, name: str, size: int = 1024, **kw: Any) -> InstalledModel:
        """Put a model on the 'host' directly, as if pulled earlier (at the library's current manifest, if listed)."""
        listed = self.library.get(normalize(name))
        model = InstalledModel(
            name=normalize(name), size=size,
            digest=listed.digest if listed else hashlib.sha256(name.encode()).hexdigest(),
            family=kw.get("family", "llama"), parameter_size=kw.get("parameter_size", "1B"),
            quantization=kw.get("quantization", "Q4_K_M"), context_length=kw.get("context_length", 4096),
        )  # fmt: skip
        with self.lock:
            self.installed[model.name] = model
        return model

    def start(self) -> OllamaPeer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="ollama-peer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops as an Ollama process does: no new connection, and the open ones (a client's pooled keep-alive
        connection included) closed, not served on by their handler threads."""
        self._server.stop()

    def __enter__(self) -> OllamaPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(peer: OllamaPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        # --- plumbing -------------------------------------------------------------------------
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _json_body(self) -> dict[str, Any]:
            raw = self._body()
            return json.loads(raw) if raw else {}

        def _send(self, status: int, doc: object | None = None, *, head_only: bool = False) -> None:
            data = b"" if doc is None else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head_only:
                self.wfile.write(data)

        def _stream_start(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def _line(self, doc: object) -> None:
            data = json.dumps(doc).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _stream_end(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _not_found(self, name: str) -> None:
            self._send(404, {"error": f"model '{name}' not found"})

        def _manifest(self, path: str, *, head_only: bool = False) -> None:
            """`/v2/{namespace}/{model}/manifests/{tag}`: `library` is the namespace of bare names."""
            peer.registry_requests.append((path, self.headers.get("Accept", "")))
            if peer.registry_delay_s:
                time.sleep(peer.registry_delay_s)
            parts = path.split("/")
            if len(parts) != 6 or parts[4] != "manifests":
                return self._registry_error(404, "NAME_UNKNOWN", "repository name not known to registry")
            namespace, model, tag = parts[2], parts[3], parts[5]
            name = f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
            if peer.registry_error is not None:
                return self._registry_error(peer.registry_error[0], "UNKNOWN", peer.registry_error[1])
            with peer.lock:
                listed = peer.library.get(name)
                body = listed.manifest() if listed else None
            if body is None:
                return self._registry_error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            self.send_response(200)
            self.send_header("Content-Type", MANIFEST_V2)
            self.send_header("Content-Length", str(len(body)))
            if peer.registry_digest_header:
                self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
            self.end_headers()
            if not head_only:
                self.wfile.write(body)

        def _registry_error(self, status: int, code: str, message: str) -> None:
            self._send(status, {"errors": [{"code": code, "message": message}]})

        # --- routes ---------------------------------------------------------------------------
        def do_HEAD(self) -> None:
            peer.calls[f"HEAD {self.path.split('?')[0]}"] += 1
            if self.path.startswith("/v2/"):
                self._manifest(self.path.split("?")[0], head_only=True)
            elif self.path.startswith("/api/blobs/"):
                digest = self.path.rsplit("/", 1)[-1]
                self._send(200 if digest in peer.blobs else 404, head_only=True)
            else:
                self._send(200, head_only=True)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            peer.calls[f"GET {path}"] += 1
            if path == "/":
                data = b"Ollama is running"
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif path.startswith("/v2/"):
                self._manifest(path)
            elif path == "/api/version":
                self._send(200, {"version": "0.12.3"})
            elif path == "/api/tags":
                with peer.lock:
                    self._send(200, {"models": [m.entry() for m in peer.installed.values()]})
            elif path == "/api/ps":
                with peer.lock:
                    models = [
                        {**peer.installed[n].entry(), "expires_at": "2099-01-01T00:00:00Z",
                         "size_vram": peer.installed[n].size}
                        for n in sorted(peer.loaded) if n in peer.installed
                    ]  # fmt: skip
                self._send(200, {"models": models})
            else:
                self._send(404, {"error": "not found"})

        def do_DELETE(self) -> None:
            peer.calls["DELETE /api/delete"] += 1
            name = normalize(str(self._json_body().get("model", "")))
            with peer.lock:
                if peer.installed.pop(name, None) is None:
                    return self._not_found(name)
                peer.loaded.discard(name)
            self._send(200)

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            peer.calls[f"POST {path}"] += 1
            if path.startswith("/api/blobs/"):
                return self._blob(path.rsplit("/", 1)[-1])
            body = self._json_body()
            route = {
                "/api/pull": self._pull, "/api/create": self._create, "/api/show": self._show,
                "/api/chat": self._chat, "/api/embed": self._embed,
            }.get(path)  # fmt: skip
            if route is None:
                return self._send(404, {"error": "not found"})
            route(body)

        def _blob(self, digest: str) -> None:
            data = self._body()
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if actual != digest:
                return self._send(400, {"error": f"digest mismatch, expected {digest}, got {actual}"})
            with peer.lock:
                peer.blobs[digest] = len(data)
            self._send(201)

        def _pull(self, body: dict[str, Any]) -> None:
            name = normalize(str(body.get("model") or body.get("name") or ""))
            peer.pull_requests.append(name)
            if peer.pull_http_error is not None:
                status, message = peer.pull_http_error
                return self._send(status, {"error": message})
            model = peer.library.get(name)
            if model is None:
                return self._send(500, {"error": "pull model manifest: file does not exist"})
            if body.get("stream") is False:
                self._wait_pull_gate()
                return self._send(200, self._finish_pull(model))
            self._stream_start()
            self._line({"status": "pulling manifest"})
            for digest, total in model.layers:
                self._line({"status": f"pulling {digest[7:19]}", "digest": digest, "total": total})
                for step in range(1, peer.pull_steps + 1):
                    if peer.pull_step_s:
                        time.sleep(peer.pull_step_s)
                    if peer.fail_pull_after is not None and step / peer.pull_steps > peer.fail_pull_after:
                        self._line({"error": f"max retries exceeded: unexpected EOF pulling {digest[7:19]}"})
                        return self._stream_end()
                    done = total * step // peer.pull_steps
                    self._line(
                        {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total, "completed": done}
                    )
            self._wait_pull_gate()
            for phase in ("verifying sha256 digest", "writing manifest"):
                self._line({"status": phase})
            self._line(self._finish_pull(model))
            self._stream_end()

        def _wait_pull_gate(self) -> None:
            gate = peer.pull_gate
            if gate is not None:
                gate.wait(peer.chat_gate_timeout_s)

        def _finish_pull(self, model: LibraryModel) -> dict[str, str]:
            with peer.lock:
                for digest, size in model.layers:
                    peer.blobs[digest] = size
                peer.installed[model.name] = InstalledModel(
                    name=model.name, size=sum(s for _, s in model.layers), digest=model.digest,
                    family=model.family, parameter_size=model.parameter_size, quantization=model.quantization,
                    context_length=model.context_length,
                )  # fmt: skip
            return {"status": "success"}

        def _create(self, body: dict[str, Any]) -> None:
            name = normalize(str(body.get("model", "")))
            files: dict[str, str] = body.get("files") or {}
            if not files and not body.get("from"):
                return self._send(400, {"error": "neither 'from' or 'files' was specified"})
            missing = [d for d in files.values() if d not in peer.blobs]
            if missing:
                return self._send(400, {"error": f"blob {missing[0]} not found; upload it with POST /api/blobs first"})
            with peer.lock:
                size = sum(peer.blobs[d] for d in files.values())
                manifest = json.dumps(files, sort_keys=True).encode()
                peer.installed[name] = InstalledModel(
                    name=name, size=size, digest=hashlib.sha256(manifest).hexdigest(), family="llama",
                    parameter_size="unknown", quantization=str(body.get("quantize") or "unknown"),
                    context_length=4096, files=dict(files),
                )  # fmt: skip
            lines = [{"status": "parsing GGUF"}]
            lines += [{"status": f"using existing layer {d}"} for d in files.values()]
            lines += [{"status": "writing manifest"}, {"status": "success"}]
            if body.get("stream") is False:
                return self._send(200, lines[-1])
            self._stream_start()
            for line in lines:
                self._line(line)
            self._stream_end()

        def _show(self, body: dict[str, Any]) -> None:
            name = normalize(str(body.get("model", "")))
            model = peer.installed.get(name)
            if model is None:
                return self._not_found(name)
            info = {
                "general.architecture": model.family, "general.parameter_count": 1_000_000_000,
                f"{model.family}.context_length": model.context_length,
            }  # fmt: skip
            self._send(200, {
                "modelfile": f"FROM {name}", "parameters": "", "template": "{{ .Prompt }}",
                "details": model.entry()["details"], "model_info": info, "capabilities": ["completion"],
                "modified_at": model.modified_at,
            })  # fmt: skip

        def _chat(self, body: dict[str, Any]) -> None:
            peer.chat_requests.append(body)
            if peer.chat_error is not None:
                return self._send(peer.chat_error[0], {"error": peer.chat_error[1]})
            name = normalize(str(body.get("model", "")))
            if name not in peer.installed:
                return self._not_found(name)
            peer.loaded.add(name)
            last = (body.get("messages") or [{}])[-1].get("content", "")
            text = f"echo: {last}"
            prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
            words = text.split(" ")
            base = {"model": name, "created_at": datetime.now(UTC).isoformat()}
            # what Ollama's last line carries: the reason and the token counts (durations in ns)
            totals = {"done": True, "done_reason": "stop", "total_duration": 1_000_000, "load_duration": 0,
                      "prompt_eval_count": prompt, "prompt_eval_duration": 1000, "eval_count": len(words),
                      "eval_duration": 1000}  # fmt: skip
            if body.get("stream") is False:
                return self._send(200, {**base, "message": {"role": "assistant", "content": text}, **totals})
            self._stream_start()
            gate = peer.chat_gate
            with peer.lock:
                peer.chat_streaming += 1
            try:
                for i, word in enumerate(words):
                    if peer.chat_word_delay_s:
                        time.sleep(peer.chat_word_delay_s)
                    if i == 1 and gate is not None and not self._hold(gate):
                        raise ConnectionResetError("the client closed the connection while the answer was held")
                    piece = word if i == len(words) - 1 else word + " "
                    self._line({**base, "message": {"role": "assistant", "content": piece}, "done": False})
                self._line({**base, "message": {"role": "assistant", "content": ""}, **totals})
                self._stream_end()
            except (BrokenPipeError, ConnectionResetError):
                with peer.lock:
                    peer.chat_aborted += 1
                self.close_connection = True
            finally:
                with peer.lock:
                    peer.chat_streaming -= 1

        def _hold(self, gate: threading.Event) -> bool:
            """Wait for the gate (bounded); False when the client closed its side of the connection meanwhile."""
            deadline = time.monotonic() + peer.chat_gate_timeout_s
            while not gate.wait(0.02):
                if time.monotonic() > deadline:
                    return True
                readable, _, _ = select.select([self.connection], [], [], 0)
                if readable:
                    try:
                        if not self.connection.recv(1, socket.MSG_PEEK):
                            return False  # EOF: the client hung up
                    except OSError:
                        return False
            return True

        def _embed(self, body: dict[str, Any]) -> None:
            peer.embed_requests.append(body)
            if peer.chat_error is not None:
                return self._send(peer.chat_error[0], {"error": peer.chat_error[1]})
            name = normalize(str(body.get("model", "")))
            if name not in peer.installed:
                return self._not_found(name)
            inputs = body.get("input")
            texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
            vectors = [[b / 255 for b in hashlib.sha256(str(t).encode()).digest()[:8]] for t in texts]
            self._send(200, {"model": name, "embeddings": vectors, "total_duration": 1_000_000, "load_duration": 0,
                             "prompt_eval_count": sum(len(str(t).split()) for t in texts)})  # fmt: skip

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", default=[], help="a pullable model name (repeatable)")
    args = parser.parse_args()
    peer = OllamaPeer(port=args.port, library=[library_model(m) for m in args.model]).start()
    print(peer.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        peer.stop()


if __name__ == "__main__":
    main()
