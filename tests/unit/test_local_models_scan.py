"""Local discovery on a probe host: the walk, the header facts, sha256 once (cached by path, size, mtime), symlinks,
unreadable files, shadowing, the report loop; and the catalog's fold of the reports."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contracts.local_models import LocalModelsReply, LocalModelsRequest, LocalModelsScanned
from services.catalog.local_models import LocalModelsView
from services.hardware_probe.local_models import LocalModels, model_dirs_from
from services.hardware_probe.settings import HardwareProbeSettings
from tests.harness.gguf_builder import write_tiny_llama
from tests.harness.waiting import eventually

pytestmark = pytest.mark.unit


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def settled(local: LocalModels, timeout_s: float = 20.0) -> LocalModelsScanned:
    """Scan until nothing is left to hash (the hasher runs in the background between scans)."""
    async with asyncio.timeout(timeout_s):
        while True:
            event = await local.scan("test")
            if event.hashing == 0:
                return event
            await local.wake.wait()
            local.wake.clear()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    write_tiny_llama(a / "sub" / "tiny.gguf")
    (b / "weights.bin").write_bytes(b"\x00pytorch" * 1000)
    (b / "notes.txt").write_text("not a model")
    return a, b


async def test_finds_gguf_and_bin_recursively_with_header_facts_and_sha256(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = dirs
    local = LocalModels("h1", [a, b, tmp_path / "missing"], tmp_path / "state", 0.1, 60)
    try:
        first = await local.scan("test")
        by_ref = {f.ref: f for f in first.files}
        assert set(by_ref) == {"local:sub/tiny.gguf", "local:weights.bin"}
        assert first.hashing == 2 and all(f.sha256 is None for f in first.files)  # the scan did not wait for them
        tiny = by_ref["local:sub/tiny.gguf"]
        assert (tiny.architecture, tiny.quant, tiny.context_length, tiny.format) == ("llama", "F16", 8192, "gguf")
        assert (
            tiny.shape is not None
            and tiny.shape.block_count == 4
            and tiny.size_bytes == (a / "sub/tiny.gguf").stat().st_size
        )
        assert tiny.path == str(a / "sub" / "tiny.gguf") and tiny.model_dir == str(a)
        weights = by_ref["local:weights.bin"]
        assert (weights.format, weights.architecture, weights.shape, weights.error) == ("bin", None, None, None)
        assert [(d.path, d.files, d.error) for d in first.model_dirs] == [
            (str(a), 1, None), (str(b), 1, None), (str(tmp_path / "missing"), 0, "does not exist"),
        ]  # fmt: skip

        done = await settled(local)
        assert {f.ref: f.sha256 for f in done.files} == {
            "local:sub/tiny.gguf": sha(a / "sub" / "tiny.gguf"), "local:weights.bin": sha(b / "weights.bin"),
        }  # fmt: skip
    finally:
        await local.close()


async def test_sha256_is_computed_once_and_again_only_when_the_file_changes(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = dirs
    state = tmp_path / "state"
    first = LocalModels("h1", [a, b], state, 0.1, 60)
    await settled(first)
    await first.close()
    assert first.hashed == 2

    again = LocalModels("h1", [a, b], state, 0.1, 60)  # a restart: the cache in the state dir answers
    try:
        event = await again.scan("test")
        assert event.hashing == 0 and again.hashed == 0 and all(f.sha256 for f in event.files)

        (b / "weights.bin").write_bytes(b"changed" * 10)  # a new size and mtime: hashed anew, the other is not
        event = await again.scan("test")
        assert {f.ref: f.sha256 for f in event.files}["local:weights.bin"] is None
        done = await settled(again)
        assert {f.ref: f.sha256 for f in done.files}["local:weights.bin"] == sha(b / "weights.bin")
        assert again.hashed == 1
    finally:
        await again.close()


async def test_symlinks_broken_links_and_unreadable_files_are_reported_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    target = write_tiny_llama(elsewhere / "real.gguf")
    (models / "linked.gguf").symlink_to(target)  # a Hugging Face cache snapshot links its files like this
    (models / "gone.gguf").symlink_to(tmp_path / "nothing-here.gguf")
    (models / "loop").symlink_to(models, target_is_directory=True)  # not followed: no endless walk
    locked = models / "locked.gguf"
    locked.write_bytes(b"GGUF" + b"\x00" * 64)
    if os.geteuid() == 0:  # root reads any file whatever its mode: refuse it the way the OS would
        real_open = Path.open

        def refuse(self: Path, *args: object, **kwargs: object) -> object:
            if self == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "open", refuse)
    else:
        locked.chmod(0)
    caplog.set_level(logging.INFO, logger="services.hardware_probe.local_models")
    local = LocalModels("h1", [models], tmp_path / "state", 0.1, 60)
    try:
        await local.scan("test")
        event = await settled(local)
        files = {f.ref: f for f in event.files}
        assert set(files) == {"local:linked.gguf", "local:gone.gguf", "local:locked.gguf"}
        linked = files["local:linked.gguf"]
        assert linked.symlink_target == str(target) and linked.sha256 == sha(target) and linked.architecture == "llama"
        gone = files["local:gone.gguf"]
        assert gone.error == f"broken symlink to {tmp_path / 'nothing-here.gguf'}" and gone.sha256 is None
        assert files["local:locked.gguf"].error == "unreadable: Permission denied"
        assert files["local:locked.gguf"].sha256 is None
        await local.scan("test")  # the same problems again: logged once each, not on every scan
        text = caplog.text
        assert text.count("broken symlink") == 1 and text.count("locked.gguf: unreadable") == 1
        assert "is a symlink to a directory: not followed" in text
    finally:
        await local.close()


async def test_the_first_directory_wins_a_relative_path_like_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        write_tiny_llama(d / "same.gguf")
    local = LocalModels("h1", [a, b], tmp_path / "state", 0.1, 60)
    try:
        files = (await local.scan("test")).files
        assert [(f.path, f.shadowed_by) for f in files] == [
            (str(a / "same.gguf"), None),
            (str(b / "same.gguf"), str(a / "same.gguf")),
        ]
    finally:
        await local.close()


async def test_the_report_loop_publishes_changes_promptly_and_drops_removed_files(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    events: list[LocalModelsScanned] = []

    async def publish(event: LocalModelsScanned) -> None:
        events.append(event)

    async def until(check: Callable[[LocalModelsScanned], bool]) -> LocalModelsScanned:
        async def latest() -> LocalModelsScanned | None:
            return events[-1] if events and check(events[-1]) else None

        return await eventually(latest, 20, "a report that passes the check")

    local = LocalModels("h1", [models], tmp_path / "state", 0.2, 3600)
    task = asyncio.create_task(local.run(publish, "test"))
    try:
        await until(lambda e: e.files == [])
        dropped = write_tiny_llama(models / "dropped.gguf")
        seen = await until(lambda e: [f.ref for f in e.files] == ["local:dropped.gguf"] and e.files[0].sha256)
        assert seen.files[0].sha256 == sha(dropped) and seen.report_s == 3600
        count = len(events)
        await local.scan("test")  # nothing changed: a scan publishes nothing (report_s is an hour)
        assert len(events) == count
        dropped.unlink()
        await until(lambda e: e.files == [])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_model_dirs_setting_is_a_path_list() -> None:
    joined = os.pathsep.join(["/srv/models", "", " ~/gguf ", "/srv/models", "relative/dir"])
    dirs = HardwareProbeSettings(MODELFLEET_MODEL_DIRS=joined).model_dirs  # type: ignore[call-arg]
    assert dirs == [Path("/srv/models"), Path.home() / "gguf", Path.cwd() / "relative" / "dir"]
    assert model_dirs_from("") == [] and HardwareProbeSettings().model_dirs == []


def _report(host: str, at: datetime, refs: list[str], report_s: float = 60) -> LocalModelsScanned:
    files = [
        {"ref": r, "path": f"/m/{r[6:]}", "model_dir": "/m", "format": "gguf", "size_bytes": 1, "mtime": at,
         "sha256": "a" * 64 if r.endswith("x.gguf") else None}
        for r in refs
    ]  # fmt: skip
    return LocalModelsScanned.model_validate(
        {"producer": "t", "host": host, "host_id": host, "occurred_at": at, "files": files, "report_s": report_s}
    )


def test_the_catalog_keeps_each_hosts_newest_report_and_drops_stale_hosts() -> None:
    now = datetime.now(UTC)
    view = LocalModelsView({})
    assert view.fold(_report("h1", now - timedelta(seconds=5), ["local:x.gguf", "local:y.gguf"]))
    assert view.fold(_report("h1", now, ["local:x.gguf"]))  # y.gguf is gone
    assert not view.fold(_report("h1", now - timedelta(seconds=1), ["local:old.gguf"]))  # a late, older report
    assert view.fold(_report("h2", now - timedelta(seconds=181), ["local:z.gguf"]))  # 3 x 60 s old: stale
    reply: LocalModelsReply = view.listing(LocalModelsRequest(), now)
    assert reply.hosts == ["h1"] and [(m.host_id, m.file.ref) for m in reply.models] == [("h1", "local:x.gguf")]
    assert view.listing(LocalModelsRequest(host="h2"), now).models == []
    assert view.listing(LocalModelsRequest(sha256="a" * 64), now).models[0].file.ref == "local:x.gguf"
    assert view.listing(LocalModelsRequest(ref="local:y.gguf"), now).models == []


async def test_a_report_too_large_for_one_message_leaves_the_shapes_out(
    dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.hardware_probe import local_models

    a, _ = dirs
    local = LocalModels("h1", [a], tmp_path / "state", 0.1, 60)
    try:
        assert (await local.scan("test")).files[0].shape is not None
        monkeypatch.setattr(local_models, "MAX_EVENT_BYTES", 1000)
        [tiny] = (await local.scan("test")).files
        assert tiny.shape is None and (tiny.architecture, tiny.quant) == ("llama", "F16")
    finally:
        await local.close()
