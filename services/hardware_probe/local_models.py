"""Local discovery: `.gguf` / `.bin` files under MODELFLEET_MODEL_DIRS with their GGUF header's figures, size and
sha256, reported as evt.hardware.local_models.scanned.v1 (docs/hardware.md, "Local models").

The walk and the header reads run in a worker thread once per probe interval; each file's sha256 is computed once,
in a thread of its own, one file at a time, and cached by (path, size, mtime) in the probe's state dir, so neither
a multi-GB hash nor a restart delays the regular samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.gguf_header import MAGIC, GgufError, model_shape
from contracts.local_models import (
    MAX_REPORTED_FILES,
    LocalFormat,
    LocalModelDir,
    LocalModelFile,
    LocalModelsScanned,
)
from contracts.vram import ModelShape
from services.runtime.gguf_io import read_file_header

log = logging.getLogger(__name__)

SUFFIXES: dict[str, LocalFormat] = {".gguf": "gguf", ".bin": "bin"}
CACHE_FILE = "local-models.json"
CACHE_VERSION = 1
HASH_CHUNK = 8 << 20
#: A report larger than this leaves the files' shapes out (NATS refuses messages over 1 MiB by default).
MAX_EVENT_BYTES = 800_000


def model_dirs_from(value: str) -> list[Path]:
    """`MODELFLEET_MODEL_DIRS`: directories separated by os.pathsep (`:` here, `;` on Windows), like PATH; empty
    entries are ignored, `~` is expanded, a relative entry is taken from the working directory, a repeat dropped."""
    dirs: list[Path] = []
    for raw in value.split(os.pathsep):
        entry = raw.strip()
        if not entry:
            continue
        if "\x00" in entry:
            raise ValueError(f"MODELFLEET_MODEL_DIRS: entry {entry!r} has a NUL byte")
        path = Path(entry).expanduser().absolute()
        if path not in dirs:
            dirs.append(path)
    return dirs


@dataclass(frozen=True)
class Known:
    """What was learnt of one file at (size, mtime_ns): read once, kept in the cache file."""

    size: int
    mtime_ns: int
    format: LocalFormat
    sha256: str | None = None
    architecture: str | None = None
    quant: str | None = None
    context_length: int | None = None
    shape: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Seen:
    """One file found by a walk."""

    path: Path
    model_dir: Path
    relative: str
    size: int
    mtime_ns: int
    symlink_target: str | None
    known: Known | None  # None: unreadable (see error)
    error: str | None = None


def _header_facts(path: Path, size: int, fmt: LocalFormat) -> dict[str, Any]:
    """The header's figures, or an error naming why there are none; a `.bin` without the GGUF magic has none."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        return {"error": f"unreadable: {exc.strerror or exc}"}
    if magic != MAGIC:
        return {} if fmt == "bin" else {"error": f"not a GGUF file (starts with {magic!r}, not {MAGIC!r})"}
    try:
        header = read_file_header(path)
    except (GgufError, OSError) as exc:
        return {"error": f"GGUF header unreadable: {exc}"}
    ctx = header.arch_value("context_length")
    facts: dict[str, Any] = {
        "architecture": header.architecture or None,
        "quant": header.file_type,
        "context_length": int(ctx) if isinstance(ctx, int) else None,
    }
    try:
        facts["shape"] = model_shape(header, size).model_dump(mode="json")
    except (GgufError, ValueError) as exc:
        facts["error"] = f"no shape for sizing: {exc}"
    return facts


def _unreadable(known: Known) -> bool:
    return (known.error or "").startswith("unreadable")


def _hashable(s: Seen) -> bool:
    """A file still without its sha256 that can be read (a header that is no GGUF is hashed all the same)."""
    return s.known is not None and s.known.sha256 is None and not _unreadable(s.known)


class FileCache:
    """(path -> Known) in `<state dir>/local-models.json`; an entry holds only while size and mtime are the same."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, Known] = {}
        self.lock = threading.Lock()
        self._writing = threading.Lock()  # one save at a time: they share the temporary file

    def load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("version") != CACHE_VERSION:
                return
            self.entries = {p: Known(**e) for p, e in doc.get("files", {}).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError) as exc:
            log.warning("local models: cache %s unreadable (%s); every file is read and hashed again", self.path, exc)

    def save(self) -> None:
        with self._writing:
            with self.lock:
                doc = {"version": CACHE_VERSION, "files": {p: k.to_json() for p, k in sorted(self.entries.items())}}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, self.path)
            except OSError as exc:
                log.warning("local models: cache %s not written (%s)", self.path, exc)

    def get(self, path: str, size: int, mtime_ns: int) -> Known | None:
        with self.lock:
            k = self.entries.get(path)
        return k if k is not None and k.size == size and k.mtime_ns == mtime_ns else None

    def put(self, path: str, known: Known) -> None:
        with self.lock:
            self.entries[path] = known

    def keep_only(self, paths: set[str]) -> bool:
        with self.lock:
            gone = set(self.entries) - paths
            for p in gone:
                del self.entries[p]
        return bool(gone)


@dataclass
class Walk:
    files: list[Seen] = field(default_factory=list)
    dirs: list[LocalModelDir] = field(default_factory=list)


class LocalModels:
    """The scanner, the hasher and the report they make; `run` is the probe's task that publishes it."""

    def __init__(self, host_id: str, dirs: list[Path], state_dir: Path, interval_s: float, report_s: float):
        self.host_id = host_id
        self.dirs = dirs
        self.interval_s = interval_s
        self.report_s = report_s
        self.cache = FileCache(state_dir / CACHE_FILE)
        self.cache.load()
        self.wake = asyncio.Event()
        self.hashing: set[str] = set()
        self._hasher: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._logged: dict[str, str] = {}
        #: Files hashed by this process (a cached sha256 is not counted): tests and the bench read it.
        self.hashed = 0

    # --- logging once per path and message -------------------------------------------------------------------------

    def _note(self, key: str, message: str, level: int = logging.WARNING) -> None:
        if self._logged.get(key) != message:
            self._logged[key] = message
            log.log(level, "local models: %s", message)

    # --- the walk (a worker thread) --------------------------------------------------------------------------------

    def walk(self) -> Walk:
        out = Walk()
        seen_paths: set[str] = set()
        for root in self.dirs:
            if not root.is_dir():
                why = "does not exist" if not root.exists() else "is not a directory"
                self._note(f"dir:{root}", f"model dir {root} {why}")
                out.dirs.append(LocalModelDir(path=str(root), error=why))
                continue
            self._logged.pop(f"dir:{root}", None)
            before = len(out.files)
            for here, subdirs, names in os.walk(root, followlinks=False, onerror=self._walk_error):
                for d in subdirs:
                    if os.path.islink(os.path.join(here, d)):
                        self._note(
                            f"dirlink:{here}/{d}", f"{here}/{d} is a symlink to a directory: not followed",
                            logging.INFO,
                        )  # fmt: skip
                for name in sorted(names):
                    fmt = SUFFIXES.get(os.path.splitext(name)[1].lower())
                    if fmt is not None:
                        seen = self._file(Path(here) / name, root, fmt)
                        if seen is not None:
                            out.files.append(seen)
                            seen_paths.add(str(seen.path))
            out.dirs.append(LocalModelDir(path=str(root), files=len(out.files) - before))
        if self.cache.keep_only(seen_paths):
            self.cache.save()
        return out

    def _walk_error(self, exc: OSError) -> None:
        self._note(f"walk:{exc.filename}", f"cannot list {exc.filename}: {exc.strerror or exc}")

    def _file(self, path: Path, root: Path, fmt: LocalFormat) -> Seen | None:
        key = str(path)
        relative = path.relative_to(root).as_posix()
        target = None
        try:
            if path.is_symlink():
                target = os.path.realpath(path)
            st = path.stat()  # follows a symlink: a linked file is listed with its target's size
        except OSError as exc:
            why = f"broken symlink to {target}" if target is not None else f"cannot stat: {exc.strerror or exc}"
            self._note(key, f"{path}: {why}")
            with contextlib.suppress(OSError):
                return Seen(path, root, relative, 0, path.lstat().st_mtime_ns, target, None, why)
            return Seen(path, root, relative, 0, 0, target, None, why)
        if not stat.S_ISREG(st.st_mode):
            self._note(key, f"{path} is not a regular file: skipped", logging.INFO)
            return None
        known = self.cache.get(key, st.st_size, st.st_mtime_ns)
        if known is None:
            facts = _header_facts(path, st.st_size, fmt)
            known = Known(size=st.st_size, mtime_ns=st.st_mtime_ns, format=fmt, **facts)
            if not _unreadable(known):  # a permission fixed later does not change the mtime: asked again each walk
                self.cache.put(key, known)
            if known.error:
                self._note(key, f"{path}: {known.error}")
            else:
                self._logged.pop(key, None)
                log.info("local models: found %s (%s, %d bytes)", path, known.quant or fmt, st.st_size)
        return Seen(path, root, relative, st.st_size, st.st_mtime_ns, target, known)

    # --- hashing (one file at a time, each in a thread) ------------------------------------------------------------

    def _to_hash(self, walk: Walk) -> list[Seen]:
        return [s for s in walk.files if _hashable(s) and self.cache.get(str(s.path), s.size, s.mtime_ns) is not None]

    def _hash_file(self, seen: Seen) -> str | None:
        """The file's sha256, or None if it changed or vanished while being read (the next walk sees it anew)."""
        digest = hashlib.sha256()
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        with seen.path.open("rb") as f:
            while n := f.readinto(buf):
                if self._stop.is_set():
                    return None
                digest.update(view[:n])  # hashlib drops the GIL on large buffers: the event loop keeps running
        st = seen.path.stat()
        if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
            return None
        return digest.hexdigest()

    async def _hash_all(self, queue: list[Seen]) -> None:
        for seen in queue:
            key = str(seen.path)
            try:
                sha = await asyncio.to_thread(self._hash_file, seen)
            except OSError as exc:  # removed or made unreadable since the walk: the next walk says which
                self._note(key, f"{seen.path}: not hashed: {exc.strerror or exc}")
                sha = None
            finally:
                self.hashing.discard(key)
            if sha is not None and self.cache.get(key, seen.size, seen.mtime_ns) is not None:
                assert seen.known is not None
                self.cache.put(key, replace(self.cache.get(key, seen.size, seen.mtime_ns) or seen.known, sha256=sha))
                self.hashed += 1
                log.info("local models: %s sha256 %s", seen.path, sha)
            await asyncio.to_thread(self.cache.save)
            self.wake.set()

    def _start_hashing(self, walk: Walk) -> None:
        if self._hasher is not None and not self._hasher.done():
            return
        queue = self._to_hash(walk)
        if queue:
            self.hashing = {str(s.path) for s in queue}
            self._hasher = asyncio.create_task(self._hash_all(queue))

    # --- the report ------------------------------------------------------------------------------------------------

    def report(self, walk: Walk, producer: str) -> LocalModelsScanned:
        files: list[LocalModelFile] = []
        first: dict[str, str] = {}
        for s in sorted(walk.files, key=lambda s: (self.dirs.index(s.model_dir), s.relative)):
            files.append(self._entry(s, first.get(s.relative)))
            first.setdefault(s.relative, str(s.path))
        files.sort(key=lambda f: f.path)
        pending = sum(1 for s in walk.files if _hashable(s))
        event = LocalModelsScanned(
            producer=producer, host=self.host_id, host_id=self.host_id, model_dirs=walk.dirs,
            files=files[:MAX_REPORTED_FILES], hashing=pending, truncated=max(0, len(files) - MAX_REPORTED_FILES),
            report_s=self.report_s,
        )  # fmt: skip
        if len(event.model_dump_json()) <= MAX_EVENT_BYTES:
            return event
        # Very deep models' shapes (a per-layer list each) could pass NATS's 1 MiB: the figures stay, the shapes go.
        self._note("report:size", "report too large for one message: shapes left out (architecture, quant kept)")
        return event.model_copy(update={"files": [f.model_copy(update={"shape": None}) for f in event.files]})

    def _entry(self, s: Seen, shadowed_by: str | None) -> LocalModelFile:
        k = s.known
        cached = self.cache.get(str(s.path), s.size, s.mtime_ns) if k is not None else None
        k = cached or k
        return LocalModelFile(
            ref=f"local:{s.relative}", path=str(s.path), model_dir=str(s.model_dir),
            format=k.format if k else SUFFIXES[s.path.suffix.lower()], size_bytes=s.size,
            mtime=datetime.fromtimestamp(s.mtime_ns / 1e9, UTC), sha256=k.sha256 if k else None,
            symlink_target=s.symlink_target, architecture=k.architecture if k else None, quant=k.quant if k else None,
            context_length=k.context_length if k else None,
            shape=ModelShape.model_validate(k.shape) if k and k.shape else None,
            error=s.error or (k.error if k else None), shadowed_by=shadowed_by,
        )  # fmt: skip

    async def scan(self, producer: str) -> LocalModelsScanned:
        """Walk the directories (in a thread), start hashing what has no sha256 yet, and report."""
        walk = await asyncio.to_thread(self.walk)
        self._start_hashing(walk)
        return self.report(walk, producer)

    async def run(self, publish: Callable[[LocalModelsScanned], Awaitable[None]], producer: str) -> None:
        """Every probe interval: scan; publish when the listing changed, or `report_s` after the last report."""
        last: dict[str, Any] | None = None
        loop = asyncio.get_running_loop()
        published_at = 0.0
        try:
            while True:
                self.wake.clear()
                event = await self.scan(producer)
                body = event.model_dump(mode="json", include={"model_dirs", "files", "hashing", "truncated"})
                if body != last or loop.time() - published_at >= self.report_s:
                    await publish(event)
                    last, published_at = body, loop.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.interval_s)
        finally:
            await self.close()

    async def close(self) -> None:
        self._stop.set()
        if self._hasher is not None:
            self._hasher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._hasher
            # A hash learnt just before the cancel may have lost its save with it (an executor job cancelled before
            # it ran): the cache on disk holds every hash this process made.
            await asyncio.to_thread(self.cache.save)
        self._stop.clear()
