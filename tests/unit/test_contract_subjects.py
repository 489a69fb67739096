"""Subject grammar, templates and streams, and the properties every contract class must have."""

from __future__ import annotations

import re
import uuid

import pytest
from pydantic import ValidationError

from contracts.envelope import Contract, Envelope
from contracts.health import SERVICES, DependencyState, HealthReply, HealthRequest
from contracts.provisioner import ProvisionCommand
from contracts.registry import ALL_CONTRACTS
from contracts.subjects import (
    COMMANDS_STREAM,
    DLQ_STREAM,
    EVENTS_STREAM,
    STREAMS,
    SubjectError,
    dlq_subject,
    fill,
    major_version,
    stream_for,
    validate_subject,
)

pytestmark = pytest.mark.unit

WITH_SUBJECT = sorted(key for key, cls in ALL_CONTRACTS.items() if cls.SUBJECT)


@pytest.mark.parametrize(
    "subject",
    [
        "evt.catalog.profile.changed.v1",
        "evt.provisioner.model.pulled.v1",
        "evt.provisioner.progress.v1",
        "evt.hardware.gpu.sampled.v12",
        "cmd.provisioner.provision.v1",
        "cmd.provisioner.model.delete.v2",
        "rpc.catalog.resolve.v1",
        "rpc.probe.{host}.sample.v1",
        "rpc.{service}.health.v1",
        "rpc.inference-fallback.health.v1",
        "evt.hardware_probe.host.heartbeat.v1",
    ],
)
def test_grammar_accepts(subject: str) -> None:
    assert validate_subject(subject) == subject


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "evt.catalog.v1",  # no entity/verb
        "evt.catalog.profile.changed",  # no version
        "evt.catalog.profile.changed.v0",  # versions start at 1
        "evt.catalog.profile.changed.V1",
        "evt.Catalog.profile.changed.v1",  # lower case only
        "evt.catalog..changed.v1",
        "evt.catalog.profile.changed.v1.",
        "evt.catalog.*.changed.v1",  # wildcards are for subscriptions, not contracts
        "evt.catalog.>",
        "cmd.provisioner.v1",
        "cmd.a.b.c.d.v1",  # too deep for a command
        "rpc.catalog.v1",
        "foo.catalog.resolve.v1",  # unknown kind
        "dlq.evt.catalog.profile.changed.v1",  # dlq subjects are derived, never declared
        "rpc.{Service}.health.v1",
        "evt.catalog.profile changed.v1",
    ],
)
def test_grammar_rejects(subject: str) -> None:
    with pytest.raises(SubjectError, match="does not follow"):
        validate_subject(subject)


def test_a_contract_with_a_bad_subject_cannot_be_defined() -> None:
    with pytest.raises(SubjectError):

        class Bad(Contract):
            SUBJECT = "evt.bad"


def test_fill_replaces_template_parts() -> None:
    assert fill(HealthRequest.SUBJECT, service="router") == "rpc.router.health.v1"
    assert fill("rpc.probe.{host}.sample.v1", host="gpu-01") == "rpc.probe.gpu-01.sample.v1"


@pytest.mark.parametrize("value", ["a.b", "a b", "*", ">", "", "x/y"])
def test_fill_rejects_parts_that_are_not_one_token(value: str) -> None:
    with pytest.raises(SubjectError, match="service="):
        fill("rpc.{service}.health.v1", service=value)


def test_fill_rejects_unfilled_templates() -> None:
    with pytest.raises(SubjectError, match="unfilled"):
        fill("rpc.{service}.{{host}}.v1", service="router")
    with pytest.raises(KeyError):
        fill("rpc.{service}.health.v1")


def test_dlq_subject_prefixes_the_original() -> None:
    assert dlq_subject("evt.catalog.profile.changed.v1") == "dlq.evt.catalog.profile.changed.v1"
    assert stream_for(dlq_subject("cmd.provisioner.provision.v1")) == DLQ_STREAM


def test_streams_and_major_version() -> None:
    assert stream_for("evt.hardware.gpu.sampled.v1") == EVENTS_STREAM
    assert stream_for("cmd.provisioner.provision.v1") == COMMANDS_STREAM
    assert stream_for("rpc.router.route.v1") is None
    assert major_version("evt.hardware.gpu.sampled.v3") == 3
    assert set(STREAMS) == {EVENTS_STREAM, COMMANDS_STREAM, DLQ_STREAM}
    assert not any(s.startswith("rpc.") for subjects in STREAMS.values() for s in subjects)


@pytest.mark.parametrize("key", WITH_SUBJECT)
def test_every_contract_subject_follows_the_grammar(key: str) -> None:
    subject = ALL_CONTRACTS[key].SUBJECT
    assert validate_subject(subject) == subject
    # Facts and commands travel in a stream with an envelope (event_id = Nats-Msg-Id); rpc bodies do not need one.
    if subject.startswith(("evt.", "cmd.")):
        assert issubclass(ALL_CONTRACTS[key], Envelope), f"{key} on {subject} must carry the envelope"
        assert stream_for(subject) in (EVENTS_STREAM, COMMANDS_STREAM)
    else:
        assert stream_for(subject) is None


def test_subjects_are_unique_per_class() -> None:
    by_subject: dict[str, list[str]] = {}
    for key in WITH_SUBJECT:
        by_subject.setdefault(ALL_CONTRACTS[key].SUBJECT, []).append(key)
    assert {s: keys for s, keys in by_subject.items() if len(keys) > 1} == {}


def test_evt_producers_and_owners_are_known_services() -> None:
    known = {s.split("-")[0] for s in SERVICES} | {"hardware", "fallback", "gateway", "probe"}
    for key in WITH_SUBJECT:
        owner = ALL_CONTRACTS[key].SUBJECT.split(".")[1]
        assert owner in known or re.fullmatch(r"\{[a-z_]+\}", owner), f"{key}: unknown owner {owner!r}"


@pytest.mark.parametrize("key", sorted(ALL_CONTRACTS))
def test_every_contract_is_frozen_and_ignores_unknown_fields(key: str) -> None:
    config = ALL_CONTRACTS[key].model_config
    assert config.get("frozen") is True, f"{key} must be frozen"
    assert config.get("extra") == "ignore", f"{key} must ignore unknown fields (consumers tolerate new fields)"


def test_contract_instances_reject_mutation_and_drop_unknown_fields() -> None:
    reply = HealthReply.model_validate(
        {
            "service": "router",
            "version": "1.0",
            "instance_id": "abc",
            "host": "gpu-01",
            "uptime_s": 1.5,
            "healthy": True,
            "nats": "up",
            "database": "not_used",
            "added_in_a_later_minor": {"anything": 1},
        }
    )
    assert reply.nats is DependencyState.UP
    assert "added_in_a_later_minor" not in reply.model_dump()
    with pytest.raises(ValidationError, match="frozen"):
        reply.healthy = False  # type: ignore[misc]
    cmd = ProvisionCommand(producer="cli", roles=["coding"])
    with pytest.raises(ValidationError):
        cmd.roles = []  # type: ignore[misc]
    assert ProvisionCommand.model_validate_json(cmd.model_dump_json()) == cmd


def test_envelope_fields_are_filled_and_validated() -> None:
    cmd = ProvisionCommand(producer="cli")
    assert isinstance(cmd.event_id, uuid.UUID)
    assert cmd.occurred_at.tzinfo is not None
    assert cmd.correlation_id is None
    with pytest.raises(ValidationError, match="producer"):
        ProvisionCommand(producer="Not A Service")
    with pytest.raises(ValidationError, match="uptime_s"):
        HealthReply(
            service="router",
            version="1",
            instance_id="i",
            host="h",
            uptime_s=-1,
            healthy=True,
            nats=DependencyState.UP,
            database=DependencyState.UP,
        )
