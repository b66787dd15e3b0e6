"""The server's conversation log (serve's log_dir, off by default): each exchange and each
rating of one, appended as JSON lines to the log directory, secrets redacted before they
are written, records past the retention deleted. framework/data/feedback.py reads it back
as preference pairs.

conversations.jsonl: {"id", "time", "messages", "reply"}, `id` the reply's id (the
`id` of OpenAI's ChatCompletion), `time` in seconds since the epoch.
feedback.jsonl: {"id", "time", "rating": 1 or -1 or null, "preferred": text or null}."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse, StreamingResponse

from framework.run.files import CONVERSATIONS_FILE as CONVERSATIONS
from framework.run.files import FEEDBACK_FILE as FEEDBACK
from framework.run.files import write_atomically
from framework.serve.guard import RequestError

DAY = 86_400
REDACTED = "[REDACTED]"
# Credentials as they get pasted into chats: provider keys and tokens, bearer headers,
# key=value assignments, PEM private keys.
SECRET_PATTERNS = [
    re.compile(pattern)
    for pattern in (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        r"\bsk-[A-Za-z0-9_\-]{16,}",
        r"\bhf_[A-Za-z0-9]{20,}",
        r"\bgh[pousr]_[A-Za-z0-9]{20,}",
        r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",
        r"\bAKIA[0-9A-Z]{16}\b",
        r"\bBearer\s+[A-Za-z0-9._~+/=\-]{8,}",
        r"(?i)\b(?:password|passwd|secret|token|api[_-]?key)\s*[:=]\s*\S+",
    )
]


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every credential SECRET_PATTERNS finds, and each of `secrets`, replaced
    by [REDACTED]."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


class ConversationLog:
    """Appends exchanges and ratings to `directory`, redacted; deletes records older than
    `retention_days` when it opens and then once a day."""

    def __init__(self, directory: str, retention_days: int, secrets: tuple[str, ...] = ()):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.retention, self.secrets = retention_days * DAY, secrets
        self.pruned_at = 0.0
        self.prune()

    def record_exchange(self, exchange_id: str, messages: list[dict], reply: str) -> None:
        messages = [{**m, "content": self._redacted(m.get("content"))} for m in messages]
        self._append(
            CONVERSATIONS,
            {"id": exchange_id, "messages": messages, "reply": redact(reply, self.secrets)},
        )
        self.known.add(exchange_id)

    def record_feedback(self, request: Any) -> None:
        """A rating (1 or -1) and/or a preferred reply for a logged exchange: RequestError
        400 for a malformed one, 404 for an id the log does not hold."""
        if not isinstance(request, dict) or not isinstance(request.get("id"), str):
            raise RequestError(
                400,
                'give {"id": <a reply\'s id>, "rating": 1 or -1, "preferred": <a better reply>}',
            )
        rating, preferred = request.get("rating"), request.get("preferred")
        if rating not in (None, 1, -1) or isinstance(rating, bool):
            raise RequestError(400, f"rating={rating!r}: give 1 (good) or -1 (bad)")
        if preferred is not None and not (isinstance(preferred, str) and preferred.strip()):
            raise RequestError(400, "preferred: give the better reply as text")
        if rating is None and preferred is None:
            raise RequestError(400, "give a rating (1 or -1), a preferred reply, or both")
        if request["id"] not in self.known:
            raise RequestError(404, f"no logged reply has id {request['id']!r}", "not_found_error")
        preferred = None if preferred is None else redact(preferred, self.secrets)
        self._append(FEEDBACK, {"id": request["id"], "rating": rating, "preferred": preferred})

    def capture(self, response: Any, exchange_id: str, messages: list[dict]) -> Any:
        """`response` (the chat completion's, JSON or a stream), its reply logged once it is
        complete; a failed or cut-off reply is not logged."""
        if isinstance(response, JSONResponse) and response.status_code == 200:
            reply = json.loads(response.body)["choices"][0]["message"].get("content") or ""
            self.record_exchange(exchange_id, messages, reply)
        elif isinstance(response, StreamingResponse):
            response.body_iterator = self._logged_stream(
                response.body_iterator, exchange_id, messages
            )
        return response

    async def _logged_stream(
        self, events: AsyncIterator, exchange_id: str, messages: list[dict]
    ) -> AsyncIterator:
        parts, failed = [], False
        async for event in events:
            text = event if isinstance(event, str) else event.decode()
            for line in text.splitlines():
                if line.startswith("data: {"):
                    data = json.loads(line[len("data: ") :])
                    failed |= "error" in data
                    for choice in data.get("choices", []):
                        parts.append(choice.get("delta", {}).get("content") or "")
            yield event
        if not failed:
            self.record_exchange(exchange_id, messages, "".join(parts))

    def prune(self) -> None:
        """Rewrite both files without the records older than the retention, atomically (a
        crash leaves the old file or the new one)."""
        now = time.time()
        for name in (CONVERSATIONS, FEEDBACK):
            path = self.directory / name
            records = list(_records(path))
            kept = [r for r in records if now - r["time"] <= self.retention]
            if len(kept) < len(records):
                write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))
            if name == CONVERSATIONS:  # the ids feedback may name: the replies still kept
                self.known = {r["id"] for r in kept}
        self.pruned_at = now

    def _redacted(self, content: Any) -> Any:
        if isinstance(content, str):
            return redact(content, self.secrets)
        if isinstance(content, list):  # OpenAI's content parts
            return [
                {**p, "text": redact(p["text"], self.secrets)} if "text" in p else p
                for p in content
            ]
        return content

    def _append(self, name: str, record: dict) -> None:
        now = time.time()
        if now - self.pruned_at > DAY:
            self.prune()
        with open(self.directory / name, "a") as log:
            log.write(json.dumps({**record, "time": now}) + "\n")


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
