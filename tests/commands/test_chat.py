"""Chat: a tiny model saved as a Hugging Face directory, answered through the chat
template, streamed, with history; and launch/chat.py as a user runs it."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from framework.commands.chat import (
    Conversation,
    generate_reply,
    interact,
    load_model,
    prompt_flag_as_override,
)
from framework.commands.compose import chat_config
from framework.config.command_checks import check_chat_config
from framework.config.commands import ChatConfig
from framework.config.schema import ConfigError
from framework.data.templates import CHAT_TEMPLATES
from tests.helpers import ROOT

MAX_NEW_TOKENS = 8
SYSTEM = "Be brief."


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tokenizer):
    assert tokenizer.chat_template == CHAT_TEMPLATES["chatml"]
    return tiny_model_dir


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(_cfg(model_dir))


def _cfg(model_dir, **overrides) -> ChatConfig:
    return ChatConfig(model=str(model_dir), max_new_tokens=MAX_NEW_TOKENS, **overrides)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _plain_greedy_ids(model, tokenizer, messages) -> list[int]:
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    output = model.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
    )
    return output[0, inputs["input_ids"].shape[1] :].tolist()


class _Writes(io.StringIO):
    """A stream that also counts the writes that carry text."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += bool(text)
        return super().write(text)


def _scripted(*lines: str):
    """An `input` that answers with `lines`, then signals end of input (Ctrl-D)."""
    remaining = iter(lines)

    def read_line(prompt: str) -> str:
        assert prompt == "> "
        try:
            return next(remaining)
        except StopIteration:
            raise EOFError from None

    return read_line


def _recording_generate(model, tokenizer, monkeypatch) -> list[str]:
    """Record the decoded input of every `model.generate` call; a user message
    `interrupt me` raises KeyboardInterrupt as Ctrl-C would."""
    prompts = []
    generate = model.generate

    def recording(**kwargs):
        prompts.append(tokenizer.decode(kwargs["input_ids"][0]))
        if "interrupt me" in prompts[-1]:
            raise KeyboardInterrupt
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording)
    return prompts


def test_streamed_reply_is_the_returned_reply_and_the_plain_greedy_decode(loaded, model_dir):
    model, tokenizer = loaded
    assert tokenizer.chat_template == CHAT_TEMPLATES["chatml"]
    out = _Writes()
    reply = generate_reply(model, tokenizer, _user("hello"), _cfg(model_dir), out)
    assert reply.strip()
    assert out.getvalue() == reply + "\n"
    assert out.writes > 1  # written piece by piece, not once at the end
    greedy = _plain_greedy_ids(model, tokenizer, _user("hello"))
    assert reply == tokenizer.decode(greedy, skip_special_tokens=True)


def test_reply_ends_at_the_generation_configs_end_of_turn_token(loaded, model_dir, monkeypatch):
    model, tokenizer = loaded
    greedy = _plain_greedy_ids(model, tokenizer, _user("hello"))
    # The first token not generated before it, so the reply must stop right there.
    stop = next(i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i])
    monkeypatch.setattr(model.generation_config, "eos_token_id", greedy[stop])
    reply = generate_reply(model, tokenizer, _user("hello"), _cfg(model_dir), io.StringIO())
    assert reply == tokenizer.decode(greedy[: stop + 1], skip_special_tokens=True)
    assert reply != tokenizer.decode(greedy, skip_special_tokens=True)


def test_sampling_within_a_tiny_top_p_is_greedy(loaded, model_dir):
    model, tokenizer = loaded
    greedy = generate_reply(model, tokenizer, _user("hello"), _cfg(model_dir), io.StringIO())
    torch.manual_seed(0)
    nucleus = _cfg(model_dir, temperature=1.5, top_p=1e-6)
    assert generate_reply(model, tokenizer, _user("hello"), nucleus, io.StringIO()) == greedy


def test_second_turn_sees_the_first_reply_and_reset_clears_the_history(
    loaded, model_dir, monkeypatch
):
    model, tokenizer = loaded
    prompts = _recording_generate(model, tokenizer, monkeypatch)
    conversation = Conversation(model, tokenizer, _cfg(model_dir, system=SYSTEM))

    interact(conversation, _scripted("hello", "again", "/exit", "never read"), io.StringIO())
    roles = [m["role"] for m in conversation.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    first_reply = conversation.messages[2]["content"]
    assert first_reply.strip()
    assert prompts[1] == tokenizer.apply_chat_template(
        conversation.messages[:4], add_generation_prompt=True, tokenize=False
    )
    assert f"<|im_start|>assistant\n{first_reply}<|im_end|>" in prompts[1]

    interact(conversation, _scripted("/reset", "third"), io.StringIO())  # ends at Ctrl-D
    assert len(prompts) == 3
    assert prompts[2] == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nthird<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_ctrl_c_stops_one_reply_and_keeps_the_history_as_it_was(loaded, model_dir, monkeypatch):
    model, tokenizer = loaded
    prompts = _recording_generate(model, tokenizer, monkeypatch)
    conversation = Conversation(model, tokenizer, _cfg(model_dir))
    out = io.StringIO()
    interact(conversation, _scripted("hello", "interrupt me", "again"), out)
    assert len(prompts) == 3
    assert "(reply stopped" in out.getvalue()
    assert [m["content"] for m in conversation.messages if m["role"] == "user"] == [
        "hello",
        "again",
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("temperature", -0.1),
        ("max_new_tokens", 0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("dtype", "fp8"),
        ("device", "gpu0"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_its_key(key, value):
    check_chat_config(ChatConfig(model="m"))
    with pytest.raises(ConfigError, match=rf"^{key}="):
        check_chat_config(ChatConfig(model="m", **{key: value}))


def test_the_composed_config_becomes_a_checked_chat_config():
    composed = OmegaConf.structured(ChatConfig(model="m", temperature=0.5))
    assert chat_config(composed) == ChatConfig(model="m", temperature=0.5)
    with pytest.raises(ConfigError, match=r"^model: give the model to chat with"):
        chat_config(OmegaConf.structured(ChatConfig))
    with pytest.raises(ConfigError, match=r"^temperature=-1.0 must be >= 0"):
        chat_config(OmegaConf.structured(ChatConfig(model="m", temperature=-1)))


def test_a_missing_directory_or_one_without_weights_is_a_config_error(tmp_path, model_dir):
    with pytest.raises(ConfigError, match=r"^model=\S+/absent: no such file or directory"):
        load_model(_cfg(tmp_path / "absent"))
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"^model=\S+: \S+ holds no \*\.safetensors weights"):
        load_model(_cfg(tmp_path))


@pytest.mark.parametrize(
    "text",
    ["42", "true", "null", "a, b", "[1, 2]", "it's", "${x}", "\\${x}", "{a: 1}", "back\\slash",
     "ends with \\", "quote\\'s", "x=y", "  spaced  ", "${oc.env:HOME}"],
)  # fmt: skip
def test_the_prompt_flag_reaches_the_config_exactly_as_written(text):
    argv = prompt_flag_as_override(["chat.py", "model=m", "--prompt", text, "top_p=0.5"])
    assert [*argv[:2], *argv[3:]] == ["chat.py", "model=m", "top_p=0.5"]
    assert prompt_flag_as_override(["chat.py", f"--prompt={text}"])[1] == argv[2]
    override = OverridesParser.create().parse_override(argv[2])
    cfg = OmegaConf.structured(ChatConfig(model="m"))
    OmegaConf.update(cfg, override.key_or_group, override.value())  # as Hydra applies it
    assert OmegaConf.to_object(cfg).prompt == text


def _chat_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    # As many threads as this process, whose replies the tests compare: another count
    # sums the tiny model's logits in another order, and its near-ties break otherwise
    # (this process has 1 after a test that joined a process group here).
    threads = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.run(
        [sys.executable, "launch/chat.py", *args],
        cwd=ROOT,
        env=threads,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_one_shot_prints_the_reply_alone_and_exits_0(loaded, model_dir):
    prompt = "hello, it's [me]: ${x}"  # text Hydra would misread unquoted
    model, tokenizer = loaded
    reply = generate_reply(model, tokenizer, _user(prompt), _cfg(model_dir), io.StringIO())
    result = _chat_cli(f"model={model_dir}", "--prompt", prompt, f"max_new_tokens={MAX_NEW_TOKENS}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == reply + "\n"


def test_interactive_mode_answers_lines_from_stdin(loaded, model_dir):
    model, tokenizer = loaded
    reply = generate_reply(model, tokenizer, _user("hello"), _cfg(model_dir), io.StringIO())
    result = _chat_cli(
        f"model={model_dir}", f"max_new_tokens={MAX_NEW_TOKENS}", stdin="hello\n/exit\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.endswith(f"> {reply}\n> ")


def test_a_missing_model_directory_is_one_line_without_traceback():
    result = _chat_cli("model=/nonexistent/model")
    assert result.returncode != 0
    assert result.stderr.startswith("error: model=/nonexistent/model: no such file or directory")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
