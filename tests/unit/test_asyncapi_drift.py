"""The committed AsyncAPI documents (`docs/asyncapi/<service>.json`) must match what FastStream generates."""

from __future__ import annotations

import json
from pathlib import Path

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
        channels[op["channel"]["$ref"].rsplit("/", 1)[-1].replace("%20", " ")]["address"]
        for op in operations.values()
        if op["action"] == "send"
    }


def test_every_event_and_command_is_documented_as_sent_by_exactly_one_service(documents: dict[str, str]) -> None:
    from contracts.registry import ALL_CONTRACTS

    sent = {name: sent_addresses(json.loads(text)) for name, text in documents.items()}
    for cls in ALL_CONTRACTS.values():
        if cls.SUBJECT.startswith(("evt.", "cmd.")):
            senders = [name for name, subjects in sent.items() if cls.SUBJECT in subjects]
            assert len(senders) == 1, f"{cls.SUBJECT} is documented as sent by {senders}"
    assert "evt.hardware.gpu.sampled.v1" in sent["hardware-probe"]
    assert "cmd.provisioner.provision.v1" in sent["gateway"]
