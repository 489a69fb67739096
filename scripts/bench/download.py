"""Benchmark: a 1 GiB GGUF fetched and verified (sha256 in the same pass) by the provisioner's hub client, next to
`curl` fetching the same file from the same loopback hub server in the same run.

The hub is the project's peer (`tests/peers/hub_server.py`) in its own process; the file is generated as it is
served (never stored). Prints one JSON object as its last line: mib_s, baseline_mib_s (curl), ratio.
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

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def curl(url: str, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - t0
    out.unlink()
    return elapsed


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
        hub = HubClient(info["url"], None, tmp / "models", tmp / "quarantine")
        blob = f"{info['url']}/{info['repo']}/resolve/{info['commit']}/model.Q4_K_M.gguf"
        size = args.size_mib * MIB
        curl_s, ours_s = [], []
        for _ in range(args.rounds):  # interleaved, so both see the same machine state
            curl_s.append(curl(blob, tmp / "curl.out"))
            elapsed, sha = ours(hub, info["repo"], info["commit"])
            ours_s.append(elapsed)
        best_curl, best_ours = min(curl_s), min(ours_s)
        mib_s, base = size / MIB / best_ours, size / MIB / best_curl
        print(json.dumps({
            "bench": "download", "size_mib": args.size_mib, "rounds": args.rounds, "sha256": sha,
            "mib_s": round(mib_s, 1), "baseline_mib_s": round(base, 1), "ratio": round(mib_s / base, 3),
            "seconds": [round(s, 3) for s in ours_s], "baseline_seconds": [round(s, 3) for s in curl_s],
            "baseline": "curl -o <file> of the same URL (redirect to the CDN origin followed), no hashing",
            "goal": "ratio >= 0.9", "goal_met": mib_s / base >= 0.9,
        }))  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
