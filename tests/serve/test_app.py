"""launch/serve.py as a client meets it: the official `openai` client over HTTP on
127.0.0.1, against one server of the tiny model (its process, its continuous batching, its
key and limits, its conversation log). Replies are compared with launch/eval.py's greedy
replies for the same prompts (framework/eval/generate.py); the feedback they get trains
one DPO round."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from omegaconf import OmegaConf

from framework.commands.compose import serve_config
from framework.config.commands import ChatConfig, ServeConfig
from framework.config.schema import ConfigError
from framework.eval.generate import generate_replies
from framework.hf.local import load_for_inference
from framework.run.files import CONVERSATIONS_FILE, FEEDBACK_FILE, STATS_FILE
from framework.serve.app import model_directory, serving_key
from tests.helpers import losses, run
from tests.helpers.serving import served

KEY = "test-key-0123456789"
MODEL = "tiny"
MAX_TOKENS = 12
PROMPTS = [
    "Reverse the word: planet",
    "What is 12 plus 30?",
    "Write hello in uppercase.",
    "Sort these numbers: 5 2 9",
]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("conversations")
    overrides = [f"model={tiny_model_dir}", f"name={MODEL}", f"api_key={KEY}", f"log_dir={log_dir}",
                 f"max_tokens={MAX_TOKENS}", "max_request_bytes=20000", "device=cpu",
                 "dtype=fp32", "cache_memory_share=0.02"]  # fmt: skip
    with served(*overrides) as url:
        yield url, log_dir


def _client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def _ask(client: openai.OpenAI, prompt: str, **options) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], **{"temperature": 0, **options}
    )


@pytest.fixture(scope="module")
def eval_replies(tiny_model_dir) -> list[str]:
    """launch/eval.py's greedy replies to PROMPTS: its loading, its batched generation."""
    cfg = ChatConfig(model=str(tiny_model_dir), device="cpu", dtype="fp32")
    model, tokenizer = load_for_inference(cfg)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    return generate_replies(model, tokenizer, chats, max_new_tokens=MAX_TOKENS, batch_size=4)


@pytest.mark.slow
def test_replies_streamed_or_not_and_under_load_equal_eval_greedy_replies(server, eval_replies):
    """Every reply of a bounded load (32 requests, 8 at a time: batched together) is the
    greedy reply of its own prompt, none dropped or mixed up; a stream joins into it."""
    url, _ = server
    client = _client(url)
    assert [m.id for m in client.models.list().data] == [MODEL]
    asked = PROMPTS * 8
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: _ask(client, p), asked))
    assert [a.choices[0].message.content.strip() for a in answers] == eval_replies * 8
    assert all(a.usage.completion_tokens <= MAX_TOKENS for a in answers)
    # A stream holds back a reply's last bytes while they are half a character (the random
    # model cut off by max_tokens ends so, where a whole decode shows U+FFFD): a reply
    # ending in a whole character.
    whole = next(i for i, reply in enumerate(eval_replies) if not reply.endswith("\ufffd"))
    stream = _ask(client, PROMPTS[whole], stream=True)
    joined = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert joined.strip() == eval_replies[whole]


@pytest.mark.slow
def test_each_bad_request_gets_its_status_and_message_and_the_server_stays_up(server):
    url, _ = server
    with pytest.raises(openai.AuthenticationError, match="Authorization: Bearer"):
        _ask(_client(url, key="wrong-key"), PROMPTS[0])
    assert httpx.get(f"{url}/v1/models").status_code == 401  # no key at all
    client = _client(url)
    with pytest.raises(openai.BadRequestError, match=f"1 to {MAX_TOKENS} tokens"):
        _ask(client, PROMPTS[0], max_tokens=MAX_TOKENS + 1)
    with pytest.raises(openai.NotFoundError, match=f"serves '{MODEL}'"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL, messages=[])
    headers = {"Authorization": f"Bearer {KEY}"}
    chat = f"{url}/v1/chat/completions"
    refused = {
        413: httpx.post(chat, content=b"x" * 30_000, headers=headers),
        400: httpx.post(chat, content=b'{"messages": [', headers=headers),
    }
    for status, response in refused.items():
        assert response.status_code == status and response.json()["error"]["message"]
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}  # no key needed


@pytest.mark.slow
def test_rated_replies_become_pairs_that_train_a_dpo_round(server, tiny_model_dir, tmp_path):
    """serve -> chat -> rate (a better reply; opposite ratings of two sampled replies) ->
    the log read as preference pairs -> one DPO run on them, which starts at log 2 as DPO
    from its reference does."""
    url, log_dir = server
    client = _client(url)
    headers = {"Authorization": f"Bearer {KEY}"}
    rate = lambda **fb: httpx.post(f"{url}/v1/feedback", json=fb, headers=headers)  # noqa: E731
    for prompt in PROMPTS:
        reply = _ask(client, prompt)
        assert rate(id=reply.id, preferred=f"The answer to '{prompt}'.").status_code == 200
    sampled = [_ask(client, "Tell me a story.", temperature=1.0, seed=s) for s in (1, 2)]
    assert sampled[0].choices[0].message.content != sampled[1].choices[0].message.content
    assert rate(id=sampled[0].id, rating=1).status_code == 200
    assert rate(id=sampled[1].id, rating=-1).status_code == 200
    assert rate(id="chatcmpl-unknown", rating=1).status_code == 404
    assert rate(id=sampled[0].id, rating=5).status_code == 400
    logged = [json.loads(line) for line in (log_dir / CONVERSATIONS_FILE).read_text().splitlines()]
    assert {r["id"] for r in logged} >= {s.id for s in sampled}
    assert len((log_dir / FEEDBACK_FILE).read_text().splitlines()) == 6

    out = tmp_path / "dpo"
    run(out, tmp_path / "cache", "objective=dpo", f"model.name_or_path={tiny_model_dir}",
        f"data.sources=[{{path: '{log_dir}', format: feedback}}]", "data.eval_fraction=0",
        "trainer.max_steps=2", "cluster.num_workers=1", world=1)  # fmt: skip
    stats = json.loads((out / STATS_FILE).read_text())
    (source,) = stats["sources"].values()
    # 4 preferred replies, 1 pair of opposite ratings; curated (nothing duplicated)
    assert source["records"] == source["kept"] == stats["pairs"] == 5
    assert losses(out)[1] == pytest.approx(np.log(2), rel=1e-4)


def test_settings_that_cannot_work_are_refused_before_anything_loads(tmp_path):
    public = ServeConfig(model="m", host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"host=0.0.0.0: .* needs a key; set api_key"):
        serving_key(public, {})
    assert serving_key(public, {"SERVE_API_KEY": "k"}) == "k"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"no \*.safetensors weights"):
        model_directory(ServeConfig(model=str(tmp_path)))
    for setting, message in [("port=0", "not a TCP port"), ("max_tokens=0", "must be > 0"),
                             ("max_model_len=16", "no room for a prompt"),
                             ("dtype=int8", "is not one of"),
                             ("cache_memory_share=1.5", r"must be in \(0, 1\)")]:  # fmt: skip
        raw = OmegaConf.merge(OmegaConf.structured(ServeConfig(model="m")),
                              OmegaConf.from_dotlist([setting]))  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            serve_config(raw)
