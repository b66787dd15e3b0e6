import pytest

from framework.data.formats import DataError
from framework.data.render import assistant_char_spans, render_example

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Reverse the word apple."},
    {"role": "assistant", "content": "elppa"},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
]


def _trained_text(tokenizer, example):
    ids = [t for t, m in zip(example.input_ids, example.loss_mask, strict=True) if m]
    return tokenizer.decode(ids)


def test_only_assistant_replies_and_their_end_of_turn_are_trained(tokenizer):
    example = render_example(tokenizer, CHAT, "t")
    assert _trained_text(tokenizer, example) == "elppa<|im_end|>5<|im_end|>"


def test_every_token_of_the_conversation_is_kept_once(tokenizer):
    example = render_example(tokenizer, CHAT, "t")
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert tokenizer.decode(example.input_ids) == text
    assert len(example.input_ids) == len(example.loss_mask)


def test_no_bos_is_added_twice(tokenizer):
    example = render_example(tokenizer, CHAT[:3], "t")
    assert example.input_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert example.input_ids.count(example.input_ids[0]) == 3  # one per message


def test_spans_cover_reply_text(tokenizer):
    text, spans = assistant_char_spans(tokenizer, CHAT, "t")
    assert [text[a:b] for a, b in spans] == ["elppa<|im_end|>", "5<|im_end|>"]


def test_non_prefix_template_is_refused(tokenizer, monkeypatch):
    # A template that prints the number of messages first renders no prefix as a prefix.
    monkeypatch.setattr(
        tokenizer,
        "chat_template",
        "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    with pytest.raises(DataError, match=r"f\.jsonl:3: the chat template does not render"):
        render_example(tokenizer, CHAT, "f.jsonl:3")
