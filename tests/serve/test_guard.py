"""The server's guard (framework/serve/guard.py) on a small app of its own: the limits a
single server test cannot reach cheaply (requests in flight) and each refusal's message."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from framework.serve.guard import RequestError, RequestGuard, check_chat_request

USER = [{"role": "user", "content": "hi"}]


def test_a_chat_request_outside_the_limits_is_refused_naming_the_field():
    assert check_chat_request({"messages": USER}, 64)["max_tokens"] == 64  # the default
    assert check_chat_request({"messages": USER, "max_completion_tokens": 8}, 64).get(
        "max_tokens"
    ) is None  # fmt: skip
    greedy = check_chat_request({"messages": USER, "temperature": 0.0}, 64, sampling=False)
    assert greedy["temperature"] == 0
    assert check_chat_request({"messages": USER}, 64, sampling=False)["temperature"] == 0
    with pytest.raises(RequestError, match=r"temperature=0.7: .* greedily \(sampling=false\)"):
        check_chat_request({"messages": USER, "temperature": 0.7}, 64, sampling=False)
    refused = {
        "max_tokens=65": {"messages": USER, "max_tokens": 65},
        "max_completion_tokens=0": {"messages": USER, "max_completion_tokens": 0},
        "max_tokens=True": {"messages": USER, "max_tokens": True},
        "generation_config: not accepted": {"messages": USER, "generation_config": "{}"},
        "messages: give a non-empty list": {"messages": "hi"},
        "messages[1]: an object": {"messages": [*USER, "hi"]},
        "a JSON object": [1, 2],
    }
    for message, request in refused.items():
        with pytest.raises(RequestError, match=message.replace("[", r"\[")) as err:
            check_chat_request(request, 64)
        assert err.value.status == 400


def test_requests_beyond_max_concurrent_get_429_health_answers_without_a_key():
    async def scenario() -> list[int]:
        release = asyncio.Event()

        async def slow(request: Request) -> JSONResponse:
            await request.body()
            await release.wait()
            return JSONResponse({"ok": True})

        health = Route("/health", lambda _request: JSONResponse({"status": "ok"}))
        routes = [Route("/work", slow, methods=["POST"]), health]
        app = RequestGuard(Starlette(routes=routes), api_key="k", max_request_bytes=100,
                           max_tokens=8, max_concurrent=1)  # fmt: skip
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            key = {"Authorization": "Bearer k"}
            first = asyncio.create_task(client.post("/work", json={}, headers=key))
            while app.in_flight == 0:
                await asyncio.sleep(0.01)
            second = await client.post("/work", json={}, headers=key)
            unkeyed = await client.post("/work", json={})
            assert (await client.get("/health")).status_code == 200  # full, and no key
            release.set()
            statuses = [(await first).status_code, second.status_code, unkeyed.status_code]
            assert "max_concurrent" in second.json()["error"]["message"]
            return [*statuses, app.in_flight]

    assert asyncio.run(asyncio.wait_for(scenario(), timeout=30)) == [200, 429, 401, 0]
