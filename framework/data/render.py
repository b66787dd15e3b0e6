"""Chat messages -> token ids and a per-token loss mask, through the tokenizer's chat template.

The mask is found on the rendered text, not by guessing token layouts: for assistant turn
i, the trained characters run from the end of `render(messages[:i], add_generation_prompt)`
to the end of `render(messages[:i+1])`, trailing whitespace excluded. This holds for any
template that renders a conversation's prefix as a prefix of its text, which is checked.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from framework.data.formats import DataError

CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}


@dataclass
class RenderedExample:
    input_ids: list[int]
    loss_mask: list[bool]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], where: str
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans to train on."""
    text = _render(tokenizer, messages, prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], prompt=False)
        if not (text.startswith(head) and text.startswith(upto) and upto.startswith(head)):
            raise DataError(
                f"{where}: the chat template does not render turns as prefixes of the "
                "conversation, so the loss mask cannot be located; use another template"
            )
        end = len(upto.rstrip())
        if end <= len(head):
            raise DataError(f"{where}: assistant message {i} is empty after templating")
        spans.append((len(head), end))
    return text, spans


def render_example(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], where: str
) -> RenderedExample:
    """Token ids of the templated chat; mask True exactly on assistant reply tokens."""
    text, spans = assistant_char_spans(tokenizer, messages, where)
    # The template already holds every special token it wants: adding them again would
    # double the BOS of tokenizers whose post-processor prepends one.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in spans]
    mask = []
    for token_start, _ in encoding["offset_mapping"]:
        span = bisect.bisect_right(starts, token_start) - 1
        mask.append(span >= 0 and token_start < spans[span][1])
    return RenderedExample(input_ids=list(encoding["input_ids"]), loss_mask=mask)
