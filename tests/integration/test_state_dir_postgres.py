"""Embedded PostgreSQL keeps its data under the folder it is given, whoever runs it (root included)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from services.runtime.embedded import EmbeddedPostgres, legacy_data_dir
from tests.harness.servers import postgres_server

pytestmark = pytest.mark.integration


def _own_traces(data_dir: Path) -> list[Path]:
    """Entries in /var/tmp and /tmp named after this data dir's digest (other engineers' runs are ignored)."""
    digest_name = legacy_data_dir(data_dir).parent.name
    return [p for root in (Path("/var/tmp"), Path("/tmp")) for p in root.glob(f"modelfleet*{digest_name[-12:]}*")]


def _server_user_uid() -> int:
    return pwd.getpwnam(os.environ.get("MODELFLEET_PG_USER", "nobody")).pw_uid if os.geteuid() == 0 else os.getuid()


def _show_data_directory(server: EmbeddedPostgres) -> str:
    r = subprocess.run(
        [str(server.bindir / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", server.user, "-d", "postgres",
         "-tAc", "SHOW data_directory"],
        capture_output=True, check=True, timeout=30, cwd="/",
    )  # fmt: skip
    return r.stdout.decode().strip()


def test_harness_postgres_leaves_nothing_outside_its_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_TEST_BACKEND", "embedded")
    monkeypatch.delenv("MODELFLEET_TEST_DATABASE_URL", raising=False)
    data_dir = tmp_path / "pg" / "data"
    assert _own_traces(data_dir) == []
    with postgres_server(tmp_path) as url:
        assert url.startswith("postgresql+asyncpg://")
        assert (data_dir / "PG_VERSION").is_file()
        assert data_dir.stat().st_uid == _server_user_uid()
        assert _own_traces(data_dir) == []
    assert _own_traces(data_dir) == []
    assert not legacy_data_dir(data_dir).parent.exists()


def test_private_state_dir_gets_only_the_traverse_bit(tmp_path: Path) -> None:
    """A state dir inside a 0700 folder (like /root): the cluster stays there; the folder gains o+x, never o+r."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    data_dir = private / "state" / "postgres" / "data"
    server = EmbeddedPostgres(data_dir, fsync=False).start()
    try:
        assert Path(_show_data_directory(server)) == data_dir
        mode = stat.S_IMODE(private.stat().st_mode)
        if os.geteuid() == 0:
            assert mode == 0o701
            assert private in server.made_traversable
        else:
            assert mode == 0o700
            assert server.made_traversable == []
        assert _own_traces(data_dir) == []
    finally:
        server.stop()
    assert _own_traces(data_dir) == []


def test_cluster_kept_in_var_tmp_by_an_older_release_is_moved_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "postgres" / "data"
    legacy = legacy_data_dir(data_dir)
    try:
        old = EmbeddedPostgres(legacy, fsync=False).start()
        try:
            subprocess.run(
                [str(old.bindir / "psql"), "-h", "127.0.0.1", "-p", str(old.port), "-U", old.user, "-d", "modelfleet",
                 "-tAc", "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('inventory')"],
                capture_output=True, check=True, timeout=30, cwd="/",
            )  # fmt: skip
        finally:
            old.stop()
        server = EmbeddedPostgres(data_dir, fsync=False).start()
        try:
            assert server.moved_from == legacy
            assert Path(_show_data_directory(server)) == data_dir
            r = subprocess.run(
                [str(server.bindir / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", server.user,
                 "-d", "modelfleet", "-tAc", "SELECT v FROM kept"],
                capture_output=True, check=True, timeout=30, cwd="/",
            )  # fmt: skip
            assert r.stdout.decode().strip() == "inventory"
        finally:
            server.stop()
        assert not legacy.parent.exists()
        assert _own_traces(data_dir) == []
    finally:
        if legacy.parent.exists():
            shutil.rmtree(legacy.parent)
