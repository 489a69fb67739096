"""Recommendations for an imported model sized from its GGUF header (issue 13): catalog and gateway processes; the
host's sample and its probe's local-models report published as the probe does. An import without architecture
figures is sized from its file size until the host reports its `local_path` file, then from that file's header."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.gguf_header import model_shape
from contracts.local_models import LocalModelFile, LocalModelsScanned
from services.runtime.gguf_io import read_file_header
from tests.harness.catalog import bearer, catalog_fleet
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import publish
from tests.harness.gguf_builder import write_tiny_llama
from tests.harness.provision_bus import Bus
from tests.harness.waiting import until

pytestmark = pytest.mark.e2e

ADMIN = bearer(ADMIN_TOKEN)
HOST = "small-gpu"


async def recommended(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get(f"/api/v1/hosts/{HOST}/recommendations", headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_an_import_is_recommended_by_its_local_header(
    bus: Bus, tmp_path: Path, database_url, service_env, start_service, start_gateway
):
    (tmp_path / "models").mkdir()
    path = write_tiny_llama(tmp_path / "models" / "tiny.gguf")
    size = path.stat().st_size
    shape = model_shape(read_file_header(path), size)
    preset = f'[model_presets.tiny-import]\nweights = "{path}"\nformat = "gguf"\nsize_gb = {size / 1e9}\n'
    async with catalog_fleet(database_url, service_env, start_service, start_gateway) as http:
        imported = await http.post("/api/v1/catalog/import", params={"filename": "presets.toml"},
                                   content=preset.encode(), headers=ADMIN)  # fmt: skip
        assert imported.status_code == 200, imported.text
        # a million parameters: the smallest candidate, the one a host with under 4 GB of GPU memory is offered
        patched = await http.patch("/api/v1/catalog/models/tiny-import", json={"parameter_count": 1_000_000},
                                   headers=ADMIN)  # fmt: skip
        assert patched.status_code == 200, patched.text
        assert patched.json()["architecture"] is None
        await bus.put_host(HOST, None, vram_gib=2)

        before = await recommended(http)
        assert before["model"]["model"]["name"] == "tiny-import"
        assert before["placement"]["method"] == "file-size"

        report = LocalModelsScanned(
            producer="hardware-probe", host=HOST, host_id=HOST, report_s=60,
            files=[LocalModelFile(ref="local:tiny.gguf", path=str(path), model_dir=str(path.parent), format="gguf",
                                  size_bytes=size, mtime=datetime.now(UTC), shape=shape)],
        )  # fmt: skip
        await publish(bus.nc.jetstream(), report)

        async def by_header() -> bool:
            return (await recommended(http))["placement"]["method"] == "header"

        await until(by_header, 20)
        after = await recommended(http)
        assert after["placement"]["fit"]["total_layers"] == shape.block_count + 1
