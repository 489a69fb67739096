"""Benchmark: a 1 GiB GGUF fetched and verified (sha256 in the same pass) by the provisioner's hub client, next to
`curl` fetching the same file from the same loopback hub server in the same run, two ways:

- `curl -o FILE` (fetch and write only): `ratio`;
- `curl | tee FILE | sha256sum` (fetch, write and verify: the same work as the provisioner): `ratio_same_work`,
  the provisioner's throughput over that pipeline's. Goal: `ratio_same_work` >= 0.9.

The hub is the project's peer (`tests/peers/hub_server.py`) in its own process; the file is generated as it is
served (never stored). Prints one JSON object as its last line: mib_s, baseline_mib_s (curl), ratio,
same_work_mib_s (curl | tee | sha256sum), ratio_same_work.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.provisioner.hub import HubClient
from services.runtime.egress import EgressPolicy

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def curl(url: str, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - t0
    out.unlink()
    return elapsed


def curl_tee_sha256(url: str, out: Path) -> tuple[float, str]:
    """Fetch, write and hash in one pass, as the provisioner does: `curl | tee FILE | sha256sum`."""
    script = 'set -o pipefail; curl -sSfL "$1" | tee "$2" | sha256sum'
    t0 = time.perf_counter()
    r = subprocess.run(["bash", "-c", script, "bench", url, str(out)], check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    out.unlink()
    return elapsed, r.stdout.split()[0]


def ours(hub: HubClient, repo: str, commit: str) -> tuple[float, str]:
    files = hub.files(repo, commit)
    f = files["model.Q4_K_M.gguf"]
    shutil.rmtree(hub.models_dir, ignore_errors=True)
    t0 = time.perf_counter()
    got = hub.download(repo, commit, f)
    elapsed = time.perf_counter() - t0
    if got.sha256 != f.sha256:
        raise RuntimeError(f"verification failed: {got.sha256} != {f.sha256}")
    got.path.unlink()
    return elapsed, got.sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-download-"))
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.hub_server", "--size-mib", str(args.size_mib)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        # The hub peer and its "CDN" are on loopback, which the egress policy refuses unless allowlisted.
        egress = EgressPolicy(allow=["127.0.0.0/8"])
        hub = HubClient(info["url"], None, tmp / "models", tmp / "quarantine", egress=egress)
        blob = f"{info['url']}/{info['repo']}/resolve/{info['commit']}/model.Q4_K_M.gguf"
        size = args.size_mib * MIB
        curl_s, same_s, ours_s = [], [], []
        for _ in range(args.rounds):  # interleaved, so all three see the same machine state
            curl_s.append(curl(blob, tmp / "curl.out"))
            elapsed, piped_sha = curl_tee_sha256(blob, tmp / "tee.out")
            same_s.append(elapsed)
            elapsed, sha = ours(hub, info["repo"], info["commit"])
            ours_s.append(elapsed)
            if piped_sha != sha:
                raise RuntimeError(f"the baseline hashed {piped_sha}, the provisioner {sha}")
        best_curl, best_same, best_ours = min(curl_s), min(same_s), min(ours_s)
        mib_s, base, same = size / MIB / best_ours, size / MIB / best_curl, size / MIB / best_same
        print(json.dumps({
            "bench": "download", "size_mib": args.size_mib, "rounds": args.rounds, "sha256": sha,
            "mib_s": round(mib_s, 1), "baseline_mib_s": round(base, 1), "ratio": round(mib_s / base, 3),
            "seconds": [round(s, 3) for s in ours_s], "baseline_seconds": [round(s, 3) for s in curl_s],
            "baseline": "curl -o <file> of the same URL (redirect to the CDN origin followed), no hashing",
            "same_work_mib_s": round(same, 1), "ratio_same_work": round(mib_s / same, 3),
            "same_work_seconds": [round(s, 3) for s in same_s],
            "same_work_baseline": "curl -sSfL <url> | tee <file> | sha256sum (fetch, write, verify)",
            "goal": "ratio_same_work >= 0.9", "goal_met": mib_s / same >= 0.9,
        }))  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
