"""The chat fast path in the real gateway app (built in-process, driven through httpx's ASGI transport; no NATS, so a
request that gets as far as its route ask is answered 503 `bus_unavailable`): which requests it answers itself and
which it hands, body and all, to FastAPI's route for the path, and that both answer the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.routing import Match

from services.gateway.chat_fast_path import PATH, ChatFastPath, _replay
from tests.harness.gateway_app import gateway_app

pytestmark = pytest.mark.unit

TOKEN = "fast-path-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAIN = {"model": "coding", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class Handed:
    """Counts the requests the fast path hands to FastAPI's route (and passes them on)."""

    def __init__(self, fast: ChatFastPath) -> None:
        self.full = fast.full
        self.bodies: list[bytes] = []
        fast.full = self

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = (await receive()).get("body", b"")  # the fast path hands the body over whole, in one message
        self.bodies.append(body)
        await self.full(scope, _replay(body, receive), send)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[httpx.AsyncClient, Handed]]:
    app = gateway_app(TOKEN)
    first = app.router.routes[0]
    assert isinstance(first.app, ChatFastPath)  # type: ignore[attr-defined]
    handed = Handed(first.app)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        yield client, handed


def test_the_fast_route_comes_first_and_takes_only_post_on_its_path() -> None:
    app = gateway_app(TOKEN)
    fast = app.router.routes[0]
    scope = {"type": "http", "path": PATH, "method": "POST", "root_path": ""}
    assert fast.matches(scope)[0] == Match.FULL
    assert fast.matches({**scope, "method": "GET"})[0] == Match.PARTIAL
    assert fast.matches({**scope, "path": "/v1/embeddings"})[0] == Match.NONE
    assert PATH in app.openapi()["paths"]  # FastAPI's route still documents the path


async def test_a_plain_request_is_answered_without_fastapis_route(gateway) -> None:
    client, handed = gateway
    r = await client.post(PATH, json=PLAIN, headers=AUTH)
    assert r.status_code == 503 and r.json()["error"]["code"] == "bus_unavailable"  # it got as far as the route ask
    r = await client.post(PATH, json=PLAIN, headers={**AUTH, "x-modelfleet-performance-profile": "fast"})
    assert r.status_code == 503
    r = await client.post(PATH, json=PLAIN, headers={**AUTH, "content-type": "application/json; charset=utf-8"})
    assert r.status_code == 503
    assert handed.bodies == []


async def test_a_plain_request_without_a_valid_token_is_refused_the_same_way(gateway) -> None:
    client, handed = gateway
    r = await client.post(PATH, json=PLAIN)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    r = await client.post(PATH, json=PLAIN, headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code in (401, 503)  # a user token is asked of the catalog: no NATS here
    assert handed.bodies == []


@pytest.mark.parametrize(
    ("body", "headers", "status", "param"),
    [
        (b'{"model": "coding", "messages": []}', {}, 422, "messages"),
        (b'{"model": "coding", "messages": [{"role": "user", "content": "x"}], "temperature": 7}', {}, 422,
         "temperature"),
        (b"[1, 2]", {}, 422, None),
        (b'{"model": "coding", "messages": [{"role": "user", "content": "x"}]}',
         {"x-modelfleet-performance-profile": "../etc"}, 422, "x-modelfleet-performance-profile"),
        (b'{"model": "coding", "messages": [{"role": "user", "content": "x"}]}', {"content-type": "text/plain"}, 422,
         None),
    ],
)  # fmt: skip
async def test_anything_else_goes_to_fastapis_route_body_and_all(gateway, body, headers, status, param) -> None:
    client, handed = gateway
    r = await client.post(PATH, content=body, headers={"content-type": "application/json", **AUTH, **headers})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert handed.bodies == [body]


async def test_a_body_that_is_not_json_is_a_400_saying_where_on_both_planes(gateway) -> None:
    client, handed = gateway
    broken = b'{"model": "coding",'
    r = await client.post(PATH, content=broken, headers={"content-type": "application/json", **AUTH})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_json" and error["param"] is None
    assert error["message"].startswith("the body is not valid JSON: ") and "at character 19" in error["message"]
    assert handed.bodies == [broken]  # FastAPI's route judged it
    r = await client.post("/api/v1/route", content=broken, headers={"content-type": "application/json", **AUTH})
    assert r.status_code == 400 and r.json()["code"] == "invalid_json" and r.json()["field"] is None, r.text
    assert "at character 19" in r.json()["detail"]
