"""The pure token rules: expiry on issue, status, the 401 that names why, last-use throttling, the CLI's durations."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import typer
from pydantic import ValidationError

from contracts.catalog import Caller, TokenIssueRequest
from services.catalog import tokens
from services.catalog.domain import CatalogError
from services.cli.token_cmds import parse_duration

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ADMIN = Caller(user_id="admin", admin=True)


def record(**kw: object) -> tokens.TokenRecord:
    return tokens.TokenRecord(uuid.uuid4(), "alice", NOW - timedelta(days=1), **kw)  # type: ignore[arg-type]


def test_expiry_from_seconds_or_an_instant_and_never_in_the_past():
    assert tokens.expiry(NOW, 90, None) == NOW + timedelta(seconds=90)
    assert tokens.expiry(NOW, None, None) is None
    later = datetime(2026, 12, 2, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert tokens.expiry(NOW, None, later) == later and tokens.expiry(NOW, None, later).tzinfo == UTC
    for past in (NOW, NOW - timedelta(seconds=1)):
        with pytest.raises(CatalogError) as err:
            tokens.expiry(NOW, None, past)
        assert err.value.status == 422 and "expires_at" in str(err.value.detail)


def test_status_and_the_401_naming_why():
    assert tokens.status(record(), NOW) == "active"
    assert tokens.status(record(expires_at=NOW + timedelta(seconds=1)), NOW) == "active"
    assert tokens.status(record(expires_at=NOW), NOW) == "expired"
    both = record(expires_at=NOW - timedelta(hours=1), revoked_at=NOW - timedelta(hours=2))
    assert tokens.status(both, NOW) == "revoked"  # revocation wins: it was a deliberate act
    cases = [(None, "unknown token"), (both, "token revoked"),
             (record(expires_at=NOW), f"token expired at {NOW.isoformat()}")]  # fmt: skip
    for token, detail in cases:
        with pytest.raises(CatalogError) as err:
            tokens.check_usable(token, NOW)
        assert (err.value.status, err.value.detail) == (401, detail)
    fine = record()
    assert tokens.check_usable(fine, NOW) is fine


def test_another_users_token_id_is_as_unknown_as_a_missing_one():
    mine = record()
    assert tokens.owned(mine, "alice", mine.token_id) is mine
    with pytest.raises(CatalogError) as foreign:
        tokens.owned(mine, "bob", mine.token_id)
    with pytest.raises(CatalogError) as missing:
        tokens.owned(None, "bob", mine.token_id)
    assert (foreign.value.status, foreign.value.detail) == (missing.value.status, missing.value.detail)
    assert foreign.value.status == 404 and "alice" not in str(foreign.value.detail)


def test_last_use_is_written_at_most_once_per_interval():
    assert tokens.needs_touch(record(), NOW, 60)
    assert not tokens.needs_touch(record(last_used_at=NOW - timedelta(seconds=59)), NOW, 60)
    assert tokens.needs_touch(record(last_used_at=NOW - timedelta(seconds=60)), NOW, 60)
    assert tokens.needs_touch(record(last_used_at=NOW), NOW, 0)


def test_doc_carries_metadata_only():
    doc = tokens.doc(record(last_used_at=NOW), NOW).model_dump()
    assert set(doc) == {"token_id", "user_id", "created_at", "expires_at", "last_used_at", "revoked_at", "status"}


def test_issue_request_takes_at_most_one_expiry_and_an_aware_instant():
    with pytest.raises(ValidationError, match="at most one"):
        TokenIssueRequest(caller=ADMIN, user_id="alice", expires_in_s=5, expires_at=NOW)
    for bad in ({"expires_in_s": 0}, {"expires_in_s": 10**10}, {"expires_at": "2030-01-01T00:00:00"}):
        with pytest.raises(ValidationError):
            TokenIssueRequest.model_validate({"caller": ADMIN.model_dump(), "user_id": "alice", **bad})
    assert TokenIssueRequest(caller=ADMIN, user_id="alice").expires_at is None


def test_cli_durations():
    assert [parse_duration(t) for t in ("30d", "12h", "90m", "45s", "2w", "3600", " 7D ")] == [
        30 * 86400, 12 * 3600, 90 * 60, 45, 2 * 604800, 3600, 7 * 86400,
    ]  # fmt: skip
    for bad in ("", "soon", "1.5d", "-3d", "0d", "3y"):
        with pytest.raises(typer.BadParameter, match=r"expected a number|must be above zero"):
            parse_duration(bad)
