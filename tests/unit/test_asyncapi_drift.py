"""The committed AsyncAPI documents (`docs/asyncapi/<service>.json`) must match what FastStream generates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from contracts.health import SERVICES, HealthRequest
from contracts.subjects import fill
from scripts import gen_asyncapi

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return gen_asyncapi.asyncapi_documents()


def test_every_service_has_a_document(documents: dict[str, str]) -> None:
    assert set(documents) == {*SERVICES, "gateway"}


def test_committed_documents_match_the_code(documents: dict[str, str]) -> None:
    drifted = [
        name
        for name, text in documents.items()
        if not (path := gen_asyncapi.ASYNCAPI_DIR / f"{name}.json").is_file()
        or path.read_text(encoding="utf-8") != text
    ]
    assert not drifted, f"docs/asyncapi/ drifted for {drifted}; run `{gen_asyncapi.COMMAND}` and commit it"
    orphans = {p.stem for p in gen_asyncapi.ASYNCAPI_DIR.glob("*.json")} - set(documents)
    assert not orphans, f"docs/asyncapi/ documents unknown services {sorted(orphans)}; delete them"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_documents_its_health_subject(documents: dict[str, str], service: str) -> None:
    document = json.loads(documents[service])
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert fill(HealthRequest.SUBJECT, service=service) in addresses


def test_consumed_contracts_appear_as_payload_schemas(documents: dict[str, str]) -> None:
    provisioner = json.loads(documents["provisioner"])
    assert "ProvisionCommand" in provisioner["components"]["schemas"]


def test_check_mode_fails_on_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "docs" / "asyncapi"
    target.mkdir(parents=True)
    (target / "router.json").write_text("{}\n")
    (target / "retired-service.json").write_text("{}\n")
    monkeypatch.setattr(gen_asyncapi, "ASYNCAPI_DIR", target)
    assert gen_asyncapi.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "python -m scripts.gen_asyncapi" in err and "retired-service.json" in err
    (target / "retired-service.json").unlink()
    assert gen_asyncapi.main([]) == 0
    assert gen_asyncapi.main(["--check"]) == 0


def sent_addresses(document: dict[str, object]) -> set[str]:
    channels: dict[str, dict[str, str]] = document["channels"]  # type: ignore[assignment]
    operations: dict[str, dict[str, dict[str, str]]] = document["operations"]  # type: ignore[assignment]
    return {
        channels[unquote(op["channel"]["$ref"].rsplit("/", 1)[-1])]["address"]
        for op in operations.values()
        if op["action"] == "send"
    }


#: Facts the design names whose producers are not built yet (router transitions and the gateway's call reports:
#: issue 9; fallback: issue 10): no code publishes them, so no document may claim one does.
PLANNED: set[str] = set()
#: Facts no service sends any more, still consumed so that a gateway of an older release keeps counting during a
#: rolling upgrade: a call report alone (gateways now send `evt.gateway.backend.calls.completed.v1`, docs/router.md).
RETIRED = {"evt.gateway.backend.call.completed.v1"}


#: A command may have several senders (an event has one): a provision comes from an operator (gateway) and an
#: on-demand route (router); a fallback fetching its checkpoint sends cmd.provisioner.fetch.{host}.v1 instead.
COMMAND_SENDERS = {"cmd.provisioner.provision.v1": ["gateway", "router"]}


def test_every_event_and_command_is_documented_as_sent_by_the_one_service_whose_code_sends_it(
    documents: dict[str, str],
) -> None:
    from contracts.registry import ALL_CONTRACTS

    sent = {name: sent_addresses(json.loads(text)) for name, text in documents.items()}
    for cls in ALL_CONTRACTS.values():
        if cls.SUBJECT.startswith(("evt.", "cmd.")):
            senders = sorted(name for name, subjects in sent.items() if cls.SUBJECT in subjects)
            if cls.SUBJECT in COMMAND_SENDERS:
                assert senders == COMMAND_SENDERS[cls.SUBJECT], f"{cls.SUBJECT} is documented as sent by {senders}"
                continue
            expected = 0 if cls.SUBJECT in PLANNED | RETIRED else 1
            assert len(senders) == expected, f"{cls.SUBJECT} is documented as sent by {senders}"
    assert "evt.hardware.gpu.sampled.v1" in sent["hardware-probe"]


def _source_of(service: str, *, without: str = "app.py") -> str:
    package = Path(gen_asyncapi.ROOT, "services", service.replace("-", "_"))
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(package.rglob("*.py")) if p.name != without)


@pytest.mark.parametrize("service", [*SERVICES, "gateway"])
def test_what_an_app_declares_it_publishes_is_built_by_its_code(service: str) -> None:
    """A declaration without code that builds the message would document a message nobody sends."""
    from scripts.generated_docs import doc_environment

    with doc_environment():
        _, _, publishes, _ = gen_asyncapi._built(service)
    source = _source_of(service)
    for cls in publishes:
        assert re.search(rf"\b{cls.__name__}\(", source), f"{service} declares {cls.__name__} but never builds one"


def _address(document: dict[str, Any], op: dict[str, Any]) -> str:
    channel = unquote(op["channel"]["$ref"].rsplit("/", 1)[-1])
    address: str = document["channels"][channel]["address"]
    return address


def _rpc_operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: op for k, op in document["operations"].items() if _address(document, op).startswith("rpc.")}


def _payload(document: dict[str, Any], ref: str) -> dict[str, Any]:
    channel, _, name = ref.removeprefix("#/channels/").partition("/messages/")
    message_ref = document["channels"][channel]["messages"][name]["$ref"]
    message = document["components"]["messages"][message_ref.rsplit("/", 1)[-1]]
    schema_ref = message["payload"]["$ref"]
    schema: dict[str, Any] = document["components"]["schemas"][schema_ref.rsplit("/", 1)[-1]]
    return schema


@pytest.mark.parametrize("service", [*SERVICES, "gateway"])
def test_every_rpc_subject_documents_its_request_reply_and_error(documents: dict[str, str], service: str) -> None:
    document = json.loads(documents[service])
    for key, op in _rpc_operations(document).items():
        request = _payload(document, op["messages"][0]["$ref"])
        assert request["type"] == "object" and "properties" in request, (key, request)
        replies = {ref["$ref"].rsplit("/", 1)[-1]: _payload(document, ref["$ref"]) for ref in op["reply"]["messages"]}
        assert {"reply", "error"} <= set(replies), key
        assert replies["reply"].get("properties") or replies["reply"].get("allOf"), (key, replies["reply"])
        assert set(replies["error"]["properties"]) == {"error"}


def test_every_rpc_handler_a_service_registers_is_documented_by_it(documents: dict[str, str]) -> None:
    from scripts.generated_docs import doc_environment

    with doc_environment():
        for service in [*SERVICES, "gateway"]:
            _, rpc, _, _ = gen_asyncapi._built(service)
            documented = {op_key for op_key in _rpc_operations(json.loads(documents[service]))}
            assert {reg.subject for reg in rpc.registrations} == documented, service


def test_the_catalog_documents_resolve_with_its_reply_schema(documents: dict[str, str]) -> None:
    document = json.loads(documents["catalog"])
    op = document["operations"]["rpc.catalog.resolve.v1"]
    assert _payload(document, op["messages"][0]["$ref"])["title"] == "ResolveRequest"
    assert _payload(document, op["reply"]["messages"][0]["$ref"])["title"] == "ResolveReply"
    assert op["reply"]["messages"][0]["$ref"].endswith("/reply")
