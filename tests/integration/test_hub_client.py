"""The provisioner's hub client against the hub peer, through the real `huggingface_hub`: listings, Range resume,
a cut body resumed within one call, 5xx, errors by X-Error-Code, and a pinned safetensors checkpoint."""

from __future__ import annotations

import hashlib

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from services.provisioner import domain
from services.provisioner.hub import HubClient, VerificationFailed
from tests.peers.hub_server import HubPeer, generated_file, small_file

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


@pytest.fixture
def hub():
    with HubPeer(page_size=2) as peer:
        repo = peer.repo("acme/m-GGUF")
        files = [small_file("README.md", b"r"), small_file("sub/notes.txt", b"n")]
        files += [generated_file("m.Q4_K_M.gguf", 12 * MIB, seed=4), generated_file("m.Q8_0.gguf", MIB, seed=5)]
        sha = repo.commit(files)
        repo.tag("v1", sha)
        ckpt = peer.repo("acme/tiny-llama")
        files = [small_file("config.json", b'{"hidden_size": 64}'), small_file("model.safetensors", b"\x01" * 4096)]
        c = ckpt.commit([*files, small_file("tokenizer.json", b"{}"), small_file("README.md", b"x")])
        ckpt.tag("v2", c)
        yield peer, sha, c


def client(peer: HubPeer, tmp_path) -> HubClient:
    return HubClient(peer.url, "hf_token_x", tmp_path / "models", tmp_path / "quarantine")


def test_listing_follows_pages_and_reports_lfs_sha(hub, tmp_path):
    peer, sha, _ = hub
    c = client(peer, tmp_path)
    files = c.files("acme/m-GGUF", sha)
    assert sorted(files) == ["README.md", "m.Q4_K_M.gguf", "m.Q8_0.gguf", "sub/notes.txt"]  # 5 entries, 3 pages
    assert files["m.Q4_K_M.gguf"].sha256 == peer.repos["acme/m-GGUF"].commits[sha]["m.Q4_K_M.gguf"].sha256
    assert files["README.md"].sha256 is None
    assert c.pin("acme/m-GGUF", "v1").commit == sha and c.pin("acme/m-GGUF", sha).kind == "commit"
    with pytest.raises(RepositoryNotFoundError):
        c.pin("acme/none", "v1")
    with pytest.raises(domain.BadReference, match="no such commit"):
        c.pin("acme/m-GGUF", "v9")
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=peer.url).model_info("acme/m-GGUF", revision="v9")
    assert "hf_token_x" not in repr(c)


def test_resume_from_a_partial_file_fetches_only_the_rest(hub, tmp_path):
    peer, sha, _ = hub
    c = client(peer, tmp_path)
    f = c.files("acme/m-GGUF", sha)["m.Q4_K_M.gguf"]
    blob = peer.repos["acme/m-GGUF"].commits[sha]["m.Q4_K_M.gguf"]
    dest = c.target("acme/m-GGUF", sha, f.path)
    dest.parent.mkdir(parents=True)
    head = b"".join(bytes(p) for p in blob.chunks(0, 5 * MIB))
    dest.with_name(dest.name + ".partial").write_bytes(head)
    seen = []
    got = c.download("acme/m-GGUF", sha, f, lambda n, total: seen.append((n, total)))
    assert got.sha256 == f.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert got.fetched_bytes == 7 * MIB and peer.served[f.sha256] == 7 * MIB
    assert [r for m, p, r in peer.requests if "/blobs/" in p and m == "GET"] == [f"bytes={5 * MIB}-"]
    assert seen[-1] == (12 * MIB, 12 * MIB) and seen == sorted(seen)
    again = c.download("acme/m-GGUF", sha, f)  # already there: verified from disk, nothing fetched
    assert again.fetched_bytes == 0 and peer.served[f.sha256] == 7 * MIB


def test_a_cut_body_is_resumed_within_the_call(hub, tmp_path):
    peer, sha, _ = hub
    peer.cut_after = 3 * MIB
    c = client(peer, tmp_path)
    f = c.files("acme/m-GGUF", sha)["m.Q4_K_M.gguf"]

    def uncut(n: int, total: int | None) -> None:
        if n >= 3 * MIB:
            peer.cut_after = None

    got = c.download("acme/m-GGUF", sha, f, uncut)
    assert got.sha256 == f.sha256
    ranges = [r for m, p, r in peer.requests if "/blobs/" in p and m == "GET"]
    assert ranges[0] is None and ranges[1] == f"bytes={3 * MIB}-"


def test_server_errors_and_corruption(hub, tmp_path):
    peer, sha, _ = hub
    c = client(peer, tmp_path)
    f = c.files("acme/m-GGUF", sha)["m.Q8_0.gguf"]
    peer.error_status = 503
    with pytest.raises(Exception, match=r"503|bad day"):
        c.download("acme/m-GGUF", sha, f)
    peer.error_status = None
    peer.corrupt = True
    with pytest.raises(VerificationFailed) as err:
        c.download("acme/m-GGUF", sha, f)
    assert err.value.quarantined.exists() and not c.target("acme/m-GGUF", sha, f.path).exists()


def test_pinned_safetensors_checkpoint_fetched_and_verified(hub, tmp_path):
    peer, _, commit = hub
    c = client(peer, tmp_path)
    pinned = c.pin("acme/tiny-llama", "v2")
    folder, got = c.fetch_checkpoint(pinned)
    assert sorted(p.path.name for p in got) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert folder == tmp_path / "models" / "acme/tiny-llama" / commit
    weights = next(g for g in got if g.path.name == "model.safetensors")
    assert weights.sha256 == hashlib.sha256(b"\x01" * 4096).hexdigest()
    with pytest.raises(domain.BadReference, match=r"no \.safetensors"):
        c.fetch_checkpoint(c.pin("acme/m-GGUF", "v1"))
    with pytest.raises(domain.BadReference, match="is a branch"):
        c.pin("acme/tiny-llama", "main")


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=0-999999999", 0, MIB), ("bytes=1000-", 1000, MIB), ("bytes=-100", MIB - 100, MIB)],
)
def test_peer_ranges_follow_rfc_9110(hub, header, first, last):
    """An end past the file is clamped and a suffix range is the last N bytes, as a real CDN answers."""
    import httpx

    peer, sha, _ = hub
    blob = peer.repos["acme/m-GGUF"].commits[sha]["m.Q8_0.gguf"]
    r = httpx.get(f"{peer.url}/acme/m-GGUF/resolve/{sha}/m.Q8_0.gguf", headers={"Range": header}, follow_redirects=True)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {first}-{last - 1}/{MIB}"
    assert len(r.content) == int(r.headers["Content-Length"]) == last - first
    assert r.content == b"".join(bytes(c) for c in blob.chunks(first, last))
