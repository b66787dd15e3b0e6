"""Chat with a trained model: a local Hugging Face directory (a run's `hf/` export), its
chat template, and replies streamed as they are generated.

Loading never downloads and never runs the model's own code unless `trust_remote_code`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from framework.config.commands import ChatConfig
from framework.config.schema import ConfigError
from framework.data.templates import stop_token_ids
from framework.hf.local import load_for_inference


def load_model(cfg: ChatConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`load_for_inference` with the chat's settings."""
    return load_for_inference(cfg)


class _ReplyStreamer(TextStreamer):
    """Writes the reply (no prompt, no special tokens) to `out` as it is decoded, then a
    newline."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()


def generate_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    cfg: ChatConfig,
    out: TextIO = sys.stdout,
) -> str:
    """The assistant's next message after `messages`, streamed to `out` while it is
    generated and returned as text. It ends at an end-of-turn token or max_new_tokens."""
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    output = model.generate(
        **inputs,
        **_decoding(cfg),
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=stop_token_ids(tokenizer, model.generation_config.eos_token_id),
        pad_token_id=_pad_id(tokenizer),
        # Configs saved during training may say use_cache=False; without a cache every
        # new token recomputes the whole conversation.
        use_cache=True,
        streamer=_ReplyStreamer(tokenizer, out),
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _decoding(cfg: ChatConfig) -> dict:
    if cfg.temperature > 0:
        return {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
    # Greedy even where the model's generation_config asks for sampling (Qwen's does).
    return {"do_sample": False}


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id


@dataclass
class Conversation:
    """A chat's history: the system message (if any), then user and assistant turns."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    cfg: ChatConfig
    messages: list[dict[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []

    def ask(self, text: str, out: TextIO = sys.stdout) -> str:
        """Stream and return the reply to `text`. The history keeps both only once the
        reply is complete: a reply stopped by Ctrl-C leaves it as it was."""
        turn = [*self.messages, {"role": "user", "content": text}]
        reply = generate_reply(self.model, self.tokenizer, turn, self.cfg, out)
        self.messages = [*turn, {"role": "assistant", "content": reply}]
        return reply


def interact(
    conversation: Conversation,
    read_line: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> None:
    """Read messages after a `> ` prompt and answer each until `/exit` or end of input;
    `/reset` clears the history; Ctrl-C during a reply stops that reply."""
    while (line := _next_line(read_line, out)) != "/exit":
        if line == "/reset":
            conversation.reset()
            out.write("(history cleared)\n")
        elif line:
            try:
                conversation.ask(line, out)
            except KeyboardInterrupt:
                out.write("\n(reply stopped; this turn is not kept)\n")


def _next_line(read_line: Callable[[str], str], out: TextIO) -> str:
    """The next message or command; `/exit` at end of input (Ctrl-D)."""
    while True:
        try:
            return read_line("> ").strip()
        except EOFError:
            out.write("\n")
            return "/exit"
        except KeyboardInterrupt:
            out.write("\n")  # Ctrl-C at the prompt drops the line, as in a shell


def prompt_flag_as_override(argv: list[str]) -> list[str]:
    """`argv` with `--prompt TEXT` (or `--prompt=TEXT`) turned into Hydra's `prompt=...`
    override, quoted so that the text arrives as written: Hydra rejects unknown flags and
    would read an unquoted `42`, `true` or `a,b` as a number, a bool or a list."""
    args = list(argv)
    for index, arg in enumerate(args):
        if arg == "--prompt":
            if index + 1 == len(args):
                raise ConfigError('--prompt needs the text, e.g. --prompt "hello"')
            text = args.pop(index + 1)
        elif arg.startswith("--prompt="):
            text = arg.removeprefix("--prompt=")
        else:
            continue
        args[index] = f"prompt={_hydra_quoted(text)}"
        break
    return args


def _hydra_quoted(text: str) -> str:
    # OmegaConf reads `\${` as a literal `${` (not an interpolation); backslashes right
    # before it are escapes, so they are doubled.
    literal = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    # Hydra's quoted strings: backslashes are literal except in a run right before a quote
    # (the closing one included), where each one is doubled.
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", literal)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"
