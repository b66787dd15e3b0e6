"""The conversation log (framework/serve/conversations.py): secrets never written,
records past the retention deleted, feedback only for logged replies."""

from __future__ import annotations

import json
import time

import pytest

from framework.run.files import CONVERSATIONS_FILE, FEEDBACK_FILE
from framework.serve.conversations import DAY, ConversationLog, redact
from framework.serve.guard import RequestError

SECRETS = [
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "hf_abcdefghijklmnopqrstuvwxyz",
    "ghp_abcdefghijklmnopqrstuvwxyz0123",
    "xoxb-1234567890-abcdefghij",
    "AKIAIOSFODNN7EXAMPLE",
    "Bearer eyJhbGciOiJIUzI1NiJ9.payload",
    "password=hunter2!",
    "api_key: 12345abcde",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
]


def test_every_kind_of_secret_and_the_server_key_is_redacted_before_it_is_written(tmp_path):
    for secret in SECRETS:
        assert redact(f"mine: {secret} ok") == "mine: [REDACTED] ok", secret
    assert redact("the plain text stays as it is") == "the plain text stays as it is"
    log = ConversationLog(str(tmp_path), retention_days=30, secrets=("server-key-42",))
    content = [{"type": "text", "text": f"key {SECRETS[0]}"}]
    log.record_exchange("a", [{"role": "user", "content": content}], "use server-key-42")
    log.record_feedback({"id": "a", "preferred": f"never paste {SECRETS[1]}"})
    written = (tmp_path / CONVERSATIONS_FILE).read_text() + (tmp_path / FEEDBACK_FILE).read_text()
    assert "[REDACTED]" in written
    assert not any(s in written for s in [SECRETS[0], SECRETS[1], "server-key-42"])


def test_records_past_the_retention_are_deleted_at_open_and_daily_and_forgotten(tmp_path):
    now = time.time()
    old, recent = {"id": "old", "time": now - 31 * DAY}, {"id": "new", "time": now - DAY}
    for record in (old, recent):
        record.update(messages=[], reply="r")
    (tmp_path / CONVERSATIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in (old, recent)))
    log = ConversationLog(str(tmp_path), retention_days=30)
    kept = (tmp_path / CONVERSATIONS_FILE).read_text().splitlines()
    assert [json.loads(line)["id"] for line in kept] == ["new"]
    with pytest.raises(RequestError, match="no logged reply has id 'old'") as err:
        log.record_feedback({"id": "old", "rating": 1})
    assert err.value.status == 404
    for bad in (
        {"id": "new"},
        {"id": "new", "rating": 0},
        {"rating": 1},
        {"id": "new", "preferred": " "},
    ):
        with pytest.raises(RequestError) as err:
            log.record_feedback(bad)
        assert err.value.status == 400, bad
    # A day on, the daily prune drops "new" (now past the retention) and forgets its id.
    log.retention, log.pruned_at = DAY / 2, 0.0
    log.record_exchange("newest", [], "r")
    with pytest.raises(RequestError, match="no logged reply has id 'new'"):
        log.record_feedback({"id": "new", "rating": 1})
    log.record_feedback({"id": "newest", "rating": 1})
