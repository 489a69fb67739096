"""Only the gateway receives the admin token, in docker compose and in Kubernetes.

The files are parsed (YAML anchors and merge keys resolved); a container receives the token when it names it
in its environment, reads it from a Secret key, or imports a whole Secret or ConfigMap that holds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "MODELFLEET_ADMIN_TOKEN"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")


def compose_receivers(path: Path) -> set[str]:
    document = yaml.safe_load(path.read_text())
    receivers = set()
    for name, service in (document.get("services") or {}).items():
        env = (service or {}).get("environment") or {}
        names = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
        if TOKEN in names:
            receivers.add(name)
        for env_file in (service or {}).get("env_file") or []:
            entry = env_file if isinstance(env_file, str) else env_file["path"]
            receivers.add(f"{name} (env_file {entry}: cannot be checked)")
    return receivers


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def holders(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(kind, name) of each Secret/ConfigMap -> its keys."""
    found: dict[tuple[str, str], set[str]] = {}
    for d in docs:
        if d.get("kind") in ("Secret", "ConfigMap"):
            keys = {*(d.get("data") or {}), *(d.get("stringData") or {})}
            found[(d["kind"], d["metadata"]["name"])] = keys
    return found


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec") or {}
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec if doc["kind"] == "Pod" else spec["template"]["spec"]
    return [*(pod.get("initContainers") or []), *pod["containers"]]


def k8s_receivers(docs: list[dict[str, Any]]) -> set[str]:
    keys = holders(docs)
    receivers = set()
    for d in docs:
        if d.get("kind") not in WORKLOADS:
            continue
        for c in containers(d):
            who = f"{d['metadata']['name']}/{c['name']}"
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef") or (e.get("valueFrom") or {}).get(
                    "configMapKeyRef"
                )
                if e["name"] == TOKEN or (ref and ref.get("key") == TOKEN):
                    receivers.add(who)
            for src in c.get("envFrom") or []:
                for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if field in src and TOKEN in keys.get((kind, src[field]["name"]), set()):
                        receivers.add(who)
    return receivers


def test_compose_gives_the_admin_token_to_the_gateway_only() -> None:
    assert compose_receivers(ROOT / "docker-compose.yml") == {"gateway"}
    assert compose_receivers(ROOT / "deploy" / "compose.gpu.yml") <= {"gateway"}
    assert compose_receivers(ROOT / "observability" / "compose.yml") == set()  # included by docker-compose.yml


def test_kubernetes_gives_the_admin_token_to_the_gateway_only() -> None:
    docs = k8s_documents()
    assert k8s_receivers(docs) == {"gateway/gateway"}
    # The token lives in the Secret, never in the ConfigMap that every pod imports.
    keys = holders(docs)
    assert TOKEN in keys[("Secret", "modelfleet-admin-token")]
    assert all(TOKEN not in v for (kind, _), v in keys.items() if kind == "ConfigMap")


def test_the_check_sees_a_token_given_by_anchor_or_by_a_whole_secret(tmp_path: Path) -> None:
    """The parser would notice the two ways a token can slip in: a shared env anchor, a whole-Secret import."""
    compose = tmp_path / "compose.yml"
    compose.write_text(
        "x-env: &env\n  MODELFLEET_ADMIN_TOKEN: x\nservices:\n"
        "  router:\n    environment:\n      <<: *env\n  gateway:\n    environment: [MODELFLEET_ADMIN_TOKEN=x]\n"
    )
    assert compose_receivers(compose) == {"router", "gateway"}
    docs = [
        {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {TOKEN: "x"}},
        {
            "kind": "Deployment",
            "metadata": {"name": "router"},
            "spec": {
                "template": {"spec": {"containers": [{"name": "router", "envFrom": [{"secretRef": {"name": "s"}}]}]}}
            },
        },
    ]
    assert k8s_receivers(docs) == {"router/router"}
