"""Conversations -> token ids and a per-token loss weight, through the chat template.

The weights are found on the rendered text, not by guessing token layouts: assistant turn
i is trained from the end of `render(messages[:i], add_generation_prompt)` to the end of
`render(messages[:i+1])`, trailing whitespace excluded, so the reply and its end-of-turn
token are trained and nothing else. This holds for any template that renders a
conversation's prefix as a prefix of its text, which is checked for every record.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from framework.data.formats import Conversation, RecordError

# A span is (start, end, weight) over the rendered text's characters.
Span = tuple[int, int, float]


@dataclass
class RenderedExample:
    input_ids: list[int]
    weights: list[float]  # 0.0 = not trained


def _render(tokenizer, conversation: Conversation, upto: int, prompt: bool) -> str:
    if upto == 0 and not prompt:
        return ""
    return tokenizer.apply_chat_template(
        conversation.messages[:upto],
        tools=conversation.tools,
        tokenize=False,
        add_generation_prompt=prompt,
    )


def _assistant_indices(conversation: Conversation, train_on: str) -> list[int]:
    indices = [i for i, m in enumerate(conversation.messages) if m["role"] == "assistant"]
    return indices[-1:] if train_on == "last_turn" else indices


def trained_spans(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, train_on: str, where: str
) -> tuple[str, list[Span]]:
    """The rendered conversation and the weighted character spans to train on."""
    text = _render(tokenizer, conversation, len(conversation.messages), prompt=False)
    spans = []
    chosen = (
        range(len(conversation.messages))
        if train_on == "all"
        else _assistant_indices(conversation, train_on)
    )
    for i in chosen:
        message = conversation.messages[i]
        head = _render(tokenizer, conversation, i, prompt=train_on != "all")
        upto = _render(tokenizer, conversation, i + 1, prompt=False)
        if not (upto.startswith(head) and text.startswith(upto)):
            raise RecordError(
                where,
                "template_mismatch",
                "the chat template does not render turns as prefixes of the conversation, so "
                "the trained tokens cannot be located; set data.chat_template to a built-in",
            )
        end = len(upto) if train_on == "all" else len(upto.rstrip())
        reply = message["content"].strip()
        if message["role"] == "assistant" and (not reply or reply not in text[len(head) : end]):
            raise RecordError(
                where,
                "empty_reply",
                f"assistant message {i} is empty after templating (the template drops its "
                "content); fix the record or choose another data.chat_template",
            )
        spans.append((len(head), end, float(message.get("weight", 1.0))))
    return text, spans


def render(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, train_on: str, where: str
) -> RenderedExample:
    """Token ids of the templated conversation (or of the plain text, every token trained)
    and each token's loss weight: that of the trained span it overlaps, else 0."""
    if conversation.text is not None:
        ids = tokenizer(conversation.text, add_special_tokens=False)["input_ids"]
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        ids = bos + list(ids) + [tokenizer.eos_token_id]
        return RenderedExample(ids, [0.0] * len(bos) + [1.0] * (len(ids) - len(bos)))
    text, spans = trained_spans(tokenizer, conversation, train_on, where)
    # The template already holds every special token it wants: adding them again would
    # double the BOS of tokenizers whose post-processor prepends one.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # A token is trained when any of its characters is: a token that straddles the start
    # of a reply carries the reply's first character (transformers' assistant mask agrees).
    starts = [start for start, _, _ in spans]
    weights = []
    for token_start, token_end in encoding["offset_mapping"]:
        index = bisect.bisect_left(starts, token_end) - 1
        inside = token_end > token_start and index >= 0 and spans[index][1] > token_start
        weights.append(spans[index][2] if inside else 0.0)
    return RenderedExample(list(encoding["input_ids"]), weights)
