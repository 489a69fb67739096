"""LoRA adapters of the fallback: the registry folder (scan, watch, publish), and peft applying one to a slot's model.

The watcher publishes `evt.fallback.adapter.updated.v1`; every replica folds those events into an `AdapterBook` and
loads adapters from the event (name + sha256), never from its own scan, so all replicas serve the same version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from contracts.fallback import AdapterManifest, AdapterUpdated

log = logging.getLogger(__name__)

#: The file whose sha256 a manifest pins (what peft's `save_pretrained` writes).
WEIGHTS_FILE = "adapter_model.safetensors"
#: Event ids derive from the change, so replicas watching the same folder publish one message (JetStream dedup).
_EVENT_NAMESPACE = uuid.UUID("5d0f8a52-3c1e-4a57-9a52-0e6c2b8f1a10")

Change = Literal["added", "changed", "removed"]


class AdapterSettings(BaseModel):
    """Adapter settings; `InferenceFallbackSettings` includes these fields (env `MODELFLEET_FALLBACK_ADAPTERS_*`)."""

    adapters_dir: Path | None = Field(default=None, description="The registry folder of `<name>.json` manifests.")
    adapters_scan_s: float = Field(default=5.0, gt=0, description="Seconds between scans of the registry folder.")


class AdapterError(Exception):
    """An adapter that cannot be used. `status`/`code` are what an RPC error reply carries."""

    status = 422
    code = "adapter_invalid"

    def __init__(self, message: str, *, file: Path | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.field = field


class ManifestInvalid(AdapterError):
    code = "adapter_manifest_invalid"


class ShaMismatch(AdapterError):
    status = 409
    code = "adapter_sha256_mismatch"


class AdapterNotFound(AdapterError):
    status = 404
    code = "adapter_not_found"


class AdapterWrongBase(AdapterError):
    code = "adapter_wrong_base"


class AdapterBusy(AdapterError):
    status = 503
    code = "adapter_busy"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class HashCache:
    """sha256 by (path, size, mtime): a scan every few seconds hashes only weights that were rewritten."""

    entries: dict[tuple[str, int, int], str] = field(default_factory=dict)

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self.entries:
            self.entries[key] = sha256_file(path)
        return self.entries[key]


def verify_weights(manifest: AdapterManifest, cache: HashCache | None = None, *, file: Path | None = None) -> Path:
    """The adapter's weights file, after checking it exists and its sha256 is the manifest's; else `AdapterError`."""
    weights = Path(manifest.path) / WEIGHTS_FILE
    if not weights.is_file():
        raise ManifestInvalid(f"{file or manifest.name}: field 'path': no {WEIGHTS_FILE} in {manifest.path}",
                              file=file, field="path")  # fmt: skip
    actual = cache.sha256(weights) if cache is not None else sha256_file(weights)
    if actual != manifest.sha256:
        raise ShaMismatch(f"{file or manifest.name}: field 'sha256': refused adapter {manifest.name!r}: "
                          f"{weights} has sha256 {actual}, the manifest says {manifest.sha256}",
                          file=file, field="sha256")  # fmt: skip
    return weights


def read_manifest(file: Path, cache: HashCache | None = None) -> AdapterManifest:
    """One `<name>.json`, validated: its fields, its name against the file name, its weights and their sha256.
    A relative `path` is relative to the registry folder; the manifest returned carries it absolute."""
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestInvalid(f"{file}: unreadable: {exc}", file=file) from exc
    except json.JSONDecodeError as exc:
        raise ManifestInvalid(f"{file}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}",
                              file=file) from exc  # fmt: skip
    try:
        manifest = AdapterManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise ManifestInvalid(f"{file}: field {where!r}: {first['msg']}", file=file, field=where) from exc
    if manifest.name != file.stem:
        raise ManifestInvalid(f"{file}: field 'name': {manifest.name!r} is not the file's name {file.stem!r}",
                              file=file, field="name")  # fmt: skip
    path = Path(manifest.path)
    if not path.is_absolute():
        manifest = manifest.model_copy(update={"path": str((file.parent / path).resolve())})
    verify_weights(manifest, cache, file=file)
    return manifest


@dataclass(frozen=True)
class Known:
    """A manifest as the watcher last published it; `mtime_ns` of its file keys the event id."""

    manifest: AdapterManifest
    mtime_ns: int


@dataclass(frozen=True)
class AdapterChange:
    name: str
    change: Change
    known: Known

    def event(self, producer: str) -> AdapterUpdated:
        m = self.known.manifest
        key = f"{self.name}\n{self.change}\n{m.sha256}\n{m.base_model}\n{m.path}\n{self.known.mtime_ns}"
        return AdapterUpdated(
            event_id=uuid.uuid5(_EVENT_NAMESPACE, key),
            producer=producer,
            name=self.name,
            change=self.change,
            manifest=None if self.change == "removed" else m,
        )


@dataclass
class ScanResult:
    changes: list[AdapterChange]
    errors: list[AdapterError]
    #: What is known after this scan; a manifest that turned bad keeps its last good version.
    current: dict[str, Known]


def scan(folder: Path, known: Mapping[str, Known], cache: HashCache | None = None) -> ScanResult:
    """The registry folder against what is known: added, changed and removed adapters, and each bad manifest's error
    (a bad manifest is skipped; one that was good before keeps its last good version rather than being removed)."""
    if not folder.is_dir():
        err = ManifestInvalid(f"{folder}: the adapter registry folder does not exist", file=folder)
        return ScanResult([], [err], dict(known))
    current: dict[str, Known] = {}
    errors: list[AdapterError] = []
    for file in sorted(folder.glob("*.json")):
        if file.name.startswith("."):  # editors' and atomic writers' temporary files
            continue
        try:
            manifest = read_manifest(file, cache)
            mtime_ns = file.stat().st_mtime_ns
        except AdapterError as exc:
            errors.append(exc)
            if file.stem in known:
                current[file.stem] = known[file.stem]
            continue
        before = known.get(manifest.name)
        current[manifest.name] = before if before and before.manifest == manifest else Known(manifest, mtime_ns)
    changes = [AdapterChange(n, "added", k) for n, k in current.items() if n not in known]
    changes += [AdapterChange(n, "changed", k) for n, k in current.items() if n in known and k != known[n]]
    changes += [AdapterChange(n, "removed", k) for n, k in known.items() if n not in current]
    return ScanResult(changes, errors, current)


Publish = Callable[[AdapterUpdated], Awaitable[None]]


class AdapterWatcher:
    """Scans the registry folder every `interval_s` and publishes one `AdapterUpdated` per change. A change whose
    publish fails is retried on the next scan; a bad manifest is logged (once per distinct error) and skipped."""

    def __init__(self, folder: Path, publish: Publish, *, producer: str, interval_s: float = 5.0) -> None:
        self.folder = folder
        self.publish = publish
        self.producer = producer
        self.interval_s = interval_s
        self.known: dict[str, Known] = {}
        self.errors: list[str] = []
        self._cache = HashCache()

    async def scan_once(self) -> list[AdapterUpdated]:
        result = await asyncio.to_thread(scan, self.folder, dict(self.known), self._cache)
        errors = [str(e) for e in result.errors]
        for message in errors:
            if message not in self.errors:
                log.warning("fallback.adapter.skipped %s", message)
        self.errors = errors
        published: list[AdapterUpdated] = []
        for change in result.changes:
            event = change.event(self.producer)
            try:
                await self.publish(event)
            except Exception as exc:
                log.warning("fallback.adapter.%s %s not published (retried next scan): %s", change.change,
                            change.name, exc)  # fmt: skip
                continue
            if change.change == "removed":
                self.known.pop(change.name, None)
            else:
                self.known[change.name] = change.known
            log.info("fallback.adapter.%s name=%s sha256=%s event_id=%s", change.change, change.name,
                     change.known.manifest.sha256, event.event_id)  # fmt: skip
            published.append(event)
        return published

    async def run(self) -> None:
        """The service task: never ends on a bad folder or a failed scan."""
        while True:
            try:
                await self.scan_once()
            except Exception:
                log.exception("adapter scan of %s failed", self.folder)
            await asyncio.sleep(self.interval_s)


@dataclass
class AdapterBook:
    """The adapters every replica agrees on, folded from `AdapterUpdated` events (idempotent by name + sha256)."""

    adapters: dict[str, AdapterManifest] = field(default_factory=dict)

    def fold(self, event: AdapterUpdated) -> bool:
        """Applies one event; True when it changed what the book holds."""
        if event.change == "removed" or event.manifest is None:
            return self.adapters.pop(event.name, None) is not None
        if self.adapters.get(event.name) == event.manifest:
            return False
        self.adapters[event.name] = event.manifest
        return True

    def resolve(self, name: str, *, role: str | None, model_ref: str) -> AdapterManifest:
        """The manifest a request's `adapter` names, for the slot serving `role`/`model_ref`."""
        manifest = self.adapters.get(name)
        if manifest is None:
            raise AdapterNotFound(f"no adapter {name!r} in the registry (known: {sorted(self.adapters) or 'none'})",
                                  field="adapter")  # fmt: skip
        if manifest.base_model not in {role, model_ref}:
            raise AdapterWrongBase(f"adapter {name!r} is for {manifest.base_model!r}, not role {role!r} "
                                   f"/ model {model_ref!r}", field="adapter")  # fmt: skip
        return manifest


def adapter_key(manifest: AdapterManifest) -> str:
    """peft's name for one version of an adapter (module names cannot hold '.'): a changed adapter loads alongside
    the old version instead of replacing weights that a running generation may be reading."""
    return f"{manifest.name.replace('.', '_')}-{manifest.sha256[:12]}"


def apply_adapter(model: Any, manifest: AdapterManifest) -> Any:
    """Loads the adapter (its sha256 checked again first) into `model` unless already there, and makes it the active
    one. The first adapter wraps the model in a `PeftModel`, later ones load into it; returns the `PeftModel`."""
    from peft import PeftModel

    key = adapter_key(manifest)
    if isinstance(model, PeftModel):
        if key not in model.peft_config:
            verify_weights(manifest)
            model.load_adapter(manifest.path, adapter_name=key)
    else:
        verify_weights(manifest)
        model = PeftModel.from_pretrained(model, manifest.path, adapter_name=key)
    model.set_adapter(key)
    model.eval()
    return model


#: `AdapterSet._active` after a switch that failed half-way: equal to no request's wanted state.
_UNSETTLED = "\0unsettled"


class AdapterSet:
    """One slot's model and the adapters loaded into it, shared by the slot's concurrent generations.

    peft's active adapter is a property of the whole model, so generations with the same adapter (or none) run
    together and a switch waits until the slot's in-flight generations have finished. Call `using` from the thread
    that generates; `model` is what to call `generate` on (after the first adapter, the `PeftModel` wrapping it,
    which has the LoRA layers injected in place: never generate from the bare model once adapters are loaded).
    """

    def __init__(self, model: Any, *, wait_s: float = 300.0) -> None:
        self.model = model
        self.wait_s = wait_s
        self._cond = threading.Condition()
        self._active: str | None = None
        self._in_flight = 0
        self._base = ExitStack()
        self._versions: dict[str, str] = {}  # adapter name -> the key of its loaded version

    @property
    def loaded(self) -> list[str]:
        return sorted(getattr(self.model, "peft_config", {}))

    @contextmanager
    def using(self, manifest: AdapterManifest | None) -> Iterator[Any]:
        """The model with `manifest`'s adapter active (None: with every adapter disabled, the base model)."""
        wanted = adapter_key(manifest) if manifest is not None else None
        with self._cond:
            if not self._cond.wait_for(lambda: self._in_flight == 0 or self._active == wanted, timeout=self.wait_s):
                raise AdapterBusy(f"the slot stayed busy with adapter {self._active!r} for {self.wait_s}s")
            if self._active != wanted:
                try:
                    self._switch(manifest)
                except BaseException:
                    # The old state is gone (its disable_adapter() context closed) and the new one never came:
                    # the next request switches again, whatever it asks for.
                    self._active = _UNSETTLED
                    raise
            self._active = wanted
            self._in_flight += 1
        try:
            yield self.model
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def _switch(self, manifest: AdapterManifest | None) -> None:
        # Only with nothing in flight (or to the state already active): the layers change under no generation.
        self._base.close()
        if manifest is None:
            if hasattr(self.model, "disable_adapter"):
                self._base.enter_context(self.model.disable_adapter())
            return
        self.model = apply_adapter(self.model, manifest)
        key, before = adapter_key(manifest), self._versions.get(manifest.name)
        if before is not None and before != key:
            self.model.delete_adapter(before)  # the replaced version: no generation is using it
        self._versions[manifest.name] = key
