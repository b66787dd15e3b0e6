"""What stands between the network and the model: the bearer key, the request's size and
shape, its token limits and the number of requests in flight, each refused with its own
HTTP status and one OpenAI-shaped error message before any work is done.

A plain ASGI middleware rather than FastAPI dependencies: it reads the body once, bounded,
and hands the checked request on (a streamed reply passes through untouched)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

CHAT_PATH = "/v1/chat/completions"
# Past the guard: a load balancer's probe carries no key, and must answer under full load.
OPEN_PATHS = ("/health",)
# Fields a request may not set: `generation_config` is handed to generate() as it is, past
# every limit here (max_new_tokens included).
REFUSED_FIELDS = ("generation_config",)
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class RequestError(Exception):
    """A request refused: its HTTP status, its message and OpenAI's error type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_body(status: int, message: str, kind: str) -> dict:
    """OpenAI's error shape, which its clients read the message of."""
    return {"error": {"message": message, "type": kind, "code": status}}


def check_chat_request(request: Any, max_tokens: int, sampling: bool = True) -> dict:
    """`request` (a chat completion's JSON body) within the server's limits: RequestError
    (400) naming the first field that is not; a request without a token limit gets
    `max_tokens`. Without `sampling`, one that asks to sample is refused, and any other
    decodes greedily."""
    if not isinstance(request, dict):
        raise RequestError(400, "the body must be a JSON object (OpenAI's chat completion)")
    for name in REFUSED_FIELDS:
        if name in request:
            raise RequestError(
                400,
                f"{name}: not accepted by this server; use max_tokens, temperature, top_p and seed",
            )
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages: give a non-empty list of {role, content} objects")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, f"messages[{index}]: an object with a role and content")
    given = [name for name in TOKEN_FIELDS if request.get(name) is not None]
    for name in given:
        value = request[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= max_tokens:
            raise RequestError(
                400, f"{name}={value!r}: this server generates 1 to {max_tokens} tokens a reply"
            )
    if not given:
        request["max_tokens"] = max_tokens
    if not sampling:
        if request.get("temperature") not in (None, 0):
            raise RequestError(
                400,
                f"temperature={request['temperature']!r}: this server decodes greedily "
                "(sampling=false); send 0 or none",
            )
        request["temperature"] = 0
    return request


class RequestGuard:
    """ASGI middleware: a request without the key (when one is set) gets 401, a body over
    `max_request_bytes` 413, a body that is not JSON or a chat completion outside the
    limits (check_chat_request) 400, one beyond `max_concurrent` in flight 429."""

    def __init__(
        self,
        app: Callable,
        *,
        api_key: str | None,
        max_request_bytes: int,
        max_tokens: int,
        max_concurrent: int,
        sampling: bool = True,
    ):
        self.app = app
        self.sampling = sampling
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()
        self.max_request_bytes, self.max_tokens = max_request_bytes, max_tokens
        self.max_concurrent, self.in_flight = max_concurrent, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        try:
            self._check_key(scope)
            if self.in_flight >= self.max_concurrent:
                raise RequestError(
                    429,
                    f"{self.in_flight} requests in flight, the most this server takes "
                    "(max_concurrent): retry shortly",
                    "rate_limit_error",
                )
            body = await self._checked_body(scope, receive) if scope["method"] == "POST" else None
        except RequestError as refused:
            return await send_error(send, refused.status, refused.message, refused.kind)
        self.in_flight += 1
        try:
            if body is None:
                return await self.app(scope, receive, send)
            await self.app(_with_length(scope, len(body)), _replay(body, receive), send)
        finally:
            self.in_flight -= 1

    def _check_key(self, scope: Scope) -> None:
        if self.expected is None:
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            raise RequestError(
                401,
                "missing or wrong API key: send the header Authorization: Bearer <key>",
                "authentication_error",
            )

    async def _checked_body(self, scope: Scope, receive: Receive) -> bytes:
        body = await _read_body(receive, self.max_request_bytes)
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RequestError(400, f"the body is not JSON ({err})") from None
        if scope["path"] == CHAT_PATH:
            request = check_chat_request(request, self.max_tokens, self.sampling)
        return json.dumps(request).encode()


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "the client left before sending its whole body")
        size += len(message.get("body", b""))
        if size > limit:
            raise RequestError(
                413,
                f"the body is over {limit} bytes, the most this server takes (max_request_bytes)",
            )
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that gives `body` first, then what the client sends (its disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


async def send_error(send: Send, status: int, message: str, kind: str) -> None:
    body = json.dumps(error_body(status, message, kind)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
