from framework.data.formats import Conversation
from framework.data.inspect import inspect_example, marked_text, warnings_for

CHAT = [
    {"role": "user", "content": "Reverse the word apple."},
    {"role": "assistant", "content": "elppa", "weight": 0.5},
    {"role": "user", "content": "Again?"},
    {"role": "assistant", "content": "elppa"},
]


def test_inspected_example_marks_trained_text_weights_and_roles(tokenizer):
    item = inspect_example(tokenizer, Conversation(CHAT), "assistant", "f:1")
    assert "\u27e6elppa<|im_end|>\u27e7\u00d70.5" in item["text"]
    assert item["text"].count("\u27e6") == 2
    assert item["trained_per_role"] == {"assistant": item["trained_per_role"]["assistant"]}
    assert item["warnings"] == []


def test_marked_text_round_trips_the_decoded_example(tokenizer):
    ids = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    text = marked_text(tokenizer, ids, [0.0] * len(ids))
    assert text == "hello world"


def test_warnings_catch_double_bos_and_a_reply_without_end_of_turn(tokenizer):
    tokenizer.bos_token = "<|endoftext|>"
    try:
        bos = tokenizer.bos_token_id
        ids = [bos, bos, 100, 101, tokenizer.eos_token_id]
        assert warnings_for(tokenizer, ids, [0, 0, 0, 1, 1]) == ["double BOS at the start"]
        assert warnings_for(tokenizer, ids[1:], [0, 1, 0, 0]) == [
            "a trained reply does not end with an end-of-turn token"
        ]
    finally:
        tokenizer.bos_token = None
