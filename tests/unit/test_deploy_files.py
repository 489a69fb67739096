"""docker-compose.yml, deploy/Dockerfile and deploy/k8s/ name every service and only settings the code reads.

No Docker engine or cluster runs here, so these tests parse the files and hold them to the code: the
services of `contracts.health.SERVICES` plus the gateway, their module paths, and the environment names
their settings classes read (a typo in an env name would otherwise fail silently at deploy time).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import tomllib
import typing
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from contracts.health import SERVICES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = (*SERVICES, "gateway")
#: Read straight from the environment rather than through a settings class.
PROCESS_ENV = {"MODELFLEET_LOG_LEVEL", "MODELFLEET_HEALTHCHECK_TIMEOUT_S"}
#: Scale horizontally (DESIGN §8): more than one replica in k8s.
SCALABLE = ("gateway", "router", "catalog", "provisioner")


def module_of(service: str) -> str:
    return f"services.{service.replace('-', '_')}"


def uses_database(service: str) -> bool:
    return (ROOT / "services" / service.replace("-", "_") / "migrations").is_dir()


@cache
def env_names_read_by(service: str) -> frozenset[str]:
    """Every environment variable the service's settings class reads, derived from the class itself."""
    app = importlib.import_module(f"{module_of(service)}.app")
    settings_cls = typing.get_type_hints(app.build_app)["settings"]
    prefix = settings_cls.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, info in settings_cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str) and c.isupper()}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return frozenset(names | PROCESS_ENV)


def check_env(service: str, env: dict[str, str]) -> None:
    """The variables every deployment of `service` must set, and no MODELFLEET_* name the code ignores."""
    unknown = sorted(n for n in env if n.startswith("MODELFLEET_") and n not in env_names_read_by(service))
    assert not unknown, f"{service} sets {unknown}, which its settings do not read"
    for required in ("MODELFLEET_NATS_URL", "MODELFLEET_STATE_DIR"):  # the admin token: test_deploy_tokens.py
        assert required in env, f"{service} does not set {required}"
    assert ("MODELFLEET_DATABASE_URL" in env) == uses_database(service), (
        f"{service}: MODELFLEET_DATABASE_URL must be set exactly when the service has migrations"
    )
    assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "http/protobuf"


# --- docker compose ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


#: Compose services that are further replicas of a service (their own host id and volume: deploy/README.md).
COMPOSE_REPLICAS = {"provisioner-2": "provisioner"}


def test_compose_runs_every_service_plus_nats_postgres_and_ollama(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*APP_SERVICES, *COMPOSE_REPLICAS, "nats", "postgres", "ollama"}


@pytest.mark.parametrize("replica", COMPOSE_REPLICAS)
def test_compose_replica_runs_its_service_like_the_first(compose: dict[str, Any], replica: str) -> None:
    service = COMPOSE_REPLICAS[replica]
    spec, first = compose["services"][replica], compose["services"][service]
    assert spec["command"] == first["command"] and spec["build"] == first["build"]
    assert spec["depends_on"] == first["depends_on"] and spec["healthcheck"] == first["healthcheck"]
    check_env(service, spec["environment"])
    assert set(spec["environment"]) == set(first["environment"])


def test_compose_nats_has_jetstream_and_a_healthcheck(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    assert "--jetstream" in nats["command"] or "-js" in nats["command"]
    assert "--store_dir" in nats["command"] and nats["volumes"]
    assert nats["healthcheck"]["test"] and compose["services"]["postgres"]["healthcheck"]["test"]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_service_runs_its_module(compose: dict[str, Any], service: str) -> None:
    spec = compose["services"][service]
    assert spec["command"] == ["python", "-m", module_of(service)]
    assert importlib.util.find_spec(f"{module_of(service)}.__main__") is not None
    assert spec["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_service_env_is_what_the_code_reads(compose: dict[str, Any], service: str) -> None:
    env = compose["services"][service]["environment"]
    check_env(service, env)
    assert urlsplit(env["MODELFLEET_NATS_URL"]).hostname == "nats"
    if uses_database(service):
        url = urlsplit(env["MODELFLEET_DATABASE_URL"])
        assert url.scheme == "postgresql+asyncpg" and url.hostname == "postgres"
        assert url.path == f"/{compose['services']['postgres']['environment']['POSTGRES_DB']}"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_service_waits_for_its_servers_and_has_a_healthcheck(compose: dict[str, Any], service: str) -> None:
    spec = compose["services"][service]
    needs = {"nats", "postgres"} if uses_database(service) else {"nats"}
    if service == "hardware-probe":
        needs.add("ollama")  # the Ollama it reports to the fleet
    assert set(spec["depends_on"]) == needs
    assert all(cond["condition"] == "service_healthy" for cond in spec["depends_on"].values())
    assert spec["healthcheck"]["test"] == ["CMD", "python", "deploy/healthcheck.py", service]


def test_compose_gateway_listens_on_all_interfaces_inside_its_container(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["environment"]["MODELFLEET_GATEWAY_BIND"] == "0.0.0.0"
    port = gateway["environment"]["MODELFLEET_GATEWAY_PORT"]
    assert any(str(p).endswith(f":{port}") for p in gateway["ports"])


def test_compose_probe_names_its_host(compose: dict[str, Any]) -> None:
    assert "MODELFLEET_HOST_ID" in compose["services"]["hardware-probe"]["environment"]


def test_compose_only_the_fallback_image_installs_torch(compose: dict[str, Any]) -> None:
    extras_default = re.search(r"^ARG EXTRAS=(\S+)$", (ROOT / "deploy/Dockerfile").read_text(), re.M)
    assert extras_default is not None
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for service in APP_SERVICES:
        extras = compose["services"][service]["build"].get("args", {}).get("EXTRAS", extras_default.group(1))
        assert set(extras.split(",")) <= set(declared), f"{service}: unknown extra in {extras}"
        wants_torch = any(dep.startswith("torch") for extra in extras.split(",") for dep in declared[extra])
        assert wants_torch == (service == "inference-fallback"), f"{service} image extras {extras}"


def test_compose_gpu_overlay_names_known_services(compose: dict[str, Any]) -> None:
    overlay = yaml.safe_load((ROOT / "deploy/compose.gpu.yml").read_text())
    assert set(overlay["services"]) <= set(compose["services"])
    assert "hardware-probe" in overlay["services"]


def test_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[1-9]", text, re.M)
    assert 'pip wheel --wheel-dir /wheels ".[${EXTRAS}]"' in text  # the stages: tests/unit/test_compose_schema.py
    assert "COPY deploy/healthcheck.py" in text and "WORKDIR /app" in text
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    for needed in ("pyproject.toml", "contracts", "services"):
        assert needed in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# --- kubernetes -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in (ROOT / "deploy/k8s").glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk, "kustomization.yaml must list every manifest"
    docs: list[dict[str, Any]] = []
    for name in listed:
        docs += [d for d in yaml.safe_load_all((ROOT / "deploy/k8s" / name).read_text()) if d]
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} named {name}, found {len(matches)}"
    return matches[0]


def container_env(docs: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """Every variable the container sees, resolving envFrom and secret/config references against the docs."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= find(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            secret = find(docs, "Secret", ref["secretKeyRef"]["name"])
            env[item["name"]] = secret["stringData"][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[item["name"]] = find(docs, "ConfigMap", ref["configMapKeyRef"]["name"])["data"][
                ref["configMapKeyRef"]["key"]
            ]
        else:
            assert "fieldRef" in ref, f"unsupported env source in {pod['metadata']['name']}: {item}"
            env[item["name"]] = f"<{ref['fieldRef']['fieldPath']}>"
    return env


#: The workload kind of each service that is not a Deployment: the probe runs on every GPU node, each provisioner
#: replica keeps its own host id and download claim, and so does each fallback pod (with a provisioner beside it).
KINDS = {"hardware-probe": "DaemonSet", "provisioner": "StatefulSet", "inference-fallback": "StatefulSet"}
#: Containers that run beside a workload's own: each fallback pod's provisioner (deploy/k8s/inference-fallback.yaml).
SIDECARS = {"inference-fallback": ["provisioner"]}


def workload(docs: list[dict[str, Any]], service: str) -> dict[str, Any]:
    return find(docs, KINDS.get(service, "Deployment"), service)


def test_k8s_everything_lives_in_the_modelfleet_namespace(k8s: list[dict[str, Any]]) -> None:
    for doc in k8s:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "modelfleet", doc["metadata"]["name"]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_k8s_workload_runs_its_module_with_the_env_the_code_reads(k8s: list[dict[str, Any]], service: str) -> None:
    spec = workload(k8s, service)["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    containers = spec["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == [service, *SIDECARS.get(service, [])]
    for container in containers:
        runs = container["name"]
        assert container["command"] == ["python", "-m", module_of(runs)]
        env = container_env(k8s, spec["template"], container)
        check_env(runs, env)
        assert urlsplit(env["MODELFLEET_NATS_URL"]).hostname.split(".")[0] == "nats"
        find(k8s, "Service", "nats")
        if uses_database(runs):
            assert urlsplit(env["MODELFLEET_DATABASE_URL"]).hostname.split(".")[0] == "postgres"
            find(k8s, "Service", "postgres")
        probe = container["readinessProbe"]
        if runs == "gateway":
            assert probe["httpGet"]["path"] == "/healthz"
        else:
            assert probe["exec"]["command"] == ["python", "deploy/healthcheck.py", runs]


@pytest.mark.parametrize("service", SCALABLE)
def test_k8s_scalable_services_run_several_replicas(k8s: list[dict[str, Any]], service: str) -> None:
    assert workload(k8s, service)["spec"]["replicas"] >= 2


def test_k8s_admin_token_hf_token_and_database_url_come_from_secrets(k8s: list[dict[str, Any]]) -> None:
    config = find(k8s, "ConfigMap", "modelfleet-config")["data"]
    assert not {"MODELFLEET_ADMIN_TOKEN", "MODELFLEET_DATABASE_URL", "HF_TOKEN"} & set(config)
    assert "MODELFLEET_ADMIN_TOKEN" in find(k8s, "Secret", "modelfleet-admin-token")["stringData"]
    assert "HF_TOKEN" in find(k8s, "Secret", "modelfleet-hf-token")["stringData"]
    assert "MODELFLEET_DATABASE_URL" in find(k8s, "Secret", "modelfleet-database")["stringData"]


def test_k8s_probe_is_a_daemonset_with_a_stable_host_id(k8s: list[dict[str, Any]]) -> None:
    pod = find(k8s, "DaemonSet", "hardware-probe")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert "host-id" in " ".join(init["command"])
    assert any(e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" for e in init["env"])
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state["hostPath"]["path"] == "/var/lib/modelfleet"


def test_k8s_gateway_service_targets_the_gateway_port(k8s: list[dict[str, Any]]) -> None:
    service = find(k8s, "Service", "gateway")
    (container,) = find(k8s, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "gateway"}
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
