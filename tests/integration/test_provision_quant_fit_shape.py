"""The provisioner's fit check of a Hugging Face repo's quantizations (rpc.provisioner.hf.quantizations.v1), with
the catalog and provisioner processes on real NATS + PostgreSQL and the hub peer: a repo the library knows is sized
from its architecture figures and the file's size (the estimate `fit` makes, KV cache included), any other repo
from the file size, and the reply says which."""

from __future__ import annotations

import pytest

from contracts.architecture import shape_from_architecture
from contracts.catalog import ModelDoc, ModelInfoRequest
from contracts.provisioner import QuantizationsReply, QuantizationsRequest
from contracts.vram import EstimateSettings, estimate, simple_estimate
from tests.harness.provision_bus import MIB, Bus, provisioner_env
from tests.peers.hub_server import HubPeer, generated_file

pytestmark = pytest.mark.integration

LIBRARY_REPO = "Qwen/Qwen3-8B-GGUF"  # qwen3-8b in the curated library, with its architecture figures
OTHER_REPO = "acme/tiny-GGUF"


async def listing(bus: Bus, repo: str, ctx: int) -> QuantizationsReply:
    req = QuantizationsRequest(repo_id=repo, revision="v1", context_tokens=ctx)
    return QuantizationsReply.model_validate(await bus.request(QuantizationsRequest.SUBJECT, req, timeout_s=20))


async def test_library_repo_sized_from_its_shape_other_repo_from_file_size(
    bus, service_env, database_url, tmp_path, start_service
):
    with HubPeer() as hub:
        for repo_id, name in ((LIBRARY_REPO, "Qwen3-8B-Q4_K_M.gguf"), (OTHER_REPO, "tiny.Q4_K_M.gguf")):
            repo = hub.repo(repo_id)
            repo.tag("v1", repo.commit([generated_file(name, 3 * MIB, seed=2)]))
        await start_service("catalog", service_env(database_url=database_url))
        await start_service("provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {}))
        await bus.put_host("gpu-1", None, vram_gib=8)
        doc = ModelDoc.model_validate(await bus.request(ModelInfoRequest.SUBJECT, ModelInfoRequest(model=LIBRARY_REPO)))
        assert doc.architecture is not None

        for ctx in (4096, 40960):
            [q] = (await listing(bus, LIBRARY_REPO, ctx)).quantizations
            shape = shape_from_architecture(doc.architecture, q.size_bytes, "Q4_K_M")
            expected = estimate(shape, EstimateSettings(num_ctx=ctx))
            assert (q.method, q.estimated_vram_bytes) == ("shape", expected.total_bytes)
            assert expected.kv_cache_bytes > 0
        short, long = [
            (await listing(bus, LIBRARY_REPO, c)).quantizations[0].estimated_vram_bytes for c in (4096, 40960)
        ]
        # Qwen3-8B: 36 layers x 8 KV heads x 128 x 2 (K and V) x 2 bytes (f16) a token; 36,864 more tokens
        assert long - short >= 36 * 8 * 128 * 2 * 2 * 36864

        [other] = (await listing(bus, OTHER_REPO, 4096)).quantizations
        assert (other.method, other.estimated_vram_bytes) == (
            "file-size",
            simple_estimate(other.size_bytes, 4096).total_bytes,
        )
        assert other.fit == {"gpu-1": "perfect"}
