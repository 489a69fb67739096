"""Property-based fuzzing of the gateway's OpenAPI document with schemathesis: every operation, every check.

A real fleet (catalog, router, provisioner and gateway as processes on real NATS and PostgreSQL, the project's hub and
Ollama peers behind the provisioner) answers schemathesis' generated requests, valid and invalid, with the admin
token, over every operation of `docs/api/openapi.json` (the committed document, which `scripts.gen_openapi --check`
holds equal to the live one). Any 5xx, undocumented status, body outside its documented schema, undocumented content
type, valid request rejected or invalid request accepted fails the test, with schemathesis' own report of each.

Budget: the examples and coverage phases (the boundary values of every parameter: empty strings, the extremes of
every number, wrong types, missing fields) plus `EXAMPLES` generated cases per operation in the fuzzing phase,
deterministic generation, no shrinking, one worker (the order of the requests, and so the fleet's state each meets,
is the same on every run). The whole test: 45 s on the 2-core development machine when it is quiet, up to 2 minutes
under a load of 10. The stateful phase (calls chained by the document's links, services/gateway/links.py) is its own
test below, over the operations that have links (profiles and tokens): there 60 examples take 15 of the 18 links in
about 5 s; over all 42 operations the same budget took 6 of 33 links (18 of them inferred by schemathesis) in 7 s.

Then, from the same document, every string query parameter and top-level body field is sent empty and every bounded
number past its bound: each must be a 422 naming that parameter or field. The same for every field nested in a JSON
body (objects inside it, items of its arrays, values of its maps: `settings.num_ctx`, `shape.layer_bytes.0`,
`hosts.0`), each sent in an otherwise valid body where one is known here: a 422 naming the field's whole path
(`body.shape.layer_bytes.0`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.cli import ADMIN_TOKEN
from tests.harness.provision_bus import MIB, provisioner_env
from tests.harness.waiting import eventually
from tests.peers.hub_server import HubPeer, generated_file
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e

SPEC = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"
#: Generated cases per operation in the fuzzing phase (the coverage phase adds the boundary cases of every parameter).
EXAMPLES = 10
#: The fuzzer's requests flood the provisioner with commands (a `wait: false` provision answers at once, its work
#: queues behind the provisioner's job limit): a `wait: true` request queued behind them answers 202 with where to
#: follow it after this long (`MODELFLEET_GATEWAY_WAIT_MAX_S`), not minutes later.
WAIT_MAX_S = 5
#: The whole schemathesis run is bounded (the test's own pytest timeout is above it).
RUN_TIMEOUT_S = 420.0
#: The only answers allowed beyond what each check asks, per operation, each a documented answer that depends on the
#: fleet's state or on content no JSON Schema can state, never on the request's shape:
#: - 503 from /api/v1/health: this fleet runs no probe and no fallback, so the report is `degraded` (documented 503
#:   with the FleetHealth body); 503 `no_backend` from the routes that need a backend (no model of the default roles
#:   is installed anywhere in this fleet, and the router says so, naming the role).
#: - 502 `upstream_failed` from the hub listing: the hub peer has no such repository or revision.
#: - 422 for a schema-valid request refused by its content (`positive_data_acceptance`): a profile type or model
#:   reference by the catalog's grammar (model references: docs/model-references.md, more than a pattern can say), a
#:   fit shape's per-layer lists of another length than its `block_count`,
#:   a manifest's content or a library patch's values (validated as an import validates them), an expiry in the
#:   past (depends on the clock), profile ids that must exist, and "exactly one of" between optional fields
#:   (/api/v1/fit, /api/v1/route, /api/v1/catalog/resolve, the /v1/ model name resolved by the catalog).
#: - max_response_time is set to the request timeout (see `_schemathesis`).
CONFIG = """
[[operations]]
include-path = "/api/v1/health"
checks.not_a_server_error.expected-statuses = ["2XX", "3XX", "4XX", "503"]

[[operations]]
include-path = "/api/v1/hf/quantizations"
checks.not_a_server_error.expected-statuses = ["2XX", "3XX", "4XX", "502"]

[[operations]]
include-path = ["/api/v1/route", "/v1/chat/completions", "/v1/embeddings"]
checks.not_a_server_error.expected-statuses = ["2XX", "3XX", "4XX", "503"]
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", "401", "403", "404", "409", "422", "503"]

[[operations]]
include-path = ["/api/v1/profiles", "/api/v1/profiles/{profile_id}", "/api/v1/users/{user_id}/profile-config",
                "/api/v1/users/{user_id}/tokens", "/api/v1/catalog/import", "/api/v1/models/default", "/api/v1/fit",
                "/api/v1/catalog/resolve"]
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", "401", "403", "404", "409", "422"]

[[operations]]
include-name = "PATCH /api/v1/catalog/models/{model}"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", "401", "403", "404", "409", "422"]
"""


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    methods = {"get", "post", "put", "patch", "delete"}
    return [(m.upper(), path, op) for path, ops in spec["paths"].items() for m, op in ops.items() if m in methods]


async def _schemathesis(
    url: str,
    work: Path,
    phases: str = "examples,coverage,fuzzing",
    examples: int = EXAMPLES,
    extra: tuple[str, ...] = (),
) -> tuple[int, str]:
    exe = Path(sys.executable).parent / "schemathesis"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "schemathesis.toml"
    config.write_text(CONFIG)
    args = [
        str(exe), "--config-file", str(config), "run", str(SPEC), "--url", url,
        "--checks", "all", "--mode", "all", "--phases", phases,
        "--max-examples", str(examples), "--generation-deterministic", "--no-shrink",
        "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
        # `--checks all` includes max_response_time, 10 s unless told: a wall-clock assertion, which this suite does
        # not make (the machine's load decides it). Set to the request timeout, it only catches what that catches.
        "--request-timeout", "60", "--max-response-time", "60", "--workers", "1", "--no-color", *extra,
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=work
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"schemathesis did not finish in {RUN_TIMEOUT_S}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


#: OpenAI's error body names one field (`param`, the first at fault): the /v1/ bodies carry their required fields.
BODY_BASE: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "coding", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/embeddings": {"model": "embedding", "input": "hi"},
}
#: A valid body around each nested field sent bad, so that field is the only one at fault (`field` names it).
NESTED_BASE: dict[str, dict[str, Any]] = {
    **BODY_BASE,
    "/api/v1/fit": {
        "model": "tiny",
        "shape": {
            "architecture": "llama", "block_count": 2, "embedding_length": 64, "head_count": 4,
            "head_count_kv": [4, 4], "key_length": 16, "value_length": 16, "vocab_size": 100,
            "layer_bytes": [1000, 1000], "weights_bytes": 3000, "tensor_types": {"q4_k": 4},
        },
        "settings": {},
    },
}  # fmt: skip


def _bad_values(schema: dict[str, Any]) -> list[object]:
    """An empty string where a non-empty one is asked, numbers just past each bound."""
    bad: list[object] = []
    for s in [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]:
        if s.get("type") == "string" and s.get("minLength", 0) >= 1:
            bad.append("")
        if s.get("type") in ("integer", "number"):
            if "maximum" in s:
                bad.append(int(s["maximum"]) * 10 + 1)
            if "minimum" in s:
                bad.append(int(s["minimum"]) - 1)
            if "exclusiveMinimum" in s:
                bad.append(s["exclusiveMinimum"])
    return bad


def _fields(spec: dict[str, Any], op: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, name, schema) of every query parameter and every top-level field of a JSON body."""
    out = [("query", p["name"], p.get("schema", {})) for p in op.get("parameters", []) if p["in"] == "query"]
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    while "$ref" in body:
        body = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    out += [("body", name, schema) for name, schema in body.get("properties", {}).items()]
    return out


def _url(path: str) -> str:
    """The path with every parameter filled: `x`, or a well-formed id nobody has where the route takes a UUID."""
    url = re.sub(r"\{[^}]+\}", "x", path)
    if "{profile_id}" in path or "{request_id}" in path or "{token_id}" in path:
        url = re.sub(r"/x(?=/|$)", "/00000000-0000-0000-0000-000000000001", url)
    return url


def _deref(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _nested(
    spec: dict[str, Any], schema: dict[str, Any], path: tuple[str, ...], seen: frozenset[str] = frozenset()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path, schema) of every scalar under `schema` below the top level of a body: the fields of objects inside it
    (`settings.num_ctx`), the items of its arrays (`hosts.0`, `messages.0.content`) and the values of its maps
    (`shape.tensor_types.k`), through `$ref` and `anyOf` (a recursive schema is followed once)."""
    for alt in schema.get("anyOf", schema.get("oneOf", [schema])):
        ref = alt.get("$ref", "")
        if ref in seen:
            continue
        alt = _deref(spec, alt)
        inner = seen | {ref} if ref else seen
        if alt.get("type") == "object" or "properties" in alt:
            for name, sub in alt.get("properties", {}).items():
                yield from _nested(spec, sub, (*path, name), inner)
            if isinstance(alt.get("additionalProperties"), dict) and alt["additionalProperties"]:
                yield from _nested(spec, alt["additionalProperties"], (*path, "k"), inner)
        elif alt.get("type") == "array" and isinstance(alt.get("items"), dict):
            yield from _nested(spec, alt["items"], (*path, "0"), inner)
        elif len(path) > 1:
            yield path, alt


def _placed(base: Any, path: tuple[str, ...], value: object) -> Any:
    """`base` (a JSON value) with `value` at `path`: objects and one-item lists made where the base has none."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if key == "0":
        items = list(base) if isinstance(base, list) and base else [None]
        return [_placed(items[0], rest, value), *items[1:]]
    out = dict(base) if isinstance(base, dict) else {}
    out[key] = _placed(out.get(key), rest, value)
    return out


async def _nested_empty_and_extreme(client: httpx.AsyncClient, spec: dict[str, Any]) -> tuple[list[str], int]:
    """Every string inside a JSON body's objects, arrays and maps that must not be empty sent empty, every bounded
    number there past its bound, in an otherwise valid body where the module knows one: a 422 naming the field's whole
    path (`body.settings.num_ctx`, `body.hosts.0`; OpenAI's `param` under /v1/), or a problem listed. Also the number
    of requests sent (the check must have found something to send)."""
    problems: list[str] = []
    sent = 0
    for method, path, op in operations(spec):
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if body is None:
            continue
        url = _url(path)
        for where, schema in _nested(spec, body, ()):
            for value in _bad_values(schema):
                payload = _placed(NESTED_BASE.get(path, {}), where, value)
                r = await client.request(method, url, json=payload)
                sent += 1
                answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                named = {answer.get("field"), (answer.get("error") or {}).get("param")}
                named |= {".".join(map(str, e.get("loc", []))) for e in answer.get("detail", []) if isinstance(e, dict)}
                dotted = ".".join(where)
                if r.status_code != 422 or not named & {f"body.{dotted}", dotted}:
                    problems.append(f"{method} {url} body.{dotted}={value!r}: {r.status_code} {r.text[:300]}")
    return problems, sent


async def _empty_and_extreme(client: httpx.AsyncClient, spec: dict[str, Any]) -> list[str]:
    """Every string query parameter and body field sent empty, every bounded number past its bound: a 422 naming it
    (the control plane's `field` or `detail[].loc`, OpenAI's `param` under /v1/), or a problem listed."""
    problems: list[str] = []
    for method, path, op in operations(spec):
        url = _url(path)
        for where, name, schema in _fields(spec, op):
            for value in _bad_values(schema):
                params = {name: str(value)} if where == "query" else None
                payload = (
                    ({**BODY_BASE.get(path, {}), name: value} if where == "body" else {}) if method != "GET" else None
                )
                r = await client.request(method, url, params=params, json=payload)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                named = {body.get("field"), (body.get("error") or {}).get("param")}
                named |= {".".join(map(str, e.get("loc", []))) for e in body.get("detail", []) if isinstance(e, dict)}
                if r.status_code != 422 or not named & {f"{where}.{name}", name}:
                    problems.append(f"{method} {url} {where}.{name}={value!r}: {r.status_code} {r.text[:300]}")
    return problems


async def wait_done(client: httpx.AsyncClient, result_url: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        r = await client.get(result_url)
        return r.json() if r.status_code == 200 and r.json()["done"] else None

    return await eventually(done, timeout_s=60, what=f"{result_url} done")


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
async def test_every_operation_passes_every_check(service_env, database_url, tmp_path, start_service, start_gateway):
    spec = json.loads(SPEC.read_text())
    with OllamaPeer(library=[library_model("qwen3:8b", MIB)]) as ollama, HubPeer() as hub:
        hub.repo("acme/tiny-GGUF").commit([generated_file("tiny.Q4_K_M.gguf", MIB, seed=3)])
        await start_service("catalog", service_env(database_url=database_url))
        await start_service("router", service_env())
        await start_service(
            "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
        )
        url = await start_gateway(
            service_env(
                MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN,
                MODELFLEET_GATEWAY_PROVISION_WAIT_S="2",
                MODELFLEET_GATEWAY_WAIT_MAX_S=str(WAIT_MAX_S),
            )
        )
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            # A waiting import for a host nobody knows answers at once, naming the host (it once hung to its timeout:
            # a host id long enough made the command's progress event invalid and the command was dead-lettered).
            for host in ("nohost", "h" * 253):
                r = await client.post(
                    "/api/v1/models/import",
                    json={"repo": "acme/tiny-GGUF", "quant": "Q4_K_M", "revision": "0" * 40, "host": host,
                          "wait": True, "timeout_s": 60},
                )  # fmt: skip
                assert r.status_code in (200, 202), r.text
                result = r.json()
                if r.status_code == 202:  # the machine was slow past WAIT_MAX_S: the result is stored all the same
                    result = await wait_done(client, result["result_url"])
                (action,) = result["actions"]
                assert action["action"] == "failed" and f"host '{host}' is unknown" in action["reason"], action
            problems = await _empty_and_extreme(client, spec)
            nested_problems, nested_sent = await _nested_empty_and_extreme(client, spec)
        code, output = await _schemathesis(url, tmp_path / "schemathesis")

    print(output)  # the figures (operations, cases, failures) in the test's captured output
    assert not problems, "\n".join(problems)
    assert nested_sent > 0, "no nested body field to check: the walk over the document found none"
    assert not nested_problems, "\n".join(nested_problems)
    tested = re.search(r"Tested: (\d+)", output)
    assert tested is not None, output[-4000:]
    assert int(tested.group(1)) == len(operations(spec)), output[-4000:]
    assert code == 0, output[-20000:]
    cases = re.search(r"(\d+) generated, (\d+) passed\s*$", output, re.M)  # no failure, no error, none skipped
    assert cases is not None and cases.group(1) == cases.group(2), output[-20000:]


#: The operations whose answers link to others (services/gateway/links.py): profiles and tokens.
STATEFUL_PATHS = r"^/api/v1/(profiles|users/[^/]+/tokens)"
#: `--max-examples` of the stateful phase: 81 scenarios (chains of linked calls), about 5 s here.
STATEFUL_SCENARIOS = 60


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
async def test_stateful_phase_follows_the_links(service_env, database_url, tmp_path, start_service, start_gateway):
    """Schemathesis' stateful phase over the operations the document links (a created profile's `id` to its GET, PUT
    and DELETE, an issued token to its user's list and its revocation, a list's first item): no failure of any
    check, `use_after_free` and `ensure_resource_availability` included, and the links lead where they say: a
    profile a POST created is read, updated and deleted at its id, a token a POST issued is revoked at its id."""
    await start_service("catalog", service_env(database_url=database_url))
    url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN))
    har = tmp_path / "stateful.har"
    code, output = await _schemathesis(
        url, tmp_path / "schemathesis", phases="stateful", examples=STATEFUL_SCENARIOS,
        extra=("--include-path-regex", STATEFUL_PATHS, "--report", "har", "--report-har-path", str(har)),
    )  # fmt: skip
    print(output)
    assert code == 0, output[-20000:]
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", output)
    assert links is not None, output[-4000:]

    created: set[str] = set()
    issued: set[str] = set()
    followed: set[tuple[str, str]] = set()
    for entry in json.loads(har.read_text())["log"]["entries"]:
        method, status = entry["request"]["method"], entry["response"]["status"]
        path = httpx.URL(entry["request"]["url"]).path
        if method == "POST" and status == 201:
            answer = json.loads(entry["response"]["content"]["text"])
            created.add(str(answer.get("id")))
            issued.add(str(answer.get("token_id")))
        elif status == 200 and path.rsplit("/", 1)[-1] in created | issued:
            kind = "token" if "/tokens/" in path else "profile"
            followed.add((kind, method))
    assert created - {"None"} and issued - {"None"}, "no profile created or token issued: the links were never followed"
    wanted = {("profile", "GET"), ("profile", "PUT"), ("profile", "DELETE"), ("token", "DELETE")}
    assert followed >= wanted, (followed, output[-4000:])
